"""A schedule multiplied by a factor held in a variable."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.schedules.base import Schedule, deserialize_schedule, evaluate, serialize_schedule


@keras.saving.register_keras_serializable(package="nnkit")
class Scaled(Schedule):
    """A learning-rate schedule times a factor that can change during training.

    Use it when something outside the schedule must lower (or raise) the rate
    while keeping the schedule's shape, e.g. ``nnkit.callbacks.ReduceLROnPlateau``
    on an optimizer that holds a schedule. The factor lives in a non-trainable
    ``keras.Variable``, read in-graph on every step, so changing it needs no
    retracing; ``get_config()`` records its current value, so a saved model
    keeps the reduced rate.

    Formula: ``η(t) = scale · schedule(t)``.

    Args:
        schedule: A ``keras.optimizers.schedules.LearningRateSchedule`` (nnkit's
            or Keras's) or a float for a constant rate. Required.
        scale: Initial value of the factor, ``> 0``. Defaults to ``1.0``.

    Raises:
        TypeError: If ``schedule`` is neither a schedule nor a number.
        ValueError: If ``scale`` is not a finite number ``> 0``.

    Example:
    >>> from nnkit.schedules import Scaled, StepDecay
    >>> lr = Scaled(StepDecay(0.1, step_size=10), scale=0.5)
    >>> round(float(lr(0)), 6)
    0.05
    >>> lr.set_scale(0.25)
    >>> round(float(lr(10)), 6)
    0.0025

    References:
        Keras ``ReduceLROnPlateau``, which cannot reduce a schedule.
    """

    def __init__(self, schedule, scale=1.0):
        if isinstance(schedule, dict):
            schedule = deserialize_schedule(schedule)
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            if isinstance(schedule, bool) or not isinstance(schedule, (int, float)):
                raise TypeError(
                    "`schedule` must be a keras.optimizers.schedules.LearningRateSchedule "
                    f"or a float. Received: schedule={schedule!r}"
                )
            from nnkit.schedules.constant import Constant

            schedule = Constant(v.check_positive_number("schedule", schedule))
        self.schedule = schedule
        self.scale = keras.Variable(
            v.check_positive_number("scale", scale),
            dtype="float32",
            trainable=False,
            name="learning_rate_scale",
            aggregation="only_first_replica",
        )

    def set_scale(self, scale):
        """Set the factor (takes effect at the next step, no retracing)."""
        self.scale.assign(v.check_positive_number("scale", scale))

    def get_scale(self):
        """The current factor as a Python float."""
        return float(self.scale.numpy())

    def value(self, step):
        return ops.cast(self.scale, "float32") * evaluate(self.schedule, step)

    def get_config(self):
        return {"schedule": serialize_schedule(self.schedule), "scale": self.get_scale()}
