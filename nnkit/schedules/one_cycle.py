"""The one-cycle schedule (Smith & Topin), with PyTorch ``OneCycleLR``'s values."""

import math

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.schedules.base import Schedule
from nnkit.schedules.join import JoinSchedules

ANNEAL_STRATEGIES = ("cos", "linear")


class _Anneal(Schedule):
    """One phase: ``start`` to ``end`` over ``length`` steps, cosine or linear.

    The phase sees the steps since its ``JoinSchedules`` boundary; ``offset``
    is where that boundary lies after the phase's real (fractional) start, so
    ``pct = (s + offset) / length``, held in ``[0, 1]``.
    """

    def __init__(self, start, end, offset, length, strategy):
        self.start, self.end, self.offset = start, end, offset
        self.length, self.strategy = length, strategy

    def value(self, step):
        pct = ops.clip((step + self.offset) / self.length, 0.0, 1.0)
        if self.strategy == "cos":
            return self.end + 0.5 * (self.start - self.end) * (1.0 + ops.cos(math.pi * pct))
        return self.start + (self.end - self.start) * pct

    def get_config(self):  # never serialized on its own: OneCycle owns it
        return {}


def cycle_phases(values, rise, total_steps, strategy, three_phase):
    """The phases of one cycle as ``JoinSchedules`` pieces.

    ``values = (a, b, c, d)``: two phases go ``a → b → d``, three go
    ``a → b → c → d``; the phases end at ``rise − 1``, (``2·rise − 2``,) and
    ``total_steps − 1``.
    """
    a, b, c, d = values
    last = total_steps - 1.0
    if three_phase:
        phases = [(rise - 1.0, a, b), (2 * rise - 2.0, b, c), (last, c, d)]
    else:
        phases = [(rise - 1.0, a, b), (last, b, d)]
    pieces, boundaries, previous = [], [], 0.0
    for i, (edge, start, end) in enumerate(phases):
        boundary = 0 if i == 0 else math.floor(previous) + 1
        offset = boundary - previous
        pieces.append(_Anneal(start, end, offset, edge - previous, strategy))
        if i:
            boundaries.append(boundary)
        previous = edge
    return JoinSchedules(pieces, boundaries)


def check_cycle(rise_fraction, total_steps, three_phase):
    """``rise_fraction · total_steps``, checked as ``OneCycle`` needs it."""
    rise = rise_fraction * total_steps
    if rise <= 1.0 or (three_phase and rise < 2.0):
        bound = ">= 2 with `three_phase=True`" if three_phase else "> 1"
        raise ValueError(
            f"`rise_fraction` * `total_steps` must be {bound} (the rise ends at step "
            "rise_fraction * total_steps - 1, which must come after step 0). "
            f"Received: rise_fraction={rise_fraction!r}, total_steps={total_steps!r}"
        )
    if three_phase and 2.0 * rise - 2.0 >= total_steps - 1.0:
        raise ValueError(
            "With `three_phase=True`, 2 * `rise_fraction` * `total_steps` - 1 must be < "
            "`total_steps` (rise and fall must leave room for the final anneal). "
            f"Received: rise_fraction={rise_fraction!r}, total_steps={total_steps!r}"
        )
    return rise


@keras.saving.register_keras_serializable(package="nnkit")
class OneCycle(Schedule):
    """One cycle: a rise to ``max_learning_rate``, then an anneal far below the start.

    Use it for short training budgets with SGD or Adam ("super-convergence"):
    the high middle rates regularize and speed training, the long tail
    anneals. Pick ``max_learning_rate`` with ``nnkit.tuning.lr_find``. The
    values are those of PyTorch's ``OneCycleLR`` step for step (its
    ``max_lr``, ``pct_start``, ``div_factor``, ``final_div_factor`` are
    ``max_learning_rate``, ``rise_fraction``, ``initial_divisor``,
    ``final_divisor`` here).

    Formula, with ``T = total_steps``, ``p = rise_fraction``,
    ``η_0 = η_max / initial_divisor`` and ``η_end = η_0 / final_divisor``:
    the phases are joined at the (possibly fractional) steps
    ``e_1 = p·T − 1``, ``e_2 = T − 1`` (two phases: η_0 → η_max → η_end) or
    ``e_1 = p·T − 1``, ``e_2 = 2p·T − 2``, ``e_3 = T − 1`` (three phases:
    η_0 → η_max → η_0 → η_end). In the phase ``e_(i−1) < t ≤ e_i``
    (``e_0 = 0``), going from ``a`` to ``b``::

        x = (t − e_(i−1)) / (e_i − e_(i−1))
        η(t) = b + ½(a − b)(1 + cos(π·x))      anneal_strategy="cos"
        η(t) = a + (b − a)·x                   anneal_strategy="linear"

    From ``t = T − 1`` on the rate stays at ``η_end`` (PyTorch raises past
    ``total_steps``). The phases are ``JoinSchedules`` pieces, not a copy of
    its logic.

    Args:
        max_learning_rate: ``η_max``, the peak rate, ``> 0``. Required.
        total_steps: Length of the cycle in optimizer steps, an int ``>= 2``.
            Required.
        rise_fraction: ``p``, the fraction of ``total_steps`` spent rising, in
            ``(0, 1)``, with ``p·T > 1`` (``p·T >= 2`` with ``three_phase``,
            so that each phase holds a step; PyTorch's ``pct_start``).
            Defaults to ``0.3``.
        anneal_strategy: ``"cos"`` or ``"linear"``, the shape of every phase.
            Defaults to ``"cos"``.
        initial_divisor: ``η_0 = η_max / initial_divisor``, ``>= 1``
            (PyTorch's ``div_factor``). Defaults to ``25.0``.
        final_divisor: ``η_end = η_0 / final_divisor``, ``>= 1`` (PyTorch's
            ``final_div_factor``). Defaults to ``1e4``.
        three_phase: If ``True``, fall back to ``η_0`` symmetrically before
            the final anneal (needs ``2p·T − 2 < T − 1``). Defaults to
            ``False``.

    Raises:
        TypeError: If an argument has the wrong type (bools are rejected
            where a number is expected).
        ValueError: If an argument is out of range, NaN or inf, or a phase
            would be shorter than the rules above allow.

    Example:
    >>> from nnkit.schedules import OneCycle
    >>> lr = OneCycle(0.1, total_steps=100, rise_fraction=0.25)
    >>> [round(float(lr(t)), 4) for t in (0, 24, 50, 99)]
    [0.004, 0.1, 0.0732, 0.0]
    >>> float(lr(500)) == float(lr(99)), round(float(lr(99)) / (0.1 / 25 / 1e4), 4)
    (True, 1.0)

    References:
        Smith & Topin, "Super-Convergence: Very Fast Training of Neural
        Networks Using Large Learning Rates", 2019; PyTorch ``OneCycleLR``.
    """

    def __init__(
        self,
        max_learning_rate,
        total_steps,
        *,
        rise_fraction=0.3,
        anneal_strategy="cos",
        initial_divisor=25.0,
        final_divisor=1e4,
        three_phase=False,
    ):
        self.max_learning_rate = v.check_positive_number("max_learning_rate", max_learning_rate)
        self.total_steps = v.check_int("total_steps", total_steps, minimum=2)
        self.rise_fraction = v.check_number(
            "rise_fraction",
            rise_fraction,
            minimum=0.0,
            maximum=1.0,
            min_inclusive=False,
            max_inclusive=False,
        )
        self.anneal_strategy = v.check_one_of("anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES)
        self.initial_divisor = v.check_number("initial_divisor", initial_divisor, minimum=1.0)
        self.final_divisor = v.check_number("final_divisor", final_divisor, minimum=1.0)
        self.three_phase = v.check_bool("three_phase", three_phase)
        rise = check_cycle(self.rise_fraction, self.total_steps, self.three_phase)
        self._schedule = self._phases(rise)

    def _phases(self, rise):
        start = self.max_learning_rate / self.initial_divisor
        values = (start, self.max_learning_rate, start, start / self.final_divisor)
        return cycle_phases(values, rise, self.total_steps, self.anneal_strategy, self.three_phase)

    def value(self, step):
        return self._schedule.value(step)

    def get_config(self):
        return {
            "max_learning_rate": self.max_learning_rate,
            "total_steps": self.total_steps,
            "rise_fraction": self.rise_fraction,
            "anneal_strategy": self.anneal_strategy,
            "initial_divisor": self.initial_divisor,
            "final_divisor": self.final_divisor,
            "three_phase": self.three_phase,
        }


@keras.saving.register_keras_serializable(package="nnkit")
class OneCycleMomentum(Schedule):
    """One-cycle's inverse momentum cycle: down to ``base_momentum`` while the rate rises, back up.

    Use it as the ``momentum`` of ``nnkit.optimizers.SGD`` or the ``beta_1``
    of ``nnkit.optimizers.Adam`` beside a ``OneCycle`` rate with the same
    ``total_steps``, ``rise_fraction``, ``anneal_strategy`` and
    ``three_phase``: when the rate is high the momentum is low, so the
    effective step ``η / (1 − μ)`` does not explode (Smith 2018). The values
    are PyTorch ``OneCycleLR``'s ``cycle_momentum`` step for step.

    Formula: the phases of ``OneCycle`` (same joins ``e_i``, same cosine or
    linear shape), going ``μ_max → μ_base → μ_max`` (two phases) or
    ``μ_max → μ_base → μ_max → μ_max`` (three phases)::

        x = (t − e_(i−1)) / (e_i − e_(i−1))
        μ(t) = b + ½(a − b)(1 + cos(π·x))      anneal_strategy="cos"

    From ``t = T − 1`` on it stays at ``μ_max``.

    Args:
        total_steps: Length of the cycle in optimizer steps, an int ``>= 2``.
            Required.
        rise_fraction: Fraction of ``total_steps`` in the first phase, as
            ``OneCycle``'s. Defaults to ``0.3``.
        anneal_strategy: ``"cos"`` or ``"linear"``. Defaults to ``"cos"``.
        base_momentum: ``μ_base``, the low point, in ``[0, 1)``. Defaults to
            ``0.85``.
        max_momentum: ``μ_max``, the start and the end, in
            ``[base_momentum, 1)``. Defaults to ``0.95``.
        three_phase: As ``OneCycle``'s. Defaults to ``False``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range, or ``base_momentum >
            max_momentum``.

    Example:
    >>> from nnkit.schedules import OneCycleMomentum
    >>> mu = OneCycleMomentum(total_steps=100, rise_fraction=0.25)
    >>> [round(float(mu(t)), 4) for t in (0, 24, 99, 500)]
    [0.95, 0.85, 0.95, 0.95]

    References:
        Smith, "A disciplined approach to neural network hyper-parameters:
        Part 1", 2018; PyTorch ``OneCycleLR(cycle_momentum=True)``.
    """

    def __init__(
        self,
        total_steps,
        *,
        rise_fraction=0.3,
        anneal_strategy="cos",
        base_momentum=0.85,
        max_momentum=0.95,
        three_phase=False,
    ):
        self.total_steps = v.check_int("total_steps", total_steps, minimum=2)
        self.rise_fraction = v.check_number(
            "rise_fraction", rise_fraction, minimum=0.0, maximum=1.0,
            min_inclusive=False, max_inclusive=False,
        )  # fmt: skip
        self.anneal_strategy = v.check_one_of("anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES)
        self.base_momentum = v.check_number(
            "base_momentum", base_momentum, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self.max_momentum = v.check_number(
            "max_momentum", max_momentum, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        if self.base_momentum > self.max_momentum:
            raise ValueError(
                "`base_momentum` must be <= `max_momentum` (the momentum dips while the rate "
                f"rises). Received: base_momentum={base_momentum!r}, max_momentum={max_momentum!r}"
            )
        self.three_phase = v.check_bool("three_phase", three_phase)
        rise = check_cycle(self.rise_fraction, self.total_steps, self.three_phase)
        top, low = self.max_momentum, self.base_momentum
        self._schedule = cycle_phases(
            (top, low, top, top), rise, self.total_steps, self.anneal_strategy, self.three_phase
        )

    def value(self, step):
        return self._schedule.value(step)

    def get_config(self):
        return {
            "total_steps": self.total_steps,
            "rise_fraction": self.rise_fraction,
            "anneal_strategy": self.anneal_strategy,
            "base_momentum": self.base_momentum,
            "max_momentum": self.max_momentum,
            "three_phase": self.three_phase,
        }
