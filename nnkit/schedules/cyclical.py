"""Cyclical learning rates (Smith 2017), with PyTorch ``CyclicLR``'s values."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.schedules.base import Schedule

MODES = ("triangular", "triangular2", "exp_range")


@keras.saving.register_keras_serializable(package="nnkit")
class Cyclical(Schedule):
    """A rate that cycles between ``min_learning_rate`` and ``max_learning_rate``.

    Use it to train without tuning a decay (the rate keeps revisiting both
    ends), or between bounds read off ``nnkit.tuning.lr_find``'s curve. The
    values are those of PyTorch's ``CyclicLR`` step for step (its
    ``base_lr``, ``max_lr``, ``step_size_up``, ``step_size_down`` are
    ``min_learning_rate``, ``max_learning_rate``, ``up_steps``,
    ``down_steps`` here). It is the opposite of tensorflow-addons'
    ``CyclicalLearningRate`` in one respect: the mode is a string, so it saves
    and reloads.

    Formula, with ``u = up_steps``, ``d = down_steps``, ``C = u + d``::

        c = ⌊1 + t / C⌋                      (the cycle, from 1)
        x = 1 + t / C − c                    (position in the cycle, [0, 1))
        h = x·C / u            if x ≤ u / C  (rising)
        h = (1 − x)·C / d      otherwise     (falling)
        η(t) = η_min + (η_max − η_min) · h · a(t)

    with ``a = 1`` (``"triangular"``), ``a = 1 / 2^(c − 1)``
    (``"triangular2"``: the height halves every cycle) or ``a = γ^t``
    (``"exp_range"``: the height decays every step).

    Args:
        min_learning_rate: ``η_min``, the rate at the start of each cycle,
            ``0 <= η_min <= η_max``. Required.
        max_learning_rate: ``η_max``, the peak of the first cycle, ``> 0``.
            Required.
        up_steps: ``u``, steps of the rising half, an int ``>= 1``.
            Defaults to ``2000``.
        down_steps: ``d``, steps of the falling half, an int ``>= 1``, or
            ``None`` for ``up_steps``. Defaults to ``None``.
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
            Defaults to ``"triangular"``.
        gamma: ``γ`` in ``(0, 1]``, the per-step decay of ``"exp_range"``
            (any other mode needs ``1.0``). Defaults to ``1.0``.

    Raises:
        TypeError: If an argument has the wrong type (bools are rejected).
        ValueError: If an argument is out of range, NaN or inf,
            ``min_learning_rate > max_learning_rate``, ``mode`` is unknown,
            or ``gamma != 1`` outside ``"exp_range"``.

    Example:
    >>> from nnkit.schedules import Cyclical
    >>> lr = Cyclical(0.01, 0.1, up_steps=10)
    >>> [round(float(lr(t)), 4) for t in (0, 5, 10, 15, 20)]
    [0.01, 0.055, 0.1, 0.055, 0.01]
    >>> lr = Cyclical(0.01, 0.1, up_steps=10, mode="triangular2")
    >>> [round(float(lr(t)), 4) for t in (10, 30, 50)]
    [0.1, 0.055, 0.0325]

    References:
        Smith, "Cyclical Learning Rates for Training Neural Networks", WACV
        2017; PyTorch ``CyclicLR``.
    """

    def __init__(
        self,
        min_learning_rate,
        max_learning_rate,
        up_steps=2000,
        down_steps=None,
        *,
        mode="triangular",
        gamma=1.0,
    ):
        self.max_learning_rate = v.check_positive_number("max_learning_rate", max_learning_rate)
        self.min_learning_rate = v.check_number(
            "min_learning_rate", min_learning_rate, minimum=0.0, maximum=self.max_learning_rate
        )
        self.up_steps = v.check_positive_int("up_steps", up_steps)
        self.down_steps = v.check_optional_int("down_steps", down_steps, minimum=1)
        self.mode = v.check_one_of("mode", mode, MODES)
        self.gamma = v.check_number("gamma", gamma, minimum=0.0, min_inclusive=False, maximum=1.0)
        if self.mode != "exp_range" and self.gamma != 1.0:
            raise ValueError(
                '`gamma` decays the height only in mode="exp_range". '
                f"Received: gamma={gamma!r}, mode={mode!r}"
            )

    def value(self, step):
        up = float(self.up_steps)
        down = float(self.up_steps if self.down_steps is None else self.down_steps)
        total = up + down
        cycle = ops.floor(1.0 + step / total)
        x = 1.0 + step / total - cycle
        ratio = up / total
        height = ops.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
        if self.mode == "triangular2":
            height = height / ops.power(2.0, cycle - 1.0)
        elif self.mode == "exp_range":
            height = height * ops.power(self.gamma, step)
        return self.min_learning_rate + (self.max_learning_rate - self.min_learning_rate) * height

    def get_config(self):
        return {
            "min_learning_rate": self.min_learning_rate,
            "max_learning_rate": self.max_learning_rate,
            "up_steps": self.up_steps,
            "down_steps": self.down_steps,
            "mode": self.mode,
            "gamma": self.gamma,
        }
