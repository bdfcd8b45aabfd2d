"""The base class shared by every nnkit learning-rate schedule."""

import abc

import keras
from keras import ops


class Schedule(keras.optimizers.schedules.LearningRateSchedule, metaclass=abc.ABCMeta):
    """Base class: a learning rate that is a pure function of the step.

    Subclasses implement ``value(step)`` with ``keras.ops`` on a float32
    ``step`` tensor and ``get_config()``. ``__call__`` casts the optimizer's
    integer iteration counter to float32, so schedules also accept fractional
    steps (``EpochSchedule`` evaluates its inner schedule in epochs this way),
    and clamps a negative step to 0: before training starts the rate is the
    rate of step 0, never an extrapolation (a negative learning rate would
    climb the loss). Nothing here runs Python per step once the training
    function is traced.
    """

    def __call__(self, step):
        return self.value(ops.maximum(ops.cast(step, "float32"), 0.0))

    @abc.abstractmethod
    def value(self, step):
        """The learning rate at ``step`` (a float32 tensor)."""

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def evaluate(schedule, step):
    """Evaluate any ``LearningRateSchedule`` at a float32 ``step`` tensor.

    nnkit schedules take the float step as it is; a Keras schedule gets it
    through its own ``__call__`` (Keras schedules cast the step themselves).
    """
    if isinstance(schedule, Schedule):
        return schedule.value(step)
    return ops.cast(schedule(step), "float32")


def serialize_schedule(schedule):
    """The JSON config of a nested schedule, for ``get_config``."""
    return keras.saving.serialize_keras_object(schedule)


def deserialize_schedule(config):
    """Inverse of :func:`serialize_schedule` (already-built objects pass through)."""
    if isinstance(config, keras.optimizers.schedules.LearningRateSchedule):
        return config
    return keras.saving.deserialize_keras_object(config)
