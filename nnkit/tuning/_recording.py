"""Record what keras-tuner drops: a tuner mixin that writes the study directory trial by trial.

keras-tuner keeps one number per trial (the best epoch's objective, averaged
over executions). ``RecordingMixin`` goes before a keras-tuner tuner class in
the bases (``class T(RecordingMixin, keras_tuner.RandomSearch)``) and writes,
through ``nnkit.tuning._study``:

* per execution: the per-epoch logs (``curves.csv``), the seed it ran with,
  its best epoch and the metrics there, its wall time;
* per trial: status (``completed``, ``stopped`` by the median rule,
  ``failed`` with a one-line message, ``infeasible`` with the reason when
  the tuner declared it so and never trained it: `mark_infeasible`), the
  active hyperparameters, the
  objective (mean over executions of the best-epoch value, keras-tuner's
  convention), wall time; then ``trials.csv`` is rebuilt.

It hooks only ``on_search_begin``, ``on_trial_begin``, ``on_trial_end`` and
the per-execution hooks of ``nnkit._keras.tuner.TunerHooks`` (which keras-tuner
calls once per execution, after Hyperband has set the epochs), so it works with
every keras-tuner ``Tuner`` subclass, on one machine or as a worker of a
distributed sweep (workers write their trials, the chief writes
``study.json`` and the final ``trials.csv``).
"""

import json
import math
import pathlib
import time
import warnings
import zlib

import keras
import keras_tuner
import numpy as np
from keras_tuner import errors
from keras_tuner.engine import trial as trial_module

from nnkit._keras.tuner import TunerHooks, failure_limit
from nnkit.callbacks import EarlyStopping, Reason
from nnkit.tuning import _study
from nnkit.tuning.median_stopping import MedianStopping

#: Logged keys that are not results: excluded from a run's ``best`` metrics
#: (they stay in ``curves.csv``).
NOT_METRICS = frozenset({"learning_rate", "lr", "early_stopping_reason"})
_HP_TYPES = {"Float": "float", "Int": "int", "Choice": "choice", "Boolean": "boolean"}


def execution_seed(seed, trial_id, execution):
    """The seed of one execution: a function of the sweep's seed, the trial and the execution.

    ``None`` when the sweep has no seed. The same on every worker, so a
    distributed or resumed sweep trains each execution exactly as a
    single-process one would.
    """
    if seed is None:
        return None
    trial_id = str(trial_id)
    key = int(trial_id) if trial_id.isdigit() else zlib.crc32(trial_id.encode("utf-8"))
    return int(np.random.SeedSequence([seed, key, execution]).generate_state(1)[0])


def hyperparameter_specs(hyperparameters):
    """``study.json`` specs of a ``keras_tuner.HyperParameters`` space (Hyperband's ``tuner/*`` left out)."""
    specs, seen = [], set()
    for hp in hyperparameters.space:
        if hp.name.startswith("tuner/") or hp.name in seen:
            continue
        seen.add(hp.name)
        kind = type(hp).__name__
        spec = {
            "name": hp.name,
            "conditions": [{"parent": c.name, "values": list(c.values)} for c in hp.conditions],
        }
        if kind in ("Float", "Int"):
            spec.update(type=_HP_TYPES[kind], min=hp.min_value, max=hp.max_value)
            spec.update(sampling=hp.sampling, default=hp.default)
        elif kind == "Choice":
            spec.update(type="choice", values=list(hp.values), default=hp.default)
        elif kind == "Boolean":
            spec.update(type="boolean", default=hp.default)
        else:  # Fixed
            spec.update(type="fixed", values=[hp.value], default=hp.value)
        specs.append(spec)
    return specs


class _RunRecorder(keras.callbacks.Callback):
    """Collects one execution's epoch logs as ``{key: [value per epoch]}``."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            column = self.history.setdefault(key, [None] * self.epochs)
            column.append(float(value))
        self.epochs += 1
        for column in self.history.values():
            if len(column) < self.epochs:
                column.append(None)


def _finite(value):
    return value is not None and math.isfinite(value)


class _Run:
    """One execution of a trial: its seed, curves, wall time and how it ended."""

    def __init__(self, seed):
        self.seed = seed
        self.recorder = _RunRecorder()
        self.wall_seconds = 0.0
        self.median_stopped = False

    def best(self, objective):
        """``(best_epoch, {metric: value})`` at the best epoch of ``objective``."""
        history = self.recorder.history
        values = history.get(objective.name, [])
        best_epoch = 0
        for epoch, value in enumerate(values):
            current = values[best_epoch]
            if _finite(value) and (not _finite(current) or objective.better_than(value, current)):
                best_epoch = epoch
        metrics = {
            key: column[best_epoch]
            for key, column in history.items()
            if key not in NOT_METRICS and best_epoch < len(column)
        }
        return best_epoch, metrics

    def divergence(self, objective, callbacks):
        """A message if the run diverged (a non-finite loss/objective, or EarlyStopping said so)."""
        for callback in callbacks:
            if isinstance(callback, EarlyStopping) and callback.stop_reason in (
                Reason.NON_FINITE,
                Reason.DIVERGED,
            ):
                return f"Diverged: {callback.stop_message}"
        for key in dict.fromkeys([objective.name, "loss"]):
            for epoch, value in enumerate(self.recorder.history.get(key, [])):
                if value is not None and not math.isfinite(value):
                    return f"Diverged: `{key}` was {value} at epoch {epoch + 1}."
        return None


def _one_line(message):
    """The last line of a traceback (``Type: text``), with the module path of the type cut."""
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1].strip()
    head, sep, text = last.partition(": ")
    if sep and " " not in head:
        return f"{head.rsplit('.', 1)[-1]}: {text}"
    return last


def _summary(error, limit=500):
    """``"Type: message"`` on one line (TensorFlow's messages span many), at most ``limit`` chars."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RecordingMixin(TunerHooks):
    """Tuner mixin that writes the nnkit study directory (see the module docstring).

    Args (keyword-only; the rest go to the keras-tuner tuner):
        study_dir: The study directory.
        tuner_kind: ``"random"``, ``"bayesian"``, ``"hyperband"``, ``"grid"`` or
            ``"custom"``, for ``study.json``.
        sweep_seed: The sweep's seed (``None``: executions are not seeded).
    """

    def __init__(self, *args, study_dir, tuner_kind="custom", sweep_seed=None, **kwargs):
        self.study_dir = str(study_dir)
        self.tuner_kind = tuner_kind
        self.sweep_seed = sweep_seed
        self._nnkit_runs = []
        self._nnkit_failure = None
        self._nnkit_infeasible = None
        self._nnkit_start = time.perf_counter()
        super().__init__(*args, **kwargs)

    # -- study.json -------------------------------------------------------------

    def write_study_json(self):
        """Write ``study.json`` from the oracle's space (keeps ``created`` of an earlier one)."""
        path = pathlib.Path(self.study_dir) / "study.json"
        created = None
        if path.exists():
            created = json.loads(path.read_text(encoding="utf-8")).get("created")
        objective = self.oracle.objective
        header = _study.study_header(
            hyperparameter_specs(self.oracle.get_space()),
            objective=objective.name,
            direction=objective.direction,
            tuner=self.tuner_kind,
            seed=self.sweep_seed,
            created=created,
        )
        _study.write_study_json(self.study_dir, header)

    def finish_study(self):
        """Rewrite ``study.json`` and ``trials.csv`` (the chief does it when the sweep ends)."""
        if not self.is_worker():
            self.write_study_json()
            _study.write_trials_csv(self.study_dir)

    # -- keras-tuner hooks ----------------------------------------------------------

    def on_search_begin(self):
        super().on_search_begin()
        if not self.is_worker():
            self.write_study_json()

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self._nnkit_runs = []
        self._nnkit_failure = None
        self._nnkit_infeasible = None
        self._nnkit_start = time.perf_counter()

    def mark_infeasible(self, reason):
        """Record the running trial as ``infeasible`` (never trained), ``reason`` as its message.

        For a tuner that refuses to train a proposal (a constraint such as
        ``max_params``) but must still end the trial with some score for the
        oracle: the study records no objective for it, not a failure.
        """
        self._nnkit_infeasible = str(reason)

    def around_build(self, hp, build):
        with warnings.catch_warnings():
            # Hyperband continues a trial from the best epoch of an earlier one by
            # loading its weights into a freshly compiled model: the optimizer's
            # slots are not restored (keras-tuner's behaviour), which Keras warns about.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = build()
        if isinstance(model, keras.Model) and not model.compiled:
            # keras-tuner would count it as a failed trial, print its traceback
            # and try again; every trial would fail the same way. A fatal
            # error ends the sweep at the first one.
            raise keras_tuner.errors.FatalTypeError(
                "`build(hp)` must return a compiled model: call model.compile(optimizer, "
                "loss, metrics=...) inside build before returning it. "
                f"Received: an uncompiled {type(model).__name__} named {model.name!r}."
            )
        return model

    def around_execution(self, trial, callbacks, fit):
        execution = len(self._nnkit_runs)
        run = _Run(execution_seed(self.sweep_seed, trial.trial_id, execution))
        self._nnkit_runs.append(run)
        for callback in callbacks:
            if isinstance(callback, MedianStopping):
                callback.run_key = f"{trial.trial_id}-{execution}"
        callbacks.append(run.recorder)
        if run.seed is not None:  # weights, dropout and shuffling of this execution
            keras.utils.set_random_seed(run.seed)
        start = time.perf_counter()
        try:
            results = fit()
        except Exception as error:
            self._nnkit_failure = _summary(error)
            raise
        finally:
            run.wall_seconds = time.perf_counter() - start
            run.median_stopped = any(
                isinstance(cb, MedianStopping) and cb.stopped for cb in callbacks
            )
        diverged = run.divergence(self.oracle.objective, callbacks)
        if diverged is not None:
            self._nnkit_failure = diverged
            raise errors.FailedTrialError(diverged)
        return results

    def on_trial_end(self, trial):
        self._record(trial)
        try:
            super().on_trial_end(trial)
        except Exception as error:  # RuntimeError; a gRPC error carrying it on a worker
            limit = failure_limit(error)
            if limit is None:
                raise
            raise RuntimeError(
                f"{limit} trials in a row failed (max_consecutive_failed_trials={limit}), so the "
                f"sweep stopped. The last one, trial {trial.trial_id}: "
                f"{self._failure_message(trial)} Every trial is recorded in "
                f"{pathlib.Path(self.study_dir) / 'trials.csv'}; fix the cause (or widen the "
                "limit) and run again with the same directory to resume."
            ) from error

    # -- the trial record -------------------------------------------------------------

    def _failure_message(self, trial):
        return self._nnkit_failure or _one_line(trial.message) or "failed (no message)"

    def _record(self, trial):
        objective = self.oracle.objective
        runs = self._nnkit_runs
        executions = []
        for run in runs:
            if not run.recorder.epochs:
                continue
            best_epoch, best = run.best(objective)
            executions.append(
                {
                    "seed": run.seed,
                    "best_epoch": best_epoch,
                    "best": best,
                    "wall_seconds": round(run.wall_seconds, 6),
                }
            )
        completed = trial.status == trial_module.TrialStatus.COMPLETED
        values = [e["best"].get(objective.name) for e in executions]
        if self._nnkit_infeasible is not None:
            status, score, message = "infeasible", None, self._nnkit_infeasible
        elif completed and values and all(_finite(x) for x in values):
            status = "stopped" if any(run.median_stopped for run in runs) else "completed"
            score, message = float(np.mean(values)), ""
        else:
            status, score = "failed", None
            message = self._failure_message(trial)
            if completed:  # e.g. a hypermodel whose fit returned no objective value
                message = f"No finite `{objective.name}` was logged."
        record = {
            "trial_id": trial.trial_id,
            "status": status,
            "message": message,
            "hyperparameters": {
                name: value
                for name, value in trial.hyperparameters.values.items()
                if not name.startswith("tuner/")
            },
            "executions": executions,
            "objective": score,
            "wall_seconds": round(time.perf_counter() - self._nnkit_start, 6),
        }
        has_header = (pathlib.Path(self.study_dir) / "study.json").exists()
        if not self.is_worker() and has_header:
            self.write_study_json()  # the space may have grown during the trial
        curves = [run.recorder.history for run in runs if run.recorder.epochs]
        _study.write_trial(self.study_dir, record, curves, update_csv=has_header)
