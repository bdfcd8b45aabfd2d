"""The base of every nnkit callback that watches a logged metric, and the decision it returns."""

import enum
import math
import typing
import warnings

import numpy as np
from keras import ops

from nnkit import _validation as v
from nnkit._keras import metrics as keras_metrics
from nnkit.callbacks._stateful import StatefulCallback

MODES = ("auto", "min", "max")
ON_MISSING = ("raise", "warn")


class Reason(str, enum.Enum):
    """Why a monitoring callback acted, or did not, at the end of an epoch.

    One vocabulary for ``EarlyStopping``, ``ReduceLROnPlateau``
    and ``nnkit.tuning.MedianStopping``. The first five are
    ``EarlyStopping.stop_reason`` values (``NOT_STOPPED`` until it stops):

    * ``NOT_STOPPED``: training was not stopped (yet).
    * ``NO_IMPROVEMENT``: ``patience`` epochs without an improvement (the
      callback acts: it stops, or lowers the learning rate).
    * ``BASELINE_NOT_REACHED``: as ``NO_IMPROVEMENT``, but no epoch ever beat
      ``baseline``.
    * ``NON_FINITE``: the monitored value was NaN or infinite.
    * ``DIVERGED``: the monitored value was worse than ``divergence_threshold``.

    The others say why a callback did not act (or, for
    ``WORSE_THAN_MEDIAN``, why ``MedianStopping`` stopped):
    ``IMPROVED``, ``WAITING`` (patience not used up), ``COOLDOWN``,
    ``WARMUP`` (``start_from_epoch``/``warmup_epochs``), ``MISSING`` (the
    value was not logged this epoch), ``AT_MIN_LR``,
    ``NOT_ENOUGH_REFERENCES`` (fewer finished runs than ``min_trials``) and
    ``WORSE_THAN_MEDIAN``. ``TIME_LIMIT`` is ``TimeLimit``'s stop reason: the
    next epoch (or batch) would end past the wall-clock budget.

    The values are the lower-case names, so ``Reason("diverged")`` works and
    a reason compares equal to its string.

    Example:
    >>> from nnkit.callbacks import Reason
    >>> Reason("non_finite") is Reason.NON_FINITE, Reason.NON_FINITE == "non_finite"
    (True, True)
    """

    NOT_STOPPED = "not_stopped"
    NO_IMPROVEMENT = "no_improvement"
    BASELINE_NOT_REACHED = "baseline_not_reached"
    NON_FINITE = "non_finite"
    DIVERGED = "diverged"
    IMPROVED = "improved"
    WAITING = "waiting"
    COOLDOWN = "cooldown"
    WARMUP = "warmup"
    MISSING = "missing"
    AT_MIN_LR = "at_min_lr"
    NOT_ENOUGH_REFERENCES = "not_enough_references"
    WORSE_THAN_MEDIAN = "worse_than_median"
    TIME_LIMIT = "time_limit"  # last: ``code`` is the position, kept stable

    @property
    def code(self):
        """The reason as a small int (``NOT_STOPPED`` is 0), for numeric logs."""
        return list(Reason).index(self)

    def __str__(self):
        return self.value


class Decision(typing.NamedTuple):
    """What a monitoring callback's ``decide()`` concluded for one epoch; it has no side effects.

    ``act`` is the callback's action (stop training, or lower the learning
    rate) and ``reason`` a ``Reason``. The other fields are the state
    after this epoch, where the callback has it: ``value`` the value compared
    (smoothed by ``EarlyStopping(smoothing=...)``, best-so-far for
    ``MedianStopping``), ``best``/``best_epoch``, ``wait``, ``improved``
    (``best`` was updated), ``cooldown`` (``ReduceLROnPlateau``'s counter),
    ``reference`` and ``count`` (``MedianStopping``'s median and the number
    of runs behind it). ``should_stop``, ``should_reduce``, ``smoothed`` and
    ``median`` are read-only aliases of ``act``, ``act``, ``value`` and
    ``reference``.
    """

    act: bool
    reason: Reason
    value: float | None = None
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    improved: bool = False
    cooldown: int = 0
    reference: float | None = None
    count: int = 0

    @property
    def should_stop(self):
        return self.act

    @property
    def should_reduce(self):
        return self.act

    @property
    def smoothed(self):
        return self.value

    @property
    def median(self):
        return self.reference


def _as_float32(value):
    with np.errstate(over="ignore"):
        return np.float32(value)


def improves(value, reference, direction, min_delta=0.0):
    """Whether ``value`` beats ``reference`` by more than ``min_delta`` in ``direction``.

    Compared in float32, as Keras's callbacks do (through ``keras.ops``), so
    nnkit's decisions match Keras's on the same values. ``reference=None``
    always counts as beaten.
    """
    if reference is None:
        return True
    if direction == "min":
        return bool(_as_float32(value + min_delta) < _as_float32(reference))
    return bool(_as_float32(value - min_delta) > _as_float32(reference))


class MonitorCallback(StatefulCallback):
    """Base class of callbacks that watch a logged metric: direction, improvement, missing keys.

    ``EarlyStopping``, ``ReduceLROnPlateau`` and ``nnkit.tuning.MedianStopping``
    derive from it, as Keras's ``EarlyStopping``, ``ReduceLROnPlateau`` and
    ``ModelCheckpoint`` derive from Keras's ``MonitorCallback``. It holds:

    * ``mode``: ``"min"``, ``"max"`` or ``"auto"``. With ``"auto"`` the
      direction is found at the first epoch end, as Keras does: ``"min"``
      for ``loss``/``val_loss``, else the direction of the compiled metric
      of that name (``val_`` prefix removed); ``direction`` then holds
      ``"min"`` or ``"max"`` and ``monitor_op`` Keras's ``keras.ops.less``
      or ``keras.ops.greater``.
    * the improvement rule: ``x`` improves on ``r`` when ``x + min_delta < r``
      (``"min"``) or ``x − min_delta > r`` (``"max"``), compared in float32
      (``improves``). ``min_delta`` stays positive (Keras flips its
      sign for ``"min"``).
    * the missing-key rule. When ``monitor`` is not in an epoch's logs:
      with ``on_missing="raise"`` (the default) a ``ValueError`` names the
      key and lists the logged keys, at the first epoch end where it is
      missing although the other logs of its kind are there (a ``val_`` key
      while validation ran, any other key always); a ``val_`` key missing
      in an epoch without validation (``validation_freq > 1``) is skipped,
      and if it was never logged at all ``on_train_end`` warns (raising
      there would keep later callbacks from finishing). With
      ``on_missing="warn"`` each such epoch gets Keras's warning and is
      skipped, as in Keras.

    Subclasses implement ``decide(...)`` (pure: returns a ``Decision``),
    ``_reset_state``, ``get_state`` and ``set_state``, read the value with
    ``monitored_value`` and compare with ``is_improvement``.

    Args:
        monitor: Name of the logged quantity. Defaults to ``"val_loss"``.
        mode: ``"auto"``, ``"min"`` or ``"max"``. Defaults to ``"auto"``.
        min_delta: Smallest change that counts as an improvement, ``>= 0``.
            Defaults to ``0``.
        on_missing: ``"raise"`` or ``"warn"`` (Keras's behaviour) when
            ``monitor`` is not logged. Keyword-only. Defaults to ``"raise"``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``mode`` or ``on_missing`` is unknown, ``min_delta``
            is negative, NaN or inf; at an epoch end, if ``monitor`` is
            missing (``on_missing="raise"``) or ``mode="auto"`` cannot infer
            its direction.
    """

    def __init__(self, monitor="val_loss", mode="auto", min_delta=0, *, on_missing="raise"):
        super().__init__()
        self.monitor = v.check_str("monitor", monitor)
        self.mode = v.check_one_of("mode", mode, MODES)
        self.min_delta = v.check_non_negative_number("min_delta", min_delta)
        self.on_missing = v.check_one_of("on_missing", on_missing, ON_MISSING)
        self.direction = None if self.mode == "auto" else self.mode
        self._seen_monitor = False  # whether `monitor` was in any epoch's logs this run
        self._epochs_read = 0  # epoch ends read this run

    # -- direction and comparison -------------------------------------------------

    @property
    def monitor_op(self):
        """Keras's comparison: ``keras.ops.less`` (min), ``keras.ops.greater`` (max), or ``None``."""
        if self.direction is None:
            return None
        return ops.less if self.direction == "min" else ops.greater

    def resolve_direction(self):
        """``"min"``/``"max"``: the mode, or (``"auto"``) the direction inferred from the model."""
        if self.direction is not None:
            return self.direction
        name = self.monitor.removeprefix("val_")
        direction = "min" if name == "loss" else None
        model = self._attached_model()
        if model is not None:
            direction = keras_metrics.metric_direction(model, name) or direction
        if direction is None:
            raise ValueError(
                f"{type(self).__name__} cannot tell whether `{self.monitor}` should be "
                "minimized or maximized: it is not a loss and the model has no compiled metric "
                f"`{name}` with a known direction. Pass mode='min' or mode='max'. "
                f"Received: monitor={self.monitor!r}, mode='auto'"
            )
        self.direction = direction
        return direction

    def is_improvement(self, value, reference):
        """Whether ``value`` improves on ``reference`` (``None``: always), by the rule above."""
        return improves(value, reference, self.resolve_direction(), self.min_delta)

    # -- the monitored value -------------------------------------------------------

    def monitored_value(self, logs):
        """The monitored value in ``logs`` as a float, or ``None`` when this epoch has none.

        Applies the missing-key rule (see the class documentation).
        """
        logs = logs or {}
        self._epochs_read += 1
        value = logs.get(self.monitor)
        if value is not None:
            self._seen_monitor = True
            return self._scalar(value)
        validation_ran = any(key.startswith("val_") for key in logs)
        if self.monitor.startswith("val_") and not validation_ran:
            return None  # no validation this epoch (validation_freq > 1)
        self._missing(sorted(logs))
        return None

    def _scalar(self, value):
        """``value`` as a float; a one-element array (e.g. ``F1Score`` of one class) too."""
        array = np.asarray(value)
        if array.size != 1:
            raise ValueError(
                f"{type(self).__name__} monitors `{self.monitor}`, which is not a single "
                f"number (shape {array.shape}); monitor a scalar metric or average it. "
                f"Received: {self.monitor}={array.tolist()!r}"
            )
        return float(array.reshape(()))

    def _missing(self, available, *, at_end=False):
        where = (
            f"in the logs of any of {self._epochs_read} epochs" if at_end else "in the epoch logs"
        )
        message = (
            f"{type(self).__name__} monitors `{self.monitor}`, which is not {where}. "
            f"Logged keys: {', '.join(available) if available else '(none)'}. Check the "
            "spelling (validation keys start with 'val_' and need validation data; metric "
            "names come from compile(metrics=...)), or pass on_missing='warn' to warn "
            f"and go on, as Keras does. Received: monitor={self.monitor!r}"
        )
        if self.on_missing == "raise" and not at_end:
            raise ValueError(message)
        warnings.warn(message, stacklevel=3)

    def check_monitor_was_logged(self):
        """At the end of training: warn if ``monitor`` was never logged in this run's epochs."""
        if self._epochs_read and not self._seen_monitor:
            self._missing([], at_end=True)

    # -- hooks ----------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._seen_monitor = False
        self._epochs_read = 0
        if self.mode == "auto":
            self.direction = None  # inferred again: the model may have been recompiled
        super().on_train_begin(logs)


def is_finite(value):
    """Whether ``value`` is a finite number (``None`` is not)."""
    return value is not None and math.isfinite(value)
