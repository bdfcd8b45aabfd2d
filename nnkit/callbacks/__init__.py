"""Training-loop callbacks: drop-in supersets of Keras's, with resumable state, and weight averaging."""

from nnkit.callbacks._stateful import StatefulCallback

# -- public callbacks (one import line per module) --
from nnkit.callbacks.backup_and_restore import BackupAndRestore
from nnkit.callbacks.batch_norm_statistics import recompute_batch_norm
from nnkit.callbacks.early_stopping import EarlyStopping, StopReason
from nnkit.callbacks.exception_save import ExceptionSave
from nnkit.callbacks.gradient_norm_monitor import GradientNormMonitor
from nnkit.callbacks.learning_rate_monitor import LearningRateMonitor
from nnkit.callbacks.model_checkpoint import ModelCheckpoint
from nnkit.callbacks.monitor import Decision, MonitorCallback, Reason
from nnkit.callbacks.preemption import PREEMPTED_EXIT_STATUS, Preempted, PreemptionSave
from nnkit.callbacks.reduce_lr_on_plateau import ReduceLROnPlateau
from nnkit.callbacks.stochastic_weight_averaging import StochasticWeightAveraging
from nnkit.callbacks.throughput_monitor import ThroughputMonitor
from nnkit.callbacks.time_limit import TimeLimit

__all__ = [
    "BackupAndRestore",
    "Decision",
    "EarlyStopping",
    "ExceptionSave",
    "GradientNormMonitor",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "MonitorCallback",
    "PREEMPTED_EXIT_STATUS",
    "Preempted",
    "PreemptionSave",
    "Reason",
    "ReduceLROnPlateau",
    "StatefulCallback",
    "StochasticWeightAveraging",
    "StopReason",
    "ThroughputMonitor",
    "TimeLimit",
    "recompute_batch_norm",
]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
