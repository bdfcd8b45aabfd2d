"""Learning-rate schedules: pure functions of the step, written in ``keras.ops``.

Every schedule is a ``keras.optimizers.schedules.LearningRateSchedule``,
evaluated in-graph on every step, registered for serialization under the
``nnkit`` package, and usable as ``optimizer.learning_rate`` in a compiled
``fit`` (``jit_compile=True`` too). Warmup, epoch counting and phase joins
are combinators that wrap any schedule, Keras's included.
"""

from nnkit.schedules.base import Schedule
from nnkit.schedules.constant import Constant
from nnkit.schedules.cosine import CosineAnnealing
from nnkit.schedules.cyclical import Cyclical
from nnkit.schedules.epochs import EpochSchedule
from nnkit.schedules.join import JoinSchedules
from nnkit.schedules.one_cycle import OneCycle, OneCycleMomentum
from nnkit.schedules.scaled import Scaled
from nnkit.schedules.step_decay import MultiStepDecay, StepDecay
from nnkit.schedules.warmup import Warmup

__all__ = [
    "Constant",
    "CosineAnnealing",
    "Cyclical",
    "EpochSchedule",
    "JoinSchedules",
    "MultiStepDecay",
    "OneCycle",
    "OneCycleMomentum",
    "Scaled",
    "Schedule",
    "StepDecay",
    "Warmup",
]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
