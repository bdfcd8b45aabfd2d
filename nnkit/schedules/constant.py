"""A constant learning rate, as a schedule (useful in joins)."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.schedules.base import Schedule


@keras.saving.register_keras_serializable(package="nnkit")
class Constant(Schedule):
    """A learning rate that never changes.

    Use it as a piece of a join (``JoinSchedules``) or wherever a schedule
    object is needed but the rate is fixed.

    Formula: ``η(t) = learning_rate``.

    Args:
        learning_rate: The rate, a finite number ``>= 0``. Required.

    Raises:
        TypeError: If ``learning_rate`` is not a number.
        ValueError: If ``learning_rate`` is negative, NaN or inf.

    Example:
    >>> from nnkit.schedules import Constant
    >>> float(Constant(0.01)(1000))
    0.01

    References:
        optax ``constant_schedule``.
    """

    def __init__(self, learning_rate):
        self.learning_rate = v.check_non_negative_number("learning_rate", learning_rate)

    def value(self, step):
        return ops.full_like(step, self.learning_rate, dtype="float32")

    def get_config(self):
        return {"learning_rate": self.learning_rate}
