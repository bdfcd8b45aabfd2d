"""Stop a trial whose validation curve is worse than the median of finished trials."""

import json
import math
import pathlib
import uuid

import keras
import numpy as np

from nnkit import _io
from nnkit import _validation as v
from nnkit._messages import say
from nnkit.callbacks import Decision, MonitorCallback, Reason


def _best_so_far(values, direction):
    """Running best of a curve; NaN entries keep the previous best (NaN until one is finite)."""
    best, result = math.nan, []
    for value in values:
        if math.isfinite(value) and (
            math.isnan(best) or (value < best if direction == "min" else value > best)
        ):
            best = value
        result.append(best)
    return result


@keras.saving.register_keras_serializable(package="nnkit")
class MedianStopping(MonitorCallback):
    """Stop a trial whose validation curve is worse than the median of finished trials.

    Use it in a hyperparameter sweep (``tune(..., median_stopping=True)``
    adds one) to spend less time on configurations that are clearly behind:
    a trial whose best value so far is worse than what half of the finished
    trials had reached by the same epoch is stopped, while a trial at or
    above that median goes on. It works with any keras-tuner tuner (pass it
    in ``search(callbacks=[...])``): the runs share their curves through
    files in ``directory``, so the rule also holds across the workers of a
    distributed sweep (shared file system) and across a resumed one. The
    finished trials that set the median are the better ones, so the bar
    rises during a sweep and most trials end up stopped soon after
    ``warmup_epochs``: good for finding the best configuration cheaply,
    a bias for a sensitivity analysis (a stopped trial's objective is its
    early value).

    Rule (``mode="min"``; ``"max"`` flips the comparison): let ``b_t(e)`` be
    the best ``monitor`` value of this run up to epoch ``e`` (non-finite
    values skipped) and ``b_i(e)`` the same for every *reference* run ``i``,
    i.e. every earlier run that finished without being stopped by this rule
    and without a non-finite value, and that reached epoch ``e``. At the end
    of epoch ``e``, stop when

        e >= warmup_epochs,  n_e = #{i : run i reached e} >= min_trials,
        and  b_t(e) > median_i b_i(e).

    Epochs are Keras's (absolute, so a Hyperband continuation that starts
    at ``initial_epoch`` is compared at the right epochs). Each run's curve
    is written to ``directory/<run_key>.json`` at the end of training; the
    references are read at the start of training. A run stopped by the rule
    still counts as a trial with an objective (its best value so far);
    ``tune`` records it with status ``stopped``.

    Args:
        monitor: The logged quantity to compare. Defaults to ``"val_loss"``.
        min_trials: Reference runs that must have reached an epoch before
            anything is stopped there, an int ``>= 1``. Defaults to ``5``.
        warmup_epochs: Epochs at the start of every run that are never
            stopped, an int ``>= 0``. Defaults to ``2``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (losses are minimized,
            compiled metrics take their own direction). Defaults to ``"auto"``.
        directory: Folder that holds the runs' curves, shared by every run
            of the sweep, or ``None`` to let ``tune`` choose
            (``<study>/tuner/median_stopping``); training with ``None`` raises.
            Keyword-only. Defaults to ``None``.
        verbose: ``1`` prints a message when a run is stopped. Keyword-only.
            Defaults to ``0``.
        on_missing: ``"raise"`` or ``"warn"`` when ``monitor`` is not in
            the logs (see ``nnkit.callbacks.MonitorCallback``). Keyword-only.
            Defaults to ``"raise"``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``min_trials < 1``, ``warmup_epochs < 0``, ``mode`` is
            unknown, or (at the start of training) ``directory`` is ``None``.

    Example:
    >>> from nnkit.tuning import MedianStopping
    >>> rule = MedianStopping("val_loss", min_trials=3, warmup_epochs=1, mode="min")
    >>> references = [[0.9, 0.5, 0.4], [0.8, 0.6, 0.5], [1.0, 0.7, 0.3]]
    >>> decision = rule.decide(1, best=0.65, references=references)  # median of 0.5, 0.6, 0.7
    >>> decision.act, decision.reason, decision.reference, decision.count
    (True, <Reason.WORSE_THAN_MEDIAN: 'worse_than_median'>, 0.6, 3)
    >>> rule.decide(0, best=5.0, references=references).reason  # warm-up epoch
    <Reason.WARMUP: 'warmup'>

    References:
        Golovin et al., "Google Vizier: A Service for Black-Box
        Optimization", KDD 2017 (median stopping rule); Optuna
        ``MedianPruner``.
    """

    def __init__(
        self,
        monitor="val_loss",
        min_trials=5,
        warmup_epochs=2,
        mode="auto",
        *,
        directory=None,
        verbose=0,
        on_missing="raise",
    ):
        super().__init__(monitor, mode, on_missing=on_missing)
        self.min_trials = v.check_positive_int("min_trials", min_trials)
        self.warmup_epochs = v.check_non_negative_int("warmup_epochs", warmup_epochs)
        self.directory = v.check_optional_path("directory", directory)
        self.verbose = v.check_non_negative_int("verbose", verbose)
        #: Name of this run's curve file; ``tune`` sets it to ``<trial>-<execution>``
        #: so a retried run replaces its file. ``None``: a fresh id per run.
        self.run_key = None
        self._reset_state()

    # -- state ------------------------------------------------------------------

    def _reset_state(self):
        self.epochs = []  # epochs seen in this run (absolute)
        self.values = []  # monitored value at each of them
        self.stopped = False
        self.stopped_epoch = None
        self.stop_message = ""
        self._references = None  # best-so-far curves {epoch: value} of finished runs
        self._key = None

    def get_state(self):
        return {
            "epochs": list(self.epochs),
            "values": list(self.values),
            "stopped": self.stopped,
            "stopped_epoch": self.stopped_epoch,
            "stop_message": self.stop_message,
        }

    def set_state(self, state):
        v.check_instance("state", state, dict, "a dict returned by get_state()")
        try:
            self.epochs = [int(e) for e in state["epochs"]]
            self.values = [float(x) for x in state["values"]]
            self.stopped = v.check_bool("state['stopped']", state["stopped"])
            self.stopped_epoch = v.check_optional_int(
                "state['stopped_epoch']", state["stopped_epoch"]
            )
            self.stop_message = v.check_str(
                "state['stop_message']", state["stop_message"], allow_empty=True
            )
        except KeyError as error:
            raise ValueError(
                f"MedianStopping state lacks {error}; pass a dict returned by get_state(). "
                f"Received: state={state!r}"
            ) from None

    # -- decision ---------------------------------------------------------------

    def decide(self, epoch, best, references, direction=None):
        """Decide whether to stop after ``epoch``; no side effects.

        Args:
            epoch: The epoch that just ended.
            best: This run's best monitored value up to ``epoch`` (NaN or
                ``None`` when it has none yet: never stopped then).
            references: Best-so-far curves of the reference runs, each a
                ``{epoch: value}`` dict or a list indexed by epoch.
            direction: ``"min"`` or ``"max"``; ``None`` uses the callback's
                direction (``mode``, or the one inferred at the first epoch
                end).

        Returns:
            A ``nnkit.callbacks.Decision``: ``act`` (stop), ``reason``
            (``WORSE_THAN_MEDIAN``, ``WARMUP``, ``NOT_ENOUGH_REFERENCES``,
            ``MISSING`` without a finite ``best``, else ``WAITING``),
            ``value`` (``best``), ``reference`` (the median) and ``count``
            (the reference runs that reached ``epoch``).
        """
        direction = direction or self.direction
        if direction not in ("min", "max"):
            raise ValueError(
                f"decide() needs direction='min' or 'max' when mode='auto' and no epoch has "
                f"ended yet. Received: direction={direction!r}"
            )
        if epoch < self.warmup_epochs:
            return Decision(False, Reason.WARMUP, best)
        at_epoch = []
        for curve in references:
            if isinstance(curve, dict):
                value = curve.get(epoch)
            else:
                value = curve[epoch] if epoch < len(curve) else None
            if value is not None and math.isfinite(value):
                at_epoch.append(float(value))
        count = len(at_epoch)
        if count < self.min_trials:
            return Decision(False, Reason.NOT_ENOUGH_REFERENCES, best, count=count)
        median = float(np.median(at_epoch))
        if best is None or not math.isfinite(best):
            return Decision(False, Reason.MISSING, best, reference=median, count=count)
        worse = best > median if direction == "min" else best < median
        reason = Reason.WORSE_THAN_MEDIAN if worse else Reason.WAITING
        return Decision(bool(worse), reason, best, reference=median, count=count)

    # -- reference curves ---------------------------------------------------------

    def _folder(self):
        if self.directory is None:
            raise ValueError(
                "MedianStopping needs a `directory` shared by every run of the sweep to "
                "compare curves (nnkit.tuning.tune sets one). Received: directory=None"
            )
        return pathlib.Path(self.directory)

    def _load_references(self, direction):
        references = []
        folder = self._folder()
        if not folder.is_dir():
            return references
        for path in sorted(folder.glob("*.json")):
            if path.stem == self._key:
                continue
            try:
                run = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a file being replaced by another worker: skip it this time
            if run.get("monitor") != self.monitor:
                continue
            best = _best_so_far([float(x) for x in run["values"]], direction)
            references.append(dict(zip((int(e) for e in run["epochs"]), best, strict=True)))
        return references

    # -- hooks ------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._folder()
        self._key = self.run_key or uuid.uuid4().hex

    def on_epoch_end(self, epoch, logs=None):
        value = self.monitored_value(logs)
        if value is None or self.stopped:
            return
        direction = self.resolve_direction()  # like Keras: at the first epoch end
        if self._references is None:
            self._references = self._load_references(direction)
        self.epochs.append(int(epoch))
        self.values.append(value)
        best = _best_so_far(self.values, direction)[-1]
        decision = self.decide(epoch, best, self._references, direction)
        if decision.act:
            self.stopped = True
            self.stopped_epoch = int(epoch)
            self.stop_message = (
                f"Epoch {epoch + 1} (stopped_epoch={epoch}): median stopping: best "
                f"`{self.monitor}` so far {best:.6g} is worse than the median "
                f"{decision.reference:.6g} of {decision.count} finished runs at this epoch."
            )
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.check_monitor_was_logged()
        if self.stopped and self.verbose > 0:
            say(self.stop_message)
        finite = all(math.isfinite(x) for x in self.values)
        if self.stopped or not self.values or not finite:
            return  # only runs that finished normally are references
        payload = {"monitor": self.monitor, "epochs": self.epochs, "values": self.values}
        folder = self._folder()
        folder.mkdir(parents=True, exist_ok=True)
        _io.atomic_write(folder / f"{self._key}.json", json.dumps(payload))

    # -- config -----------------------------------------------------------------

    def get_config(self):
        return {
            "monitor": self.monitor,
            "min_trials": self.min_trials,
            "warmup_epochs": self.warmup_epochs,
            "mode": self.mode,
            "directory": self.directory,
            "verbose": self.verbose,
            "on_missing": self.on_missing,
        }
