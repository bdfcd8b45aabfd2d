"""Stop training when a monitored quantity stops improving, diverges or is not finite."""

import enum
import math
import typing
import warnings

import keras
import numpy as np
from keras.src.utils import io_utils

from nnkit import _validation as v
from nnkit.callbacks._base import monitor_direction
from nnkit.callbacks._stateful import StatefulCallback

_MODES = ("auto", "min", "max")

#: Key of the numeric stop code (``StopReason.code``) written to the epoch logs.
LOG_KEY = "early_stopping_reason"


class StopReason(str, enum.Enum):
    """Why :class:`EarlyStopping` stopped training (a string enum with a numeric code).

    ``NOT_STOPPED`` (code 0): training was not stopped (yet).
    ``NO_IMPROVEMENT`` (1): no improvement for ``patience`` epochs.
    ``BASELINE_NOT_REACHED`` (2): as ``NO_IMPROVEMENT``, but no epoch ever
    improved on ``baseline``.
    ``NON_FINITE`` (3): the monitored value was NaN or infinite.
    ``DIVERGED`` (4): the monitored value was worse than ``divergence_threshold``.

    The values are the lower-case names, so ``StopReason("diverged")`` works
    and a reason compares equal to its string. ``code`` is the number that
    ``EarlyStopping`` writes to the epoch logs (logs must hold numbers).

    Example:
    >>> from nnkit.callbacks import StopReason
    >>> StopReason("non_finite") is StopReason.NON_FINITE, StopReason.NON_FINITE.code
    (True, 3)
    """

    NOT_STOPPED = "not_stopped"
    NO_IMPROVEMENT = "no_improvement"
    BASELINE_NOT_REACHED = "baseline_not_reached"
    NON_FINITE = "non_finite"
    DIVERGED = "diverged"

    @property
    def code(self):
        """The reason as a small int (0 for ``NOT_STOPPED``), for the epoch logs."""
        return list(StopReason).index(self)

    def __str__(self):
        return self.value


class StopDecision(typing.NamedTuple):
    """What :meth:`EarlyStopping.decide` concluded for one epoch.

    ``wait``, ``best``, ``best_epoch`` and ``smoothed`` are the state after
    this epoch; ``improved`` says whether ``best`` was updated (and so whether
    the best weights should be taken).
    """

    should_stop: bool
    reason: StopReason
    wait: int
    best: float | None
    best_epoch: int
    smoothed: float | None
    improved: bool


def _as_float32(value):
    with np.errstate(over="ignore"):
        return np.float32(value)


@keras.saving.register_keras_serializable(package="nnkit")
class EarlyStopping(StatefulCallback):
    """Stop training when a monitored quantity stops improving, diverges or is not finite.

    Use it where you would use ``keras.callbacks.EarlyStopping``: the first
    eight arguments are Keras's, in Keras's order, and give the same stop
    epochs on the same metric values (improvements are compared in float32,
    as Keras does). On top of that it stops at once on a NaN or infinite
    value, can stop when the value crosses a divergence threshold, can smooth
    a noisy metric, says why it stopped, and its state (``wait``, ``best``,
    best weights, ...) is saved and restored by
    ``nnkit.callbacks.BackupAndRestore``, so a resumed run stops at the same
    epoch as an uninterrupted one (keras-team/keras#14862).

    Rule, at the end of epoch ``t`` with monitored value ``x_t`` (``d`` is
    ``min_delta``, written for ``mode="min"``; ``"max"`` flips the signs):

    1. ``check_finite`` and ``x_t`` is NaN or ±inf: stop (``NON_FINITE``).
       This check applies from epoch 0, warm-up included.
    2. Epochs ``t < start_from_epoch`` and epochs without ``monitor`` in the
       logs are skipped (Keras warns about the latter).
    3. Smoothing (``α = smoothing``, counted over monitored epochs):
       ``s_t = α·s_{t-1} + (1−α)·x_t`` with ``s_0 = x_0``; without smoothing
       ``s_t = x_t``. Every later comparison uses ``s_t``.
    4. ``wait += 1`` (before the check, as in Keras).
    5. ``s_t > divergence_threshold``: stop (``DIVERGED``).
    6. ``s_t + d < best`` (or no ``best`` yet): ``best = s_t``,
       ``best_epoch = t``, and ``wait = 0`` unless a ``baseline`` is set
       and ``s_t + d < baseline`` fails.
    7. Otherwise, if ``wait >= patience`` and ``t > 0``: stop
       (``BASELINE_NOT_REACHED`` when a ``baseline`` was never beaten, else
       ``NO_IMPROVEMENT``).

    At the end of training, with ``restore_best_weights``, the weights of
    ``best_epoch`` are restored whether or not training stopped early.
    After a stop, ``stop_reason`` (a :class:`StopReason`), ``stop_message``
    (a sentence), ``stopped_epoch``, ``best`` and ``best_epoch`` describe it
    (epochs are 0-based; messages count from 1, as Keras's do). Every epoch
    end also writes ``logs["early_stopping_reason"] = stop_reason.code`` (0
    when not stopping), a number in every epoch, so ``History``,
    ``CSVLogger`` and ``TensorBoard`` keep aligned columns.

    Args:
        monitor: Name of the logged quantity to watch. Defaults to
            ``"val_loss"``.
        min_delta: Smallest change that counts as an improvement, ``>= 0``
            (Keras silently takes ``abs`` of a negative value; this raises).
            Defaults to ``0``.
        patience: Epochs without improvement before stopping, an int ``>= 0``.
            Defaults to ``0``.
        verbose: ``0`` is quiet; ``1`` prints the stop message and the restore
            of best weights at the end of training. Defaults to ``0``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (``"loss"`` is minimized,
            other names take the direction of the compiled metric of that
            name, as in Keras). Defaults to ``"auto"``.
        baseline: Value that must be beaten to reset the patience, or
            ``None``. Defaults to ``None``.
        restore_best_weights: Whether to restore the weights of the best epoch
            at the end of training. Defaults to ``False``.
        start_from_epoch: Warm-up epochs during which nothing is monitored
            (except non-finite values), an int ``>= 0``. Defaults to ``0``.
        check_finite: Stop at once on a NaN or infinite value. ``False``
            behaves exactly like Keras. Keyword-only. Defaults to ``True``.
        divergence_threshold: Stop when the (smoothed) value is worse than
            this, or ``None``. Keyword-only. Defaults to ``None``.
        smoothing: EMA factor ``α`` in ``[0, 1)`` applied before every
            decision, or ``None`` for none. Keyword-only. Defaults to ``None``.

    Raises:
        TypeError: If an argument has the wrong type (bools are not numbers,
            numbers are not bools).
        ValueError: If a number is out of range, NaN or inf, ``mode`` is not
            one of ``"auto"``, ``"min"``, ``"max"``, or (at the first epoch
            end) ``mode="auto"`` cannot infer the direction of ``monitor``.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.callbacks import EarlyStopping
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.1), loss="mse")
    >>> x, y = np.ones((8, 2)), np.zeros((8, 1))
    >>> stop = EarlyStopping("loss", min_delta=1.0, patience=1)
    >>> history = model.fit(x, y, batch_size=4, epochs=10, callbacks=[stop], verbose=0)
    >>> len(history.history["loss"]), stop.stop_reason, stop.stopped_epoch
    (2, <StopReason.NO_IMPROVEMENT: 'no_improvement'>, 1)

    References:
        Keras ``keras.callbacks.EarlyStopping``; PyTorch Lightning
        ``lightning.pytorch.callbacks.EarlyStopping`` (``check_finite``,
        ``divergence_threshold``, stop reasons); Prechelt, "Early Stopping —
        But When?" (1998).
    """

    def __init__(
        self,
        monitor="val_loss",
        min_delta=0,
        patience=0,
        verbose=0,
        mode="auto",
        baseline=None,
        restore_best_weights=False,
        start_from_epoch=0,
        *,
        check_finite=True,
        divergence_threshold=None,
        smoothing=None,
    ):
        super().__init__()
        self.monitor = v.check_str("monitor", monitor)
        self.min_delta = v.check_non_negative_number("min_delta", min_delta)
        self.patience = v.check_non_negative_int("patience", patience)
        self.verbose = v.check_non_negative_int("verbose", verbose)
        self.mode = v.check_one_of("mode", mode, _MODES)
        self.baseline = v.check_optional_number("baseline", baseline)
        self.restore_best_weights = v.check_bool("restore_best_weights", restore_best_weights)
        self.start_from_epoch = v.check_non_negative_int("start_from_epoch", start_from_epoch)
        self.check_finite = v.check_bool("check_finite", check_finite)
        self.divergence_threshold = v.check_optional_number(
            "divergence_threshold", divergence_threshold
        )
        self.smoothing = v.check_optional_number(
            "smoothing", smoothing, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self._reset_state()

    # -- state ------------------------------------------------------------------

    def _reset_state(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_epoch = 0
        self.best_weights = None
        self.smoothed = None  # s_t of the last monitored epoch
        self.stop_reason = StopReason.NOT_STOPPED
        self.stop_message = ""
        self._direction = None  # "min"/"max", inferred at the first epoch end

    def get_state(self):
        state = {
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "smoothed": self.smoothed,
            "stop_reason": self.stop_reason.value,
            "stop_message": self.stop_message,
        }
        if self.restore_best_weights:
            weights = self.best_weights
            state["best_weights"] = None if weights is None else [np.array(w) for w in weights]
        return state

    def set_state(self, state):
        v.check_instance("state", state, dict, "a dict returned by get_state()")
        try:
            self.wait = v.check_non_negative_int("state['wait']", state["wait"])
            self.stopped_epoch = v.check_non_negative_int(
                "state['stopped_epoch']", state["stopped_epoch"]
            )
            self.best_epoch = v.check_non_negative_int("state['best_epoch']", state["best_epoch"])
            self.best = None if state["best"] is None else float(state["best"])
            self.smoothed = None if state["smoothed"] is None else float(state["smoothed"])
            self.stop_reason = StopReason(state["stop_reason"])
            self.stop_message = v.check_str(
                "state['stop_message']", state["stop_message"], allow_empty=True
            )
        except KeyError as error:
            raise ValueError(
                f"EarlyStopping state lacks {error}; pass a dict returned by get_state(). "
                f"Received: state={state!r}"
            ) from None
        weights = state.get("best_weights")
        self.best_weights = None if weights is None else [np.array(w) for w in weights]

    # -- decision ---------------------------------------------------------------

    def _direction_now(self):
        if self._direction is not None:
            return self._direction
        return monitor_direction(self._model, self.monitor, self.mode, "EarlyStopping")

    def _improves(self, value, reference, direction):
        """Keras's ``_is_improvement``: ``value ∓ min_delta`` beats ``reference`` in float32."""
        if reference is None:
            return True
        if direction == "min":
            return bool(_as_float32(value + self.min_delta) < _as_float32(reference))
        return bool(_as_float32(value - self.min_delta) > _as_float32(reference))

    def decide(self, epoch, value):
        """Decide whether to stop after ``epoch`` given its monitored ``value``; no side effects.

        Args:
            epoch: The 0-based epoch that just ended.
            value: The monitored value at its end, or ``None`` when it was not
                logged.

        Returns:
            A :class:`StopDecision` ``(should_stop, reason, wait, best,
            best_epoch, smoothed, improved)``; the caller stores its state
            fields and stops training when ``should_stop``.
        """
        unchanged = StopDecision(
            False, StopReason.NOT_STOPPED, self.wait, self.best, self.best_epoch,
            self.smoothed, False,
        )  # fmt: skip
        if value is None:
            return unchanged
        value = float(value)
        if self.check_finite and not math.isfinite(value):
            return unchanged._replace(should_stop=True, reason=StopReason.NON_FINITE)
        if epoch < self.start_from_epoch:
            return unchanged
        direction = self._direction_now()
        smoothed = value
        if self.smoothing is not None and self.smoothed is not None:
            smoothed = self.smoothing * self.smoothed + (1.0 - self.smoothing) * value
        wait = self.wait + 1
        threshold = self.divergence_threshold
        if threshold is not None and (
            smoothed > threshold if direction == "min" else smoothed < threshold
        ):
            return StopDecision(
                True, StopReason.DIVERGED, wait, self.best, self.best_epoch, smoothed, False
            )
        if self._improves(smoothed, self.best, direction):
            if self.baseline is None or self._improves(smoothed, self.baseline, direction):
                wait = 0
            return StopDecision(
                False, StopReason.NOT_STOPPED, wait, smoothed, epoch, smoothed, True
            )
        if wait >= self.patience and epoch > 0:
            reason = StopReason.NO_IMPROVEMENT
            if self.baseline is not None and not self._improves(
                self.best, self.baseline, direction
            ):
                reason = StopReason.BASELINE_NOT_REACHED
            return StopDecision(True, reason, wait, self.best, self.best_epoch, smoothed, False)
        return StopDecision(
            False, StopReason.NOT_STOPPED, wait, self.best, self.best_epoch, smoothed, False
        )

    def _message(self, epoch, value, decision):
        def best():
            return f"best {decision.best:.6g} at epoch {decision.best_epoch + 1}"

        name = f"`{self.monitor}`" + (" (smoothed)" if self.smoothing is not None else "")
        if decision.reason is StopReason.NON_FINITE:
            detail = f"`{self.monitor}` is {value} (not finite)"
        elif decision.reason is StopReason.DIVERGED:
            detail = (
                f"{name} = {decision.smoothed:.6g} is worse than "
                f"divergence_threshold={self.divergence_threshold}"
            )
        elif decision.reason is StopReason.BASELINE_NOT_REACHED:
            detail = (
                f"{name} did not improve on baseline={self.baseline} in {decision.wait} "
                f"epoch(s) (patience={self.patience}); {best()}"
            )
        else:
            detail = (
                f"{name} did not improve by more than min_delta={self.min_delta} for "
                f"{decision.wait} epoch(s) (patience={self.patience}); {best()}"
            )
        return f"Epoch {epoch + 1}: early stopping ({decision.reason.value}): {detail}."

    # -- hooks ------------------------------------------------------------------

    def on_epoch_end(self, epoch, logs=None):
        if self._direction is None:
            # Like Keras: at the first epoch end, once the metrics are built.
            self._direction = monitor_direction(self.model, self.monitor, self.mode, "EarlyStopping")
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(
                f"Early stopping conditioned on metric `{self.monitor}` which is not "
                f"available. Available metrics are: {','.join(list((logs or {}).keys()))}",
                stacklevel=2,
            )
        decision = self.decide(epoch, value)
        self.wait = decision.wait
        self.best = decision.best
        self.best_epoch = decision.best_epoch
        self.smoothed = decision.smoothed
        if decision.improved and self.restore_best_weights:
            self.best_weights = self.model.get_weights()
        if decision.should_stop:
            self.stopped_epoch = epoch
            self.stop_reason = decision.reason
            self.stop_message = self._message(epoch, value, decision)
            self.model.stop_training = True
        if logs is not None and (decision.should_stop or LOG_KEY not in logs):
            logs[LOG_KEY] = decision.reason.code
        self._state_changed()

    def on_train_end(self, logs=None):
        if self.stop_reason is not StopReason.NOT_STOPPED and self.verbose > 0:
            io_utils.print_msg(self.stop_message)
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                io_utils.print_msg(
                    f"Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1}."
                )
            self.model.set_weights(self.best_weights)

    # -- config and copies ------------------------------------------------------

    def get_config(self):
        return {
            "monitor": self.monitor,
            "min_delta": self.min_delta,
            "patience": self.patience,
            "verbose": self.verbose,
            "mode": self.mode,
            "baseline": self.baseline,
            "restore_best_weights": self.restore_best_weights,
            "start_from_epoch": self.start_from_epoch,
            "check_finite": self.check_finite,
            "divergence_threshold": self.divergence_threshold,
            "smoothing": self.smoothing,
        }
