"""Count a schedule in epochs, smoothly or one value per epoch."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.schedules.base import Schedule, evaluate, serialize_schedule
from nnkit.schedules.warmup import _check_schedule

GRANULARITIES = ("step", "epoch")


@keras.saving.register_keras_serializable(package="nnkit")
class EpochSchedule(Schedule):
    """Let a schedule count in epochs while the optimizer counts in steps.

    Use it when you think in epochs: "×0.1 every 30 epochs" is
    ``EpochSchedule(StepDecay(lr, 30), steps_per_epoch)``; "cosine over 100
    epochs with 5 warmup epochs" is
    ``EpochSchedule(CosineAnnealing(lr, 100, warmup_steps=5), steps_per_epoch)``.
    Every argument of the wrapped schedule that counts steps then counts
    epochs. With ``granularity="epoch"`` the rate is constant within an epoch,
    the way PyTorch users call ``scheduler.step()`` once per epoch.

    Formula, with ``S = steps_per_epoch`` and ``s`` the wrapped schedule::

        η(t) = s(t / S)        granularity="step"  (fractional epochs)
        η(t) = s(⌊t / S⌋)      granularity="epoch"

    ``steps_per_epoch`` is what ``fit`` runs per epoch:
    ``ceil(num_samples / batch_size)`` for arrays.

    Args:
        schedule: The ``keras.optimizers.schedules.LearningRateSchedule`` whose
            step counts are epochs. Required.
        steps_per_epoch: Optimizer steps per epoch, an int ``>= 1``. Required.
        granularity: ``"step"`` to update the rate every step, or ``"epoch"``
            to hold it for a whole epoch. Defaults to ``"step"``.

    Raises:
        TypeError: If ``schedule`` is not a schedule or ``steps_per_epoch`` is
            not an int.
        ValueError: If ``steps_per_epoch < 1`` or ``granularity`` is unknown.

    Example:
    >>> from nnkit.schedules import EpochSchedule, StepDecay
    >>> lr = EpochSchedule(StepDecay(0.1, step_size=30), steps_per_epoch=100)
    >>> [round(float(lr(t)), 4) for t in (0, 2999, 3000)]
    [0.1, 0.1, 0.01]

    References:
        PyTorch ``torch.optim.lr_scheduler`` (stepped once per epoch).
    """

    def __init__(self, schedule, steps_per_epoch, *, granularity="step"):
        self.schedule = _check_schedule("schedule", schedule)
        self.steps_per_epoch = v.check_positive_int("steps_per_epoch", steps_per_epoch)
        self.granularity = v.check_one_of("granularity", granularity, GRANULARITIES)

    def value(self, step):
        epoch = step / float(self.steps_per_epoch)
        if self.granularity == "epoch":
            epoch = ops.floor(epoch)
        return evaluate(self.schedule, epoch)

    def get_config(self):
        return {
            "schedule": serialize_schedule(self.schedule),
            "steps_per_epoch": self.steps_per_epoch,
            "granularity": self.granularity,
        }
