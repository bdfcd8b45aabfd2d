"""Join schedules end to end at step boundaries."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.schedules.base import Schedule, evaluate, serialize_schedule
from nnkit.schedules.warmup import _check_schedule


@keras.saving.register_keras_serializable(package="nnkit")
class JoinSchedules(Schedule):
    """Run several schedules one after another, each restarting its own clock.

    Use it to build phases: a constant phase then a cosine, a warmup then a
    step decay then a constant tail, or to join Keras schedules with nnkit's.
    Each piece sees the steps since its phase began, like optax's
    ``join_schedules``.

    Formula, with boundaries ``b_1 < … < b_{n-1}`` and ``b_0 = 0``::

        η(t) = s_i(t − b_i)   for b_i ≤ t < b_{i+1}

    The join is continuous at ``b_i`` only if ``s_{i-1}`` ends where ``s_i``
    starts; nothing smooths a jump you ask for.

    Args:
        schedules: A list of ``n >= 2`` learning-rate schedules. Required.
        boundaries: A list of ``n − 1`` strictly increasing step counts ``> 0``
            where the next schedule takes over. Required.

    Raises:
        TypeError: If ``schedules`` holds something that is not a schedule, or
            ``boundaries`` holds something that is not an int.
        ValueError: If the lengths do not match, a list is empty, or the
            boundaries are not strictly increasing positive ints.

    Example:
    >>> from nnkit.schedules import Constant, CosineAnnealing, JoinSchedules
    >>> lr = JoinSchedules([Constant(0.1), CosineAnnealing(0.1, 100)], [50])
    >>> [round(float(lr(t)), 4) for t in (0, 49, 50, 100, 150, 200)]
    [0.1, 0.1, 0.1, 0.05, 0.0, 0.0]

    References:
        optax ``join_schedules``.
    """

    def __init__(self, schedules, boundaries):
        schedules = v.check_sequence("schedules", schedules, "a list of schedules")
        schedules = [_check_schedule(f"schedules[{i}]", s) for i, s in enumerate(schedules)]
        if len(schedules) < 2:
            raise ValueError(
                f"`schedules` must hold at least 2 schedules. Received: schedules={schedules!r}"
            )
        boundaries = v.check_increasing_ints("boundaries", boundaries, minimum=1)
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                "`boundaries` must have one entry fewer than `schedules` "
                f"({len(schedules) - 1}). Received: boundaries={boundaries!r}"
            )
        self.schedules = schedules
        self.boundaries = boundaries

    def value(self, step):
        result = evaluate(self.schedules[0], step)
        for boundary, schedule in zip(self.boundaries, self.schedules[1:], strict=True):
            b = float(boundary)
            later = evaluate(schedule, ops.maximum(step - b, 0.0))
            result = ops.where(step >= b, later, result)
        return result

    def get_config(self):
        return {
            "schedules": [serialize_schedule(s) for s in self.schedules],
            "boundaries": list(self.boundaries),
        }
