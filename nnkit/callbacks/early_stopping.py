"""Stop training when a monitored quantity stops improving, diverges or is not finite."""

import math

import keras
import numpy as np

from nnkit import _validation as v
from nnkit._arrays import quiet_keras_numpy2
from nnkit._messages import say
from nnkit.callbacks.monitor import Decision, MonitorCallback, Reason

#: ``EarlyStopping.stop_reason`` values: the name under which nnkit first
#: published them (``StopReason.NON_FINITE`` is ``Reason.NON_FINITE``).
StopReason = Reason


@keras.saving.register_keras_serializable(package="nnkit")
class EarlyStopping(MonitorCallback):
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
    2. Epochs ``t < start_from_epoch`` are skipped. An epoch without
       ``monitor`` in its logs raises (see below); with ``on_missing="warn"``
       it is skipped with Keras's warning.
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
    After a stop, ``stop_reason`` (a ``Reason``), ``stop_message``
    (a sentence), ``stopped_epoch``, ``best`` and ``best_epoch`` describe it.
    The attributes count epochs from 0, as ``fit``'s ``epoch`` argument
    does; messages count from 1, as Keras's progress bar does, and give the
    attribute beside it: "epoch 6 (best_epoch=5)". Nothing is added to the
    epoch logs. ``monitor_op``, ``wait``, ``best``, ``best_weights``,
    ``best_epoch`` and ``stopped_epoch`` have Keras's meaning.

    A ``monitor`` that is not in the logs raises a ``ValueError`` naming it
    and the logged keys at the first epoch end (``on_missing="warn"`` gives
    Keras's warning instead); see ``MonitorCallback``.

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
        on_missing: ``"raise"`` or ``"warn"`` (Keras's behaviour) when
            ``monitor`` is not in the logs. Keyword-only. Defaults to
            ``"raise"``.

    Raises:
        TypeError: If an argument has the wrong type (bools are not numbers,
            numbers are not bools).
        ValueError: If a number is out of range, NaN or inf, ``mode`` is not
            one of ``"auto"``, ``"min"``, ``"max"``; at the first epoch end,
            if ``monitor`` is not logged (``on_missing="raise"``) or
            ``mode="auto"`` cannot infer its direction.

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
    (2, <Reason.NO_IMPROVEMENT: 'no_improvement'>, 1)
    >>> stop.stop_message.split(":")[0]
    'Epoch 2 (stopped_epoch=1)'


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
        on_missing="raise",
    ):
        super().__init__(monitor, mode, min_delta, on_missing=on_missing)
        self.patience = v.check_non_negative_int("patience", patience)
        self.verbose = v.check_non_negative_int("verbose", verbose)
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
        self.stop_reason = Reason.NOT_STOPPED
        self.stop_message = ""

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
            self.stop_reason = Reason(state["stop_reason"])
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

    def decide(self, epoch, value):
        """Decide whether to stop after ``epoch`` given its monitored ``value``; no side effects.

        Args:
            epoch: The 0-based epoch that just ended.
            value: The monitored value at its end, or ``None`` when it was not
                logged.

        Returns:
            A ``Decision``: ``act`` (stop), ``reason``, and the state
            after this epoch in ``wait``, ``best``, ``best_epoch``, ``value``
            (the smoothed value) and ``improved`` (take the best weights);
            the caller stores it and stops training when ``act``.
        """

        def unchanged(reason, *, act=False, value=self.smoothed, wait=self.wait):
            return Decision(act, reason, value, self.best, self.best_epoch, wait)

        if value is None:
            return unchanged(Reason.MISSING)
        value = float(value)
        if self.check_finite and not math.isfinite(value):
            return unchanged(Reason.NON_FINITE, act=True)
        if epoch < self.start_from_epoch:
            return unchanged(Reason.WARMUP)
        direction = self.resolve_direction()
        smoothed = value
        if self.smoothing is not None and self.smoothed is not None:
            smoothed = self.smoothing * self.smoothed + (1.0 - self.smoothing) * value
        wait = self.wait + 1
        threshold = self.divergence_threshold
        if threshold is not None and (
            smoothed > threshold if direction == "min" else smoothed < threshold
        ):
            return unchanged(Reason.DIVERGED, act=True, value=smoothed, wait=wait)
        if self.is_improvement(smoothed, self.best):
            if self.baseline is None or self.is_improvement(smoothed, self.baseline):
                wait = 0
            return Decision(False, Reason.IMPROVED, smoothed, smoothed, epoch, wait, True)
        if wait >= self.patience and epoch > 0:
            reason = Reason.NO_IMPROVEMENT
            if self.baseline is not None and not self.is_improvement(self.best, self.baseline):
                reason = Reason.BASELINE_NOT_REACHED
            return unchanged(reason, act=True, value=smoothed, wait=wait)
        return unchanged(Reason.WAITING, value=smoothed, wait=wait)

    def _message(self, epoch, value, decision):
        def best():
            return (
                f"best {decision.best:.6g} at epoch {decision.best_epoch + 1} "
                f"(best_epoch={decision.best_epoch})"
            )

        name = f"`{self.monitor}`" + (" (smoothed)" if self.smoothing is not None else "")
        if decision.reason is Reason.NON_FINITE:
            detail = f"`{self.monitor}` is {value} (not finite)"
        elif decision.reason is Reason.DIVERGED:
            detail = (
                f"{name} = {decision.value:.6g} is worse than "
                f"divergence_threshold={self.divergence_threshold}"
            )
        elif decision.reason is Reason.BASELINE_NOT_REACHED:
            detail = (
                f"{name} did not improve on baseline={self.baseline} in {decision.wait} "
                f"epoch(s) (patience={self.patience}); {best()}"
            )
        else:
            detail = (
                f"{name} did not improve by more than min_delta={self.min_delta} for "
                f"{decision.wait} epoch(s) (patience={self.patience}); {best()}"
            )
        return (
            f"Epoch {epoch + 1} (stopped_epoch={epoch}): early stopping "
            f"({decision.reason.value}): {detail}."
        )

    # -- hooks ------------------------------------------------------------------

    def on_epoch_end(self, epoch, logs=None):
        value = self.monitored_value(logs)
        if value is not None:
            self.resolve_direction()  # like Keras: at the first epoch end, metrics built
        decision = self.decide(epoch, value)
        self.wait = decision.wait
        self.best = decision.best
        self.best_epoch = decision.best_epoch
        self.smoothed = decision.value
        if decision.improved and self.restore_best_weights:
            with quiet_keras_numpy2():  # Keras's conversion warns under numpy 2 (JAX)
                self.best_weights = self.model.get_weights()
        if decision.act:
            self.stopped_epoch = epoch
            self.stop_reason = decision.reason
            self.stop_message = self._message(epoch, value, decision)
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.check_monitor_was_logged()
        if self.stop_reason is not Reason.NOT_STOPPED and self.verbose > 0:
            say(self.stop_message)
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                say(
                    f"Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1} (best_epoch={self.best_epoch})."
                )
            with quiet_keras_numpy2():
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
            "on_missing": self.on_missing,
        }
