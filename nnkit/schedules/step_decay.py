"""Piecewise-constant decay: every ``step_size`` steps, or at milestones."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.schedules.base import Schedule


def _check_factor(factor):
    return v.check_number("factor", factor, minimum=0.0, min_inclusive=False, maximum=1.0)


@keras.saving.register_keras_serializable(package="nnkit")
class StepDecay(Schedule):
    """Multiply the learning rate by ``factor`` every ``step_size`` steps.

    Use it for the classic "divide by 10 every 30 epochs" recipes (wrap it in
    ``EpochSchedule`` to count in epochs). For irregular drops use
    ``MultiStepDecay``.

    Formula: ``η(t) = η_0 · factor^⌊t / step_size⌋``.

    Args:
        initial_learning_rate: ``η_0``, the rate before the first drop, a
            finite number ``>= 0``. Required.
        step_size: Steps between drops, an int ``>= 1``. Required.
        factor: Multiplier applied at each drop, in ``(0, 1]``.
            Defaults to ``0.1``.

    Raises:
        TypeError: If an argument is not a number (bools are rejected).
        ValueError: If an argument is out of range, NaN or inf.

    Example:
    >>> from nnkit.schedules import StepDecay
    >>> lr = StepDecay(0.1, step_size=30, factor=0.5)
    >>> [round(float(lr(t)), 4) for t in (0, 29, 30, 60)]
    [0.1, 0.1, 0.05, 0.025]

    References:
        He et al., "Deep Residual Learning for Image Recognition", 2016;
        PyTorch ``StepLR``.
    """

    def __init__(self, initial_learning_rate, step_size, factor=0.1):
        self.initial_learning_rate = v.check_non_negative_number(
            "initial_learning_rate", initial_learning_rate
        )
        self.step_size = v.check_positive_int("step_size", step_size)
        self.factor = _check_factor(factor)

    def value(self, step):
        drops = ops.floor(step / float(self.step_size))
        return self.initial_learning_rate * ops.power(
            ops.convert_to_tensor(self.factor, "float32"), drops
        )

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "step_size": self.step_size,
            "factor": self.factor,
        }


@keras.saving.register_keras_serializable(package="nnkit")
class MultiStepDecay(Schedule):
    """Multiply the learning rate by ``factor`` at each of the given milestones.

    Use it when the drops are not evenly spaced, e.g. at 50% and 75% of
    training.

    Formula: ``η(t) = η_0 · factor^{#{m ∈ milestones : m ≤ t}}``.

    Args:
        initial_learning_rate: ``η_0``, the rate before the first milestone,
            a finite number ``>= 0``. Required.
        milestones: Strictly increasing steps (ints ``>= 1``) at which the rate
            drops. Required.
        factor: Multiplier applied at each milestone, in ``(0, 1]``.
            Defaults to ``0.1``.

    Raises:
        TypeError: If an argument has the wrong type (bools are rejected).
        ValueError: If ``milestones`` is empty or not strictly increasing, or
            a number is out of range, NaN or inf.

    Example:
    >>> from nnkit.schedules import MultiStepDecay
    >>> lr = MultiStepDecay(0.1, milestones=[50, 75])
    >>> [round(float(lr(t)), 4) for t in (0, 50, 74, 75)]
    [0.1, 0.01, 0.01, 0.001]

    References:
        PyTorch ``MultiStepLR``.
    """

    def __init__(self, initial_learning_rate, milestones, factor=0.1):
        self.initial_learning_rate = v.check_non_negative_number(
            "initial_learning_rate", initial_learning_rate
        )
        self.milestones = v.check_increasing_ints("milestones", milestones, minimum=1)
        self.factor = _check_factor(factor)

    def value(self, step):
        drops = ops.zeros_like(step)
        for milestone in self.milestones:
            drops = drops + ops.cast(step >= float(milestone), "float32")
        return self.initial_learning_rate * ops.power(
            ops.convert_to_tensor(self.factor, "float32"), drops
        )

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "milestones": list(self.milestones),
            "factor": self.factor,
        }
