"""Lower the learning rate when a metric stops improving, schedule or not."""

import keras
import numpy as np

from nnkit import _validation as v
from nnkit._keras import optimizer as keras_optimizer
from nnkit._messages import say
from nnkit.callbacks import _optimizer
from nnkit.callbacks.monitor import Decision, MonitorCallback, Reason
from nnkit.schedules import Scaled


def _figure(value):
    """A rate or factor with 4 significant digits (``0.004943``, ``0.5``, ``1e-05``)."""
    return f"{value:.4g}"


@keras.saving.register_keras_serializable(package="nnkit")
class ReduceLROnPlateau(MonitorCallback):
    """Reduce the learning rate when a metric has stopped improving, also under a schedule.

    Use it where you would use ``keras.callbacks.ReduceLROnPlateau``: it takes
    the same arguments and makes the same decisions on the same metric values
    (compared in float32, as Keras does). Keras's version raises ``TypeError``
    when the optimizer holds a ``LearningRateSchedule``; this one keeps the
    schedule's shape and lowers a factor in front of it. Its state (``wait``,
    ``cooldown_counter``, ``best`` and the factor or rate) is saved and
    restored by ``nnkit.callbacks.BackupAndRestore``.

    Rule: after ``patience`` epochs without an improvement of more than
    ``min_delta`` (and outside ``cooldown``), with ``η`` the rate the
    optimizer used at the last step of the epoch, if ``η > min_lr`` the rate
    becomes ``η' = max(η · factor, min_lr)``:

    * float learning rate: the optimizer's learning-rate variable is set to
      ``η'``, exactly as Keras does;
    * schedule ``s``: at ``on_train_begin`` the optimizer's schedule is
      wrapped once in ``nnkit.schedules.Scaled`` (an existing top-level
      ``Scaled`` is used as it is) and the training function is rebuilt so
      that it reads it. A reduction multiplies the factor by
      ``η' / η = max(factor, min_lr / η)``, so from then on the rate is
      ``scale · s(t)``. ``min_lr`` bounds what this callback does (it never
      takes the current rate below ``min_lr``), not the schedule, which may
      still decay further on its own.

    The factor is a ``keras.Variable`` read in-graph (no retracing, works with
    ``jit_compile=True``) and ``Scaled.get_config()`` records it, so a saved
    model keeps the reduced rate. Like Keras, the rate is not reset when a new
    ``fit`` starts, and ``logs["learning_rate"]`` is set to the rate used
    during the epoch (before any reduction), so ``History``, ``CSVLogger`` and
    ``TensorBoard`` later in the callback list record it. A
    ``LossScaleOptimizer`` is unwrapped. ``monitor_op``, ``wait``, ``best``
    and ``cooldown_counter`` have Keras's meaning. With ``verbose=1`` a
    reduction prints old → new values, e.g. "reducing the schedule scale
    1 → 0.5 (learning rate 0.009886 → 0.004943 at the last step)".

    Args:
        monitor: Name of the logged quantity to watch. Defaults to
            ``"val_loss"``.
        factor: Multiplier applied at a reduction, in ``(0, 1)``. Defaults to
            ``0.1``.
        patience: Epochs without improvement before a reduction, an int
            ``>= 0``. Defaults to ``10``.
        verbose: ``0`` is quiet, ``1`` prints a message at each reduction.
            Defaults to ``0``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (inferred from the metric's
            name, as in Keras). Defaults to ``"auto"``.
        min_delta: Smallest change that counts as an improvement, ``>= 0``.
            Defaults to ``1e-4``.
        cooldown: Epochs after a reduction during which patience is not
            counted, an int ``>= 0``. Defaults to ``0``.
        min_lr: Lower bound of the rate this callback sets, ``>= 0``.
            Defaults to ``0.0``.
        on_missing: ``"raise"`` or ``"warn"`` (Keras's behaviour) when
            ``monitor`` is not in the logs. Keyword-only. Defaults to
            ``"raise"``.

    Raises:
        TypeError: If an argument has the wrong type (bools are not numbers),
            or at ``on_train_begin`` if the optimizer's learning rate is a
            plain callable (neither a float nor a ``LearningRateSchedule``).
        ValueError: If ``factor`` is not in ``(0, 1)``, another argument is
            out of range, NaN or inf, ``mode`` is unknown; at the first epoch
            end, if ``monitor`` is not logged (``on_missing="raise"``) or
            ``mode="auto"`` cannot infer its direction.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.callbacks import ReduceLROnPlateau
    >>> from nnkit.schedules import CosineAnnealing
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> optimizer = keras.optimizers.SGD(CosineAnnealing(0.1, total_steps=100))
    >>> model.compile(optimizer, loss="mse")
    >>> x, y = np.ones((8, 2)), np.zeros((8, 1))
    >>> reduce = ReduceLROnPlateau("loss", factor=0.5, patience=1, min_delta=100.0)
    >>> _ = model.fit(x, y, batch_size=4, epochs=3, callbacks=[reduce], verbose=0)
    >>> model.optimizer.get_config()["learning_rate"]["config"]["scale"]
    0.25

    References:
        Keras ``keras.callbacks.ReduceLROnPlateau``; PyTorch
        ``torch.optim.lr_scheduler.ReduceLROnPlateau``.
    """

    _not_copied = ("_watched", "_scaled")  # attached by fit, as the model is

    def __init__(
        self,
        monitor="val_loss",
        factor=0.1,
        patience=10,
        verbose=0,
        mode="auto",
        min_delta=1e-4,
        cooldown=0,
        min_lr=0.0,
        *,
        on_missing="raise",
    ):
        super().__init__(monitor, mode, min_delta, on_missing=on_missing)
        self.factor = v.check_number(
            "factor", factor, minimum=0.0, min_inclusive=False, maximum=1.0, max_inclusive=False
        )
        self.patience = v.check_non_negative_int("patience", patience)
        self.verbose = v.check_non_negative_int("verbose", verbose)
        self.cooldown = v.check_non_negative_int("cooldown", cooldown)
        self.min_lr = v.check_non_negative_number("min_lr", min_lr)
        self._watched = None  # the (unwrapped) optimizer prepared at train begin
        self._scaled = None  # its Scaled learning rate, or None for a float rate
        self._pending = None  # {"scale": ..., "learning_rate": ...} from set_state
        self._reset_state()

    # -- state ------------------------------------------------------------------

    def _reset_state(self):
        self.wait = 0
        self.cooldown_counter = 0
        self.best = None

    def get_state(self):
        scale = learning_rate = None
        if self._watched is not None:
            if self._scaled is not None:
                scale = _optimizer.scale_of(self._scaled)
            else:
                learning_rate = _optimizer.rate_state(self._watched)
        elif self._pending is not None:
            scale, learning_rate = self._pending["scale"], self._pending["learning_rate"]
        return {
            "wait": self.wait,
            "cooldown_counter": self.cooldown_counter,
            "best": self.best,
            "scale": scale,
            "learning_rate": learning_rate,
        }

    def set_state(self, state):
        self.wait = v.check_non_negative_int("state['wait']", state["wait"])
        self.cooldown_counter = v.check_non_negative_int(
            "state['cooldown_counter']", state["cooldown_counter"]
        )
        best = state["best"]
        self.best = None if best is None else float(best)
        self._pending = {
            "scale": v.check_optional_number("state['scale']", state.get("scale"), minimum=0.0),
            "learning_rate": v.check_optional_number(
                "state['learning_rate']", state.get("learning_rate"), minimum=0.0
            ),
        }
        if self._watched is not None:
            self._apply_pending()

    def _apply_pending(self):
        pending, self._pending = self._pending, None
        if pending is None:
            return
        scale, learning_rate = pending["scale"], pending["learning_rate"]
        if self._scaled is not None and scale is not None:
            self._scaled.set_scale(scale)
        elif self._scaled is None and learning_rate is not None:
            self._watched.learning_rate = learning_rate
        elif scale is not None or learning_rate is not None:
            held = "a schedule" if self._scaled is not None else "a float learning rate"
            raise ValueError(
                f"Cannot restore ReduceLROnPlateau state into an optimizer that holds {held}: "
                f"the state was saved with the other kind. Received: state={pending!r}"
            )

    # -- decision ---------------------------------------------------------------

    def decide(self, current, learning_rate):
        """Decide what to do after an epoch; has no side effects.

        Args:
            current: The monitored value at the end of the epoch.
            learning_rate: The rate used during the epoch (``η``).

        Returns:
            A ``Decision``: ``act`` (reduce the rate to
            ``max(η · factor, min_lr)``), ``reason`` (``IMPROVED``,
            ``COOLDOWN``, ``WAITING``, ``NO_IMPROVEMENT`` when reducing,
            ``AT_MIN_LR`` when patience ran out at ``min_lr``), and the state
            after this epoch in ``wait``, ``cooldown`` (the cooldown counter)
            and ``best``; the caller stores it and applies the reduction.
        """
        wait, cooldown_counter, best = self.wait, self.cooldown_counter, self.best
        if cooldown_counter > 0:
            cooldown_counter -= 1
            wait = 0

        def decision(act, reason, wait, best=best, cooldown=cooldown_counter):
            return Decision(act, reason, current, best, wait=wait, cooldown=cooldown)

        if self.is_improvement(current, best):
            return Decision(
                False, Reason.IMPROVED, current, current, improved=True, cooldown=cooldown_counter
            )
        if cooldown_counter > 0:
            return decision(False, Reason.COOLDOWN, wait)
        wait += 1
        if wait < self.patience:
            return decision(False, Reason.WAITING, wait)
        if not learning_rate > np.float32(self.min_lr):
            return decision(False, Reason.AT_MIN_LR, wait)
        return decision(True, Reason.NO_IMPROVEMENT, 0, cooldown=self.cooldown)

    def reduced_rate(self, learning_rate):
        """``(new rate, multiplier)`` of a reduction from ``learning_rate``."""
        return max(learning_rate * self.factor, self.min_lr), max(
            self.factor, self.min_lr / learning_rate
        )

    # -- hooks ------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        # Forget the optimizer of an earlier fit first: a state restored while
        # attaching (super()) must wait for this run's optimizer.
        self._watched = self._scaled = None
        super().on_train_begin(logs)
        self._prepare()
        self._apply_pending()

    def _prepare(self):
        """Find the optimizer and make its rate reducible (wrap a schedule in ``Scaled``)."""
        optimizer = _optimizer.unwrap(self.model.optimizer)
        learning_rate = keras_optimizer.learning_rate_object(optimizer)
        scaled = None
        if isinstance(learning_rate, Scaled):
            scaled = learning_rate
        elif isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            strategy = getattr(self.model, "distribute_strategy", None)
            if strategy is not None:
                with strategy.scope():
                    scaled = Scaled(learning_rate)
            else:
                scaled = Scaled(learning_rate)
            optimizer.learning_rate = scaled
            # `fit` built (and may have traced, in an earlier `fit`) the train
            # function before `on_train_begin`; rebuild it so it reads `scaled`.
            self.model.make_train_function(force=True)
        elif callable(learning_rate):
            raise TypeError(
                "ReduceLROnPlateau needs an optimizer whose learning rate is a float or a "
                "keras.optimizers.schedules.LearningRateSchedule, not a plain callable. "
                f"Received: learning_rate={learning_rate!r}"
            )
        self._watched, self._scaled = optimizer, scaled

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            logs = {}
        if self._watched is None:  # hooks driven without on_train_begin
            self._prepare()
        # Its own reading, not undone by a change it recorded at this step count.
        raw, learning_rate = _optimizer.last_used_rate(self._watched, before_change=False)
        logs["learning_rate"] = learning_rate
        current = self.monitored_value(logs)
        if current is None:
            return
        self.resolve_direction()
        decision = self.decide(current, learning_rate)
        self.wait = decision.wait
        self.cooldown_counter = decision.cooldown
        self.best = decision.best
        if decision.act:
            self._reduce(epoch, raw, learning_rate)

    def on_train_end(self, logs=None):
        self.check_monitor_was_logged()

    def _reduce(self, epoch, raw, learning_rate):
        new_rate, multiplier = self.reduced_rate(learning_rate)
        _optimizer.record_change(self._watched, raw, _optimizer.rate_state(self._watched))
        rate = f"learning rate {_figure(learning_rate)} → {_figure(new_rate)}"
        if self._scaled is None:
            self._watched.learning_rate = new_rate
            message = rate
        else:
            old = _optimizer.scale_of(self._scaled)
            self._scaled.set_scale(old * multiplier)
            message = (
                f"schedule scale {_figure(old)} → {_figure(old * multiplier)} ({rate} "
                "at the last step)"
            )
        if self.verbose > 0:
            say(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing the {message}.")

    # -- config and copies ------------------------------------------------------

    def get_config(self):
        return {
            "monitor": self.monitor,
            "factor": self.factor,
            "patience": self.patience,
            "verbose": self.verbose,
            "mode": self.mode,
            "min_delta": self.min_delta,
            "cooldown": self.cooldown,
            "min_lr": self.min_lr,
            "on_missing": self.on_missing,
        }
