"""Real training: a searcher as a keras-tuner oracle, recorded like every nnkit sweep.

``search_architectures`` trains the proposals of any searcher of
``nnkit.search`` (or keras-tuner's own Bayesian optimization or Hyperband)
with keras-tuner, through ``nnkit.tuning``'s recording: the study directory
gets ``trials.csv``, each trial's per-epoch curves, seed and wall time, and a
killed search resumes from it (run again with the same directory). The
searchers' ``(architecture, epochs)`` proposals reach keras-tuner as
``SearcherOracle.populate_space`` values, the epochs under ``tuner/epochs``
as Hyperband's do.

On resume the searcher replays the journal of its asks and tells kept in
the oracle's state (``SearcherOracle``), so its state, generator included,
is the one it had when the search was killed; keras-tuner retries the trials
that were running. (A study written before the journal existed is rebuilt
from its completed trials instead, not bit-identically.)
"""

import copy
import json
import pathlib

import keras
import keras_tuner
import numpy as np

from nnkit import _io
from nnkit import _validation as v
from nnkit.search.asynchronous import replay
from nnkit.search.constraints import check_limits, violation
from nnkit.search.cost import measure_cost
from nnkit.search.searchers import SEARCHERS, make_searcher
from nnkit.search.simulate import ALL_SEARCHERS
from nnkit.search.space import ArchitectureSpace
from nnkit.tuning import _study_format as study_format
from nnkit.tuning._recording import RecordingMixin
from nnkit.tuning.median_stopping import MedianStopping

_EPOCHS = "tuner/epochs"
_EPOCHS_RUN = "search/epochs_run"


class SearcherOracle(keras_tuner.Oracle):
    """A keras-tuner oracle that asks an nnkit searcher (ask/tell) for each trial.

    Its asks and tells are journaled in the oracle's state (saved by
    keras-tuner after each trial starts and ends), so a resumed search replays
    them into the fresh searcher (``nnkit.search.asynchronous.replay``): the
    searcher's state is the one it had, and a trial that was running when
    the search was killed (keras-tuner retries it) is told when it ends. In
    keras-tuner's distributed mode the chief's oracle serializes the workers'
    asks and tells. A trial stopped early (``MedianStopping``) is told with
    the epochs it ran (the tuner reports them as the metric
    ``search/epochs_run``).
    """

    def __init__(self, searcher, **kwargs):
        super().__init__(**kwargs)
        self.searcher = searcher
        self.pending = {}
        self.events = []

    def populate_space(self, trial_id):
        proposal = self.searcher.ask()
        if proposal is None:
            return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}
        arch, epochs = proposal
        self.pending[trial_id] = (arch, epochs)
        self.events.append({"ask": trial_id, "arch": arch, "epochs": int(epochs)})
        return {
            "status": keras_tuner.engine.trial.TrialStatus.RUNNING,
            "values": {**arch, _EPOCHS: int(epochs)},
        }

    def _score(self, trial):
        score = trial.score
        if score is None or not np.isfinite(score):
            return -np.inf
        return float(score) if self.objective.direction == "max" else -float(score)

    def _epochs_run(self, trial):
        if not trial.metrics.exists(_EPOCHS_RUN):
            return None
        return int(trial.metrics.get_last_value(_EPOCHS_RUN))

    def _tell(self, trial):
        arch, epochs = self.pending.pop(trial.trial_id, (None, None))
        if arch is None:
            return
        epochs_run = self._epochs_run(trial)
        event = {"tell": trial.trial_id, "score": self._score(trial)}
        if epochs_run is not None and epochs_run < epochs:
            event["epochs_run"] = epochs_run
        self.searcher.tell(arch, epochs, event["score"], epochs_run=event.get("epochs_run"))
        self.events.append(event)

    @keras_tuner.synchronized  # the tell too, under the lock of the workers' asks
    def end_trial(self, trial):
        result = super().end_trial(trial)
        ended = self.trials[trial.trial_id]
        if ended.status != keras_tuner.engine.trial.TrialStatus.INVALID:  # else retried
            self._tell(ended)
            self.save()
        return result

    def _budget(self, trial):
        if trial.status != keras_tuner.engine.trial.TrialStatus.COMPLETED:
            return -1
        epochs = trial.hyperparameters.values.get(_EPOCHS, self.searcher.max_epochs)
        return self.searcher.budget(int(epochs), self._epochs_run(trial))

    def get_best_trials(self, num_trials=1):
        """The best trials at the highest budget first, by score within a budget.

        keras-tuner ranks every completed trial by score alone, so ASHA's
        best would often be a lucky one-epoch result of its lowest rung. Here
        a trial ranks by the budget its result counts at (the epochs trained;
        ASHA's rung, for a trial stopped early the rung it reached), then by
        keras-tuner's score order: the best architecture reported is the best
        one trained at the top rung reached. Full-budget searchers are ranked
        as keras-tuner ranks them.
        """
        ranked = super().get_best_trials(len(self.trials))  # by score, completed first
        return sorted(ranked, key=lambda trial: -self._budget(trial))[:num_trials]

    def get_state(self):
        state = super().get_state()
        state["nnkit_searcher_events"] = list(self.events)
        return state

    def set_state(self, state):
        super().set_state(state)
        space = self.searcher.space
        events = state.get("nnkit_searcher_events")
        if events is not None:
            asked, pending = replay(self.searcher, events)
            self.events = list(events)
            self.pending = {trial_id: asked[trial_id] for trial_id in pending}
            for trial_id in pending:  # ended after its last save: tell it now
                trial = self.trials.get(trial_id)
                if (
                    trial is not None
                    and trial.status == keras_tuner.engine.trial.TrialStatus.COMPLETED
                ):
                    self._tell(trial)
            return
        for trial_id in self.start_order:  # a study from before the journal
            trial = self.trials[trial_id]
            if trial.status != keras_tuner.engine.trial.TrialStatus.COMPLETED:
                continue
            values = trial.hyperparameters.values
            arch = space.from_values(values)
            self.searcher.seen.add(space.key(arch))
            self.searcher.tell(arch, int(values.get(_EPOCHS, 1)), self._score(trial))


class _Tuner(RecordingMixin, keras_tuner.Tuner):
    """keras-tuner's ``Tuner`` with nnkit's study directory; trains ``tuner/epochs`` epochs.

    Each trial's cost goes to ``trials/<id>/cost.json``: the architecture, its
    parameters, FLOPs per example (and their source), measured latency and the
    epochs it trained. Architectures over a cost limit are listed with their
    reason in ``rejected.json``.
    """

    def on_trial_end(self, trial):
        space = self.hypermodel.space
        values = trial.hyperparameters.values
        arch = space.from_values(values)
        cost = {
            "architecture": arch,
            **self.hypermodel.cost(arch),
            "epochs": int(values.get(_EPOCHS, 0)) or None,
        }
        path = study_format.trial_dir(self.study_dir, trial.trial_id) / "cost.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        _io.atomic_write(path, json.dumps(cost, sort_keys=True))
        self.write_rejected()
        super().on_trial_end(trial)

    def write_rejected(self):
        """Merge the rejected architectures into ``rejected.json`` (one entry per architecture)."""
        searcher = getattr(self.oracle, "searcher", None)
        found = list(getattr(searcher, "rejected", [])) + self.hypermodel.rejected
        if not found:
            return
        path = pathlib.Path(self.study_dir) / "rejected.json"
        known = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
        keys = {json.dumps(entry["arch"], sort_keys=True) for entry in known}
        for entry in found:
            if json.dumps(entry["arch"], sort_keys=True) not in keys:
                keys.add(json.dumps(entry["arch"], sort_keys=True))
                known.append(entry)
        _io.atomic_write(path, json.dumps(known, sort_keys=True))

    def around_execution(self, trial, callbacks, fit):
        history = super().around_execution(trial, callbacks, fit)
        if isinstance(history, keras.callbacks.History) and history.epoch:
            # The epochs it ran (fewer when stopped early) reach the oracle, also
            # the chief's of a distributed search, as one more reported metric.
            history.history[_EPOCHS_RUN] = [len(history.epoch)] * len(history.epoch)
        return history

    def run_trial(self, trial, *args, **kwargs):
        values = trial.hyperparameters.values
        limits = self.hypermodel.limits
        if limits and self.tuner_kind in ("bayesian", "hyperband"):
            # keras-tuner's own oracles cannot be asked again: never trained, worst
            # score, recorded as infeasible. (The kind, not the oracle's class: a
            # distributed worker's oracle is keras-tuner's client of the chief's.)
            arch = self.hypermodel.space.from_values(values)
            reason = violation(self.hypermodel.cost(arch), limits)
            if reason is not None:
                self.hypermodel.rejected.append(
                    {"arch": arch, "reason": reason, "cost": self.hypermodel.cost(arch)}
                )
                self.mark_infeasible(f"Never trained: {reason}.")
                return {self.oracle.objective.name: 0.0}
        if _EPOCHS in values:
            # From scratch (no weights carried between rungs, as on the table).
            kwargs["epochs"] = values[_EPOCHS]
        return super().run_trial(trial, *args, **kwargs)


class _HyperModel(keras_tuner.HyperModel):
    def __init__(self, space, input_shape, num_classes, learning_rate, limits=None):
        super().__init__(name=space.name)
        self.space = space
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.learning_rate = learning_rate
        self.limits = dict(limits or {})
        self.costs = {}
        self.rejected = []  # keras-tuner oracles' proposals over a limit

    def cost(self, arch):
        """Parameters, FLOPs and latency of ``arch``'s untrained model (measured once)."""
        key = self.space.key(arch)
        if key not in self.costs:
            model = self.space.build(arch, self.input_shape, self.num_classes)
            self.costs[key] = measure_cost(model)
        return dict(self.costs[key])

    def build(self, hp):
        arch = self.space.sample(hp)
        model = self.space.build(arch, self.input_shape, self.num_classes)
        model.compile(
            optimizer=keras.optimizers.Adam(self.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model


def _callbacks(callbacks, directory):
    callbacks = list(v.check_sequence("callbacks", callbacks or [], "a list of Keras callbacks"))
    for i, callback in enumerate(callbacks):
        v.check_instance(f"callbacks[{i}]", callback, keras.callbacks.Callback, "a Keras callback")
        if isinstance(callback, MedianStopping) and callback.directory is None:
            callbacks[i] = copy.deepcopy(callback)
            callbacks[i].directory = str(pathlib.Path(directory) / "tuner" / "median_stopping")
    return callbacks


def search_architectures(
    space,
    x,
    y,
    *,
    validation_data,
    directory,
    searcher="evolution",
    max_trials=20,
    epochs=10,
    seed=0,
    cost="params",
    max_params=None,
    max_flops=None,
    max_latency_ms=None,
    callbacks=None,
):
    """Search ``space`` by training each proposal (classification, integer labels).

    Each trial builds ``space``'s model for the proposed architecture, trains
    it with Adam (``3e-3``) on sparse categorical cross-entropy for the
    proposed epochs (``epochs`` for the full-budget searchers, a rung of ASHA
    or of Hyperband otherwise) and scores it by ``val_accuracy`` (best epoch).
    The study directory is ``nnkit.tuning``'s (``trials.csv``, per-trial
    curves and seeds) plus ``trials/<id>/cost.json`` (parameters, FLOPs and
    ``flops_source``, latency in ms with its spread, measured on the untrained
    model before training; epochs); run again with the same ``directory`` to
    resume. An architecture over ``max_params`` / ``max_flops`` /
    ``max_latency_ms`` is never trained: it is listed with its reason in
    ``rejected.json`` and the searcher is asked again (keras-tuner's oracles
    get accuracy 0 for it instead; ``trials.csv`` shows it as ``infeasible``).

    Args:
        space: An `ArchitectureSpace`. Required.
        x: Training inputs, an array. Required.
        y: Integer class labels. Required.
        validation_data: ``(x_val, y_val)``. Required.
        directory: The study directory. Required.
        searcher: ``"random"``, ``"evolution"``, ``"local"``, ``"asha"``,
            ``"bayesian"`` or ``"hyperband"``. Defaults to ``"evolution"``.
        max_trials: Trainings to run, an int ``>= 1``. Defaults to ``20``.
        epochs: The full budget in epochs, an int ``>= 1``. Defaults to ``10``.
        seed: Seed of the searcher and of every trial. Defaults to ``0``.
        cost: The cost ``"pareto_evolution"`` trades accuracy against:
            ``"params"``, ``"flops"`` or ``"latency_ms"``. Defaults to ``"params"``.
        max_params: Parameter limit, or ``None``. Defaults to ``None``.
        max_flops: FLOPs-per-example limit, or ``None``. Defaults to ``None``.
        max_latency_ms: Latency limit (median ms per batch of 32), or ``None``.
            Defaults to ``None``.
        callbacks: Keras callbacks for every trial, e.g.
            ``nnkit.tuning.MedianStopping("val_accuracy", mode="max")`` (its
            ``directory`` defaults to ``<directory>/tuner/median_stopping``,
            shared by the workers of a distributed search); a trial it stops
            is told to the searcher with the epochs it ran (ASHA records it at
            the rung it reached). Defaults to ``None``.

    Returns:
        The keras-tuner tuner after the search (``tuner.study_dir``,
        ``tuner.oracle.get_best_trials()``).

    Example:
    >>> import tempfile, numpy as np
    >>> from nnkit.search import residual_mlp_space, search_architectures
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 4)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int32")
    >>> space = residual_mlp_space(stages=(1,), depths=(1,), widths=(4, 8))
    >>> tuner = search_architectures(space, x, y, validation_data=(x, y), max_trials=2,
    ...                              epochs=1, searcher="random", directory=tempfile.mkdtemp())
    >>> len(tuner.oracle.trials)
    2
    """
    if not isinstance(space, ArchitectureSpace):
        raise TypeError(
            f"`space` must be a nnkit.search.ArchitectureSpace. Received: space={space!r}"
        )
    name = v.check_one_of("searcher", searcher, ALL_SEARCHERS)
    max_trials = v.check_positive_int("max_trials", max_trials)
    epochs = v.check_positive_int("epochs", epochs)
    seed = v.check_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
    directory = v.check_path("directory", directory)
    x = np.asarray(v.check_array("x", x, min_ndim=2))
    y = np.asarray(v.check_array("y", y, min_ndim=1))
    if (
        not isinstance(validation_data, (tuple, list))
        or len(validation_data) != 2
        or any(getattr(part, "shape", None) is None for part in validation_data)
    ):
        raise ValueError(
            "`validation_data` must be a pair of arrays (x_val, y_val). "
            f"Received: validation_data={validation_data!r}"
        )
    if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError(
            "`y` must hold one non-negative integer class label per example of `x`. "
            f"Received: y={y!r}"
        )
    cost = v.check_one_of("cost", cost, ("params", "flops", "latency_ms"))
    limits = check_limits(max_params=max_params, max_flops=max_flops, max_latency_ms=max_latency_ms)
    callbacks = _callbacks(callbacks, directory)
    classes = int(np.max(y)) + 1
    hypermodel = _HyperModel(space, x.shape[1:], classes, 3e-3, limits)
    objective = keras_tuner.Objective("val_accuracy", "max")
    common = {
        "objective": objective,
        "max_trials": max_trials,
        "hyperparameters": space.hyperparameters(),
        "seed": seed + 1,  # keras-tuner reads seed=0 as "no seed"
    }
    if name in SEARCHERS:
        engine = make_searcher(
            name,
            space,
            seed=seed,
            max_epochs=epochs,
            cost_fn=hypermodel.cost,
            cost=cost,
            **{f"max_{key}": value for key, value in limits.items()},
        )
        oracle = SearcherOracle(engine, **common)
    elif name == "bayesian":
        oracle = keras_tuner.oracles.BayesianOptimizationOracle(**common)
    else:
        hyperband = {key: value for key, value in common.items() if key != "max_trials"}
        oracle = keras_tuner.oracles.HyperbandOracle(max_epochs=epochs, factor=3, **hyperband)
        oracle.max_trials = max_trials
    tuner = _Tuner(
        oracle=oracle,
        hypermodel=hypermodel,
        directory=directory,
        project_name="tuner",
        study_dir=directory,
        tuner_kind=name if name in ("bayesian", "hyperband") else "custom",
        sweep_seed=seed,
    )
    tuner.search(
        x, y, validation_data=validation_data, epochs=epochs, verbose=0, callbacks=callbacks
    )
    tuner.write_rejected()
    tuner.finish_study()
    return tuner
