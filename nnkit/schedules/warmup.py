"""Linear warmup in front of any schedule."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.schedules.base import Schedule, deserialize_schedule, evaluate, serialize_schedule


def _check_schedule(name, schedule):
    if isinstance(schedule, dict):
        schedule = deserialize_schedule(schedule)
    return v.check_instance(
        name,
        schedule,
        keras.optimizers.schedules.LearningRateSchedule,
        "a keras.optimizers.schedules.LearningRateSchedule",
    )


@keras.saving.register_keras_serializable(package="nnkit")
class Warmup(Schedule):
    """Linear warmup from ``initial_learning_rate`` up to where a schedule starts.

    Use it in front of any schedule (nnkit's or Keras's) when large early
    updates destabilise training: big batches, Adam on fresh models,
    transformers. The wrapped schedule's clock starts when warmup ends, so
    ``Warmup(StepDecay(0.1, 30), 5)`` decays at steps 35, 65, ...

    Formula, with ``w = warmup_steps`` and ``s`` the wrapped schedule::

        η(t) = η_0 + (s(0) − η_0) · t / w     for t < w
        η(t) = s(t − w)                       for t ≥ w

    It is continuous at ``t = w`` and reaches ``s(0)`` exactly there.

    Args:
        schedule: The ``keras.optimizers.schedules.LearningRateSchedule`` to
            warm up into. Required.
        warmup_steps: Number of warmup steps ``w``, an int ``>= 0`` (``0``
            means no warmup). Required.
        initial_learning_rate: The rate ``η_0`` at step 0, ``>= 0``.
            Defaults to ``0.0``.

    Raises:
        TypeError: If ``schedule`` is not a learning-rate schedule, or an
            argument has the wrong type.
        ValueError: If ``warmup_steps`` is negative or
            ``initial_learning_rate`` is negative, NaN or inf.

    Example:
    >>> from nnkit.schedules import StepDecay, Warmup
    >>> lr = Warmup(StepDecay(0.1, step_size=30), warmup_steps=10)
    >>> [round(float(lr(t)), 4) for t in (0, 5, 10, 39, 40)]
    [0.0, 0.05, 0.1, 0.1, 0.01]

    References:
        Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in
        1 Hour", 2017 (gradual warmup).
    """

    def __init__(self, schedule, warmup_steps, initial_learning_rate=0.0):
        self.schedule = _check_schedule("schedule", schedule)
        self.warmup_steps = v.check_non_negative_int("warmup_steps", warmup_steps)
        self.initial_learning_rate = v.check_non_negative_number(
            "initial_learning_rate", initial_learning_rate
        )

    def value(self, step):
        w = float(self.warmup_steps)
        if self.warmup_steps == 0:
            return evaluate(self.schedule, step)
        start = ops.convert_to_tensor(self.initial_learning_rate, "float32")
        target = evaluate(self.schedule, ops.zeros_like(step))
        rising = start + (target - start) * (step / w)
        after = evaluate(self.schedule, ops.maximum(step - w, 0.0))
        return ops.where(step < w, rising, after)

    def get_config(self):
        return {
            "schedule": serialize_schedule(self.schedule),
            "warmup_steps": self.warmup_steps,
            "initial_learning_rate": self.initial_learning_rate,
        }
