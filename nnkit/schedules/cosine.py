"""Cosine annealing, with optional linear warmup and warm restarts (SGDR)."""

import math

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.schedules.base import Schedule
from nnkit.schedules.warmup import Warmup


def _cycle_bounds(t, cycle_steps, cycle_mult):
    """Index, start and length of the restart cycle that contains step ``t``.

    Cycle ``i`` has length ``T_0·m^i`` and starts at ``T_0·(m^i − 1)/(m − 1)``
    (``i·T_0`` when ``m = 1``).
    """
    t0 = float(cycle_steps)
    if cycle_mult == 1.0:
        index = ops.floor(t / t0)
        return index, index * t0, ops.full_like(t, t0)
    m = float(cycle_mult)

    def start_of(i):
        return t0 * (ops.power(m, i) - 1.0) / (m - 1.0)

    index = ops.floor(ops.log(1.0 + t * (m - 1.0) / t0) / math.log(m))
    # The logarithm can land a hair off an integer at cycle starts: fix it.
    index = ops.where(t < start_of(index), index - 1.0, index)
    index = ops.where(t >= start_of(index + 1.0), index + 1.0, index)
    return index, start_of(index), t0 * ops.power(m, index)


class _CosineCore(Schedule):
    """Cosine annealing over ``length`` steps (restarts optional), no warmup."""

    def __init__(self, peak, length, floor, cycle_steps, cycle_mult, cycle_decay):
        self.peak, self.length, self.floor = peak, length, floor
        self.cycle_steps, self.cycle_mult, self.cycle_decay = cycle_steps, cycle_mult, cycle_decay

    def value(self, step):
        t = ops.maximum(step, 0.0)
        if self.cycle_steps is None:
            index, start, length = ops.zeros_like(t), ops.zeros_like(t), float(self.length)
        else:
            index, start, length = _cycle_bounds(t, self.cycle_steps, self.cycle_mult)
        peak = ops.maximum(self.peak * ops.power(self.cycle_decay, index), self.floor)
        progress = ops.clip((t - start) / length, 0.0, 1.0)
        cosine = self.floor + 0.5 * (peak - self.floor) * (1.0 + ops.cos(math.pi * progress))
        return ops.where(t >= float(self.length), ops.full_like(t, self.floor), cosine)

    def get_config(self):  # never serialized on its own: CosineAnnealing owns it
        return {}


@keras.saving.register_keras_serializable(package="nnkit")
class CosineAnnealing(Schedule):
    """Cosine annealing from ``max_learning_rate`` to ``min_learning_rate``.

    Use it as the default decay for SGD and Adam alike: it spends long at high
    rates, then anneals smoothly, with no milestones to tune. Add
    ``warmup_steps`` for large batches or fresh Adam models, and restarts
    (SGDR) to explore several minima or to snapshot-ensemble.

    Formula, with ``T = total_steps − warmup_steps``::

        η(t) = η_min + ½(η_max − η_min)(1 + cos(π·t/T))    for 0 ≤ t < T
        η(t) = η_min                                       for t ≥ T

    ``t`` counts from the end of warmup; during warmup the rate rises linearly
    from 0 to ``η_max`` (the ``Warmup`` combinator, not a copy of it). With
    restarts, cycle ``i`` lasts ``T_i = cycle_steps · cycle_mult^i`` steps, its
    peak is ``max(η_max · cycle_decay^i, η_min)``, and within it the formula
    above runs with ``t − start_i`` and ``T_i``; cycles tile ``[0, T)`` and the
    rate stays at ``η_min`` from ``T`` on (the last cycle may be cut short).

    Args:
        max_learning_rate: ``η_max``, the peak rate, ``> 0``. Required.
        total_steps: Length of the schedule in optimizer steps, warmup
            included, an int ``>= 1``. Required.
        min_learning_rate: ``η_min``, the final rate, ``0 <= η_min <= η_max``.
            Defaults to ``0.0``.
        warmup_steps: Steps of linear warmup from 0, an int in
            ``[0, total_steps)``. Defaults to ``0``.
        cycle_steps: Length ``T_0`` of the first restart cycle, an int ``>= 1``,
            or ``None`` for a single cycle over ``T``. Defaults to ``None``.
        cycle_mult: Growth ``m >= 1`` of each cycle's length (needs
            ``cycle_steps``). Defaults to ``1.0``.
        cycle_decay: Peak multiplier per cycle, in ``(0, 1]`` (needs
            ``cycle_steps``). Defaults to ``1.0``.

    Raises:
        TypeError: If an argument has the wrong type (bools are rejected).
        ValueError: If an argument is out of range, NaN or inf, if
            ``warmup_steps >= total_steps``, or if ``cycle_mult``/``cycle_decay``
            are set without ``cycle_steps``.

    Example:
    >>> from nnkit.schedules import CosineAnnealing
    >>> lr = CosineAnnealing(0.1, 100)
    >>> [round(float(lr(t)), 4) for t in (0, 50, 100, 1000)]
    [0.1, 0.05, 0.0, 0.0]
    >>> lr = CosineAnnealing(0.1, 110, 0.001, warmup_steps=10)
    >>> [round(float(lr(t)), 4) for t in (0, 5, 10, 60, 110)]
    [0.0, 0.05, 0.1, 0.0505, 0.001]
    >>> sgdr = CosineAnnealing(0.1, 300, cycle_steps=100, cycle_mult=2.0)
    >>> [round(float(sgdr(t)), 4) for t in (99, 100, 200, 299)]
    [0.0, 0.1, 0.05, 0.0]

    References:
        Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
        Restarts", ICLR 2017.
    """

    def __init__(
        self,
        max_learning_rate,
        total_steps,
        min_learning_rate=0.0,
        *,
        warmup_steps=0,
        cycle_steps=None,
        cycle_mult=1.0,
        cycle_decay=1.0,
    ):
        self.max_learning_rate = v.check_positive_number("max_learning_rate", max_learning_rate)
        self.total_steps = v.check_positive_int("total_steps", total_steps)
        self.min_learning_rate = v.check_number(
            "min_learning_rate", min_learning_rate, minimum=0.0, maximum=self.max_learning_rate
        )
        self.warmup_steps = v.check_int(
            "warmup_steps", warmup_steps, minimum=0, maximum=self.total_steps - 1
        )
        self.cycle_steps = v.check_optional_int("cycle_steps", cycle_steps, minimum=1)
        self.cycle_mult = v.check_number("cycle_mult", cycle_mult, minimum=1.0)
        self.cycle_decay = v.check_number(
            "cycle_decay", cycle_decay, minimum=0.0, min_inclusive=False, maximum=1.0
        )
        if self.cycle_steps is None and (self.cycle_mult != 1.0 or self.cycle_decay != 1.0):
            raise ValueError(
                "`cycle_mult` and `cycle_decay` shape warm restarts and need `cycle_steps`. "
                f"Received: cycle_steps=None, cycle_mult={cycle_mult!r}, "
                f"cycle_decay={cycle_decay!r}"
            )
        core = _CosineCore(
            self.max_learning_rate,
            self.total_steps - self.warmup_steps,
            self.min_learning_rate,
            self.cycle_steps,
            self.cycle_mult,
            self.cycle_decay,
        )
        self._schedule = Warmup(core, self.warmup_steps) if self.warmup_steps else core

    def value(self, step):
        return self._schedule.value(step)

    def get_config(self):
        return {
            "max_learning_rate": self.max_learning_rate,
            "total_steps": self.total_steps,
            "min_learning_rate": self.min_learning_rate,
            "warmup_steps": self.warmup_steps,
            "cycle_steps": self.cycle_steps,
            "cycle_mult": self.cycle_mult,
            "cycle_decay": self.cycle_decay,
        }
