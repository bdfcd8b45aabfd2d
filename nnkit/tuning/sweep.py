"""``tune(...)``: one call that runs a keras-tuner sweep and records it in a study directory."""

import copy
import os
import pathlib
import shutil

import keras
import keras_tuner

from nnkit import _validation as v
from nnkit.callbacks import EarlyStopping
from nnkit.tuning import _study_format as study_format
from nnkit.tuning._recording import RecordingMixin
from nnkit.tuning._study import trial_records
from nnkit.tuning.hypermodel import MLPHyperModel, _has_early_stopping
from nnkit.tuning.median_stopping import MedianStopping
from nnkit.tuning.search_space import SearchSpace

TUNERS = ("random", "bayesian", "hyperband", "grid")
#: Folder of keras-tuner's own project inside the study directory.
TUNER_FOLDER = "tuner"
_STUDY_FILES = ("study.json", "trials.csv", "seeds.csv")
_STUDY_FOLDERS = ("trials", TUNER_FOLDER, "report")


class RecordingRandomSearch(RecordingMixin, keras_tuner.RandomSearch):
    """``keras_tuner.RandomSearch`` that writes the nnkit study directory."""


class RecordingBayesianOptimization(RecordingMixin, keras_tuner.BayesianOptimization):
    """``keras_tuner.BayesianOptimization`` that writes the nnkit study directory."""


class RecordingHyperband(RecordingMixin, keras_tuner.Hyperband):
    """``keras_tuner.Hyperband`` that writes the nnkit study directory."""


class RecordingGridSearch(RecordingMixin, keras_tuner.GridSearch):
    """``keras_tuner.GridSearch`` that writes the nnkit study directory."""


_CLASSES = {
    "random": RecordingRandomSearch,
    "bayesian": RecordingBayesianOptimization,
    "hyperband": RecordingHyperband,
    "grid": RecordingGridSearch,
}


def is_worker():
    """True in a worker process of keras-tuner's distributed mode (not the chief)."""
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in os.environ.get(
        "KERASTUNER_TUNER_ID", ""
    )


def _hypermodel(build_or_space, x, y, epochs):
    if isinstance(build_or_space, SearchSpace):
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 2:
            raise ValueError(
                "With a SearchSpace, `x` must be a 2-D array (examples × features) to size the "
                f"MLP. Received: x of type {type(x).__name__} with shape {shape}"
            )
        y_shape = getattr(y, "shape", (len(y),))
        return MLPHyperModel(
            shape[1],
            y_shape[1] if len(y_shape) == 2 else 1,
            space=build_or_space,
            epochs=epochs or 20,
            train_size=shape[0],
        )
    if isinstance(build_or_space, keras_tuner.HyperModel) or callable(build_or_space):
        return build_or_space
    raise TypeError(
        "`build_or_space` must be a nnkit.tuning.SearchSpace, a keras_tuner.HyperModel or a "
        f"function build(hp) returning a compiled model, not {type(build_or_space).__name__}. "
        f"Received: build_or_space={build_or_space!r}"
    )


def _epochs(hypermodel, epochs):
    if isinstance(hypermodel, MLPHyperModel):
        if epochs is not None and v.check_positive_int("epochs", epochs) != hypermodel.epochs:
            raise ValueError(
                f"The MLPHyperModel trains for epochs={hypermodel.epochs} (its schedules' "
                f"length); pass the same number or leave `epochs` out. Received: epochs={epochs}"
            )
        return hypermodel.epochs
    return 20 if epochs is None else v.check_positive_int("epochs", epochs)


def _batch_size(hypermodel, batch_size):
    batch_size = v.check_optional_int("batch_size", batch_size, minimum=1)
    if batch_size is not None and isinstance(hypermodel, MLPHyperModel):
        raise ValueError(
            "A SearchSpace or MLPHyperModel takes the batch size from its `batch_size` knob "
            "(its schedules count steps from it): fix it with "
            f"SearchSpace().fixed(batch_size={batch_size}) instead. "
            f"Received: batch_size={batch_size}"
        )
    return batch_size


def _check_objective(objective):
    if isinstance(objective, str):
        return v.check_str("objective", objective)
    if type(objective) is keras_tuner.Objective:
        return objective
    raise TypeError(
        "`objective` must be a metric name such as 'val_loss' or one keras_tuner.Objective. "
        f"Received: objective={objective!r}"
    )


def _check_callbacks(callbacks):
    if callbacks is None:
        return []
    callbacks = v.check_sequence("callbacks", callbacks, "a list of Keras callbacks or None")
    for i, callback in enumerate(callbacks):
        v.check_instance(f"callbacks[{i}]", callback, keras.callbacks.Callback, "a Keras callback")
    return callbacks


def _callbacks(callbacks, hypermodel, objective, study_dir, median_stopping):
    callbacks = list(callbacks)
    if not isinstance(hypermodel, MLPHyperModel) and not _has_early_stopping(callbacks):
        callbacks.insert(0, EarlyStopping(objective.name, patience=5, mode=objective.direction))
    folder = str(pathlib.Path(study_dir) / TUNER_FOLDER / "median_stopping")
    for i, callback in enumerate(callbacks):
        if isinstance(callback, MedianStopping) and callback.directory is None:
            callbacks[i] = copy.deepcopy(callback)
            callbacks[i].directory = folder
    if median_stopping and not any(isinstance(cb, MedianStopping) for cb in callbacks):
        callbacks.append(MedianStopping(objective.name, mode=objective.direction, directory=folder))
    return callbacks


def _prepare_directory(directory, kind, overwrite):
    directory = pathlib.Path(directory)
    if is_worker():
        return  # only the chief may clear or check the study
    if overwrite:
        for name in _STUDY_FILES:
            (directory / name).unlink(missing_ok=True)
        for name in _STUDY_FOLDERS:
            shutil.rmtree(directory / name, ignore_errors=True)
        return
    study = directory / "study.json"
    if study.exists():
        recorded = study_format.load_json(study, study_format.STUDY_REMEDY).get("tuner")
        trial_records(directory)  # a damaged trial record stops the resume before training
        if recorded != kind:
            raise ValueError(
                f"{directory} holds a study run with tuner={recorded!r}; resuming it with "
                f"tuner={kind!r} would mix two searches. Pass the same tuner, another "
                f"directory, or overwrite=True. Received: tuner={kind!r}"
            )


def tune(
    build_or_space,
    x,
    y,
    *,
    validation_data,
    directory,
    tuner="random",
    max_trials=20,
    epochs=None,
    batch_size=None,
    seed=None,
    executions_per_trial=1,
    objective="val_loss",
    callbacks=None,
    median_stopping=False,
    max_consecutive_failed_trials=3,
    overwrite=False,
    verbose=0,
):
    """Run a keras-tuner sweep and record every trial in a study directory.

    Use it for a hyperparameter sweep whose results you want to analyse
    (``nnkit.tuning.sensitivity_report(directory)``), resume, or run on
    several machines. It builds a keras-tuner tuner around your model,
    runs ``search`` and writes, besides keras-tuner's own project
    (``directory/tuner/``), what keras-tuner drops:

    * ``study.json``: the objective, the tuner, the seed and every
      hyperparameter's type, range, sampling and conditions;
    * ``trials.csv``: one row per trial — status (``completed``,
      ``stopped`` by the median rule, ``failed``), failure message, wall
      time, best epoch, epochs run, one column per hyperparameter and per
      metric (best epoch, averaged over executions) and the objective;
    * ``trials/<id>/curves.csv`` (every logged value per epoch and
      execution) and ``trials/<id>/trial.json`` (per-execution seeds, best
      epochs and values).

    Every trial trains with nnkit's ``EarlyStopping`` (``MLPHyperModel``'s
    own; for other hypermodels one on the objective with patience 5 unless
    ``callbacks`` has one) and, with ``median_stopping``, a
    ``MedianStopping`` rule across trials. A trial that raises (in build or
    fit, e.g. out of memory) or diverges (a non-finite loss or objective)
    is recorded as failed with its message and the sweep goes on, until
    ``max_consecutive_failed_trials`` fail in a row (then ``RuntimeError``).
    A sweep killed mid-way continues when ``tune`` runs again with the same
    ``directory``: completed trials are not rerun, the interrupted one is
    (keras-tuner's reload). In keras-tuner's distributed mode
    (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``,
    ``KERASTUNER_ORACLE_PORT``) run the same call in the chief and in every
    worker, with a ``directory`` they share; see ``docs/tuning.md``.

    With ``seed`` set, execution ``k`` of trial ``t`` runs under
    ``keras.utils.set_random_seed`` with a seed derived from
    ``(seed, t, k)``, recorded in ``trial.json``, and the tuner's sampler is
    seeded, so a sweep repeats exactly on the same machine.

    Args:
        build_or_space: A ``SearchSpace`` (an ``MLPHyperModel`` is built for
            ``x``, ``y``: regression with ``"mse"``; for classification pass
            an ``MLPHyperModel``), a ``keras_tuner.HyperModel``, or a
            function ``build(hp)`` returning a compiled model. Required.
        x: Training inputs (arrays for a ``SearchSpace``). Required.
        y: Training targets. Required.
        validation_data: ``(x_val, y_val)``, as for ``fit``. Keyword-only.
            Required.
        directory: The study directory (created if needed). Keyword-only.
            Required.
        tuner: ``"random"``, ``"bayesian"``, ``"hyperband"`` or ``"grid"``
            (every combination of the ``Choice`` values and stepped ranges,
            in order: e.g. a learning-rate grid). Defaults to ``"random"``.
        max_trials: Number of trials, an int ``>= 1`` (for Hyperband and
            grid a cap on the schedule or the grid; ``None`` runs all of
            it). Defaults to ``20``.
        epochs: Epochs per trial (Hyperband's ``max_epochs``); ``None`` for
            the ``MLPHyperModel``'s, or 20. Defaults to ``None``.
        batch_size: The ``batch_size`` of every trial's ``fit``, an int
            ``>= 1``, passed the same way with every tuner (to ``fit`` for a
            ``build(hp)`` function, to ``HyperModel.fit`` for a hypermodel);
            ``None`` leaves it to ``fit`` (Keras's 32). A schedule sized in
            steps needs the same number: compute
            ``math.ceil(len(x) / batch_size)`` steps per epoch outside
            ``build`` and use it inside (``docs/tuning.md``). Not for a
            ``SearchSpace`` or ``MLPHyperModel``, whose ``batch_size`` is a
            knob (``SearchSpace().fixed(batch_size=...)``). Defaults to
            ``None``.
        seed: Seed of the sweep, an int ``>= 0``, or ``None``.
            Defaults to ``None``.
        executions_per_trial: Trainings per trial (their objective is
            averaged), an int ``>= 1``. Defaults to ``1``.
        objective: Metric name to optimize (keras-tuner infers the direction:
            losses are minimized, accuracy-like metrics maximized) or a
            ``keras_tuner.Objective(name, direction)``. Defaults to
            ``"val_loss"``.
        callbacks: More Keras callbacks for every trial (deep-copied per
            trial), or ``None``. Defaults to ``None``.
        median_stopping: Add ``MedianStopping(objective)`` unless
            ``callbacks`` has one. It saves compute, but a stopped trial's
            objective is its value when stopped (after a few epochs), which
            tilts a sensitivity analysis towards knobs that speed up the
            first epochs (in ``recipes/tune_digits.py`` it stopped 78 of 90
            trials, 72 after their third epoch; see ``docs/tuning.md``).
            Defaults to ``False``.
        max_consecutive_failed_trials: Failed trials in a row that stop the
            sweep, an int ``>= 1``. Defaults to ``3``.
        overwrite: Delete an earlier study in ``directory`` instead of
            resuming it. Defaults to ``False``.
        verbose: ``fit`` and keras-tuner verbosity, ``0``, ``1`` or ``2``.
            Defaults to ``0``.

    Returns:
        The keras-tuner tuner (a ``RandomSearch``, ``BayesianOptimization``,
        ``Hyperband`` or ``GridSearch`` subclass) after the search:
        ``tuner.get_best_hyperparameters()``, ``tuner.get_best_models()``
        work as usual.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a number is out of range, ``tuner`` is unknown, or
            ``directory`` holds a study made with another tuner.
        RuntimeError: If ``max_consecutive_failed_trials`` trials fail in a
            row.

    Example:
    >>> import tempfile, numpy as np
    >>> from nnkit.tuning import SearchSpace, tune
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 3)).astype("float32")
    >>> y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    >>> space = SearchSpace().restrict(learning_rate=(1e-3, 1e-2)).fixed(depth=1, width=8)
    >>> tuner = tune(space, x, y, validation_data=(x, y), max_trials=2, epochs=2,
    ...              seed=0, directory=tempfile.mkdtemp())
    >>> import csv, pathlib
    >>> text = pathlib.Path(tuner.study_dir, "trials.csv").read_text()
    >>> rows = list(csv.DictReader(text.splitlines()))
    >>> [(row["trial_id"], row["status"]) for row in rows]
    [('0', 'completed'), ('1', 'completed')]
    """
    kind = v.check_one_of("tuner", tuner, TUNERS)
    max_trials = v.check_optional_int("max_trials", max_trials, minimum=1)
    if max_trials is None and kind not in ("hyperband", "grid"):
        raise ValueError(f"`max_trials` is required for tuner={kind!r}. Received: max_trials=None")
    seed = v.check_optional_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
    executions_per_trial = v.check_positive_int("executions_per_trial", executions_per_trial)
    limit = v.check_positive_int("max_consecutive_failed_trials", max_consecutive_failed_trials)
    v.check_bool("median_stopping", median_stopping)
    v.check_bool("overwrite", overwrite)
    verbose = v.check_int("verbose", verbose, minimum=0, maximum=2)
    directory = v.check_path("directory", directory)
    if validation_data is None:
        raise ValueError(
            "tune needs `validation_data` (the objective is measured on it). "
            "Received: validation_data=None"
        )
    v.check_batches("x", x)
    v.check_data("y", y, allow_none=True)
    if y is None and hasattr(x, "shape"):
        raise ValueError(
            "`y` is required when `x` is an array (only a dataset or generator of (x, y) "
            "pairs goes without). Received: y=None"
        )
    v.check_batches("validation_data", validation_data)
    objective = _check_objective(objective)
    callbacks = _check_callbacks(callbacks)
    hypermodel = _hypermodel(build_or_space, x, y, epochs)
    epochs = _epochs(hypermodel, epochs)
    batch_size = _batch_size(hypermodel, batch_size)

    _prepare_directory(directory, kind, overwrite)
    options = {
        "hypermodel": hypermodel,
        "objective": objective,
        # keras-tuner treats seed=0 as "no seed" (`seed or random...`): shift by one.
        "seed": None if seed is None else seed + 1,
        "max_consecutive_failed_trials": limit,
        "executions_per_trial": executions_per_trial,
        "directory": directory,
        "project_name": TUNER_FOLDER,
        "overwrite": overwrite and not is_worker(),
        "study_dir": directory,
        "tuner_kind": kind,
        "sweep_seed": seed,
    }
    if kind == "hyperband":
        options["max_epochs"] = epochs
    elif max_trials is not None or kind != "grid":
        options["max_trials"] = max_trials
    try:
        result = _CLASSES[kind](**options)
    except ValueError as error:
        if "optimization direction" not in str(error):
            raise
        raise ValueError(
            "keras-tuner cannot tell whether to minimize or maximize the objective (it knows "
            "Keras's metric names, e.g. 'val_loss', 'val_accuracy'): pass "
            "keras_tuner.Objective(name, direction='min' or 'max'). "
            f"Received: objective={objective!r}"
        ) from None
    if kind == "hyperband" and max_trials is not None:
        result.oracle.max_trials = max_trials
    callbacks = _callbacks(
        callbacks, hypermodel, result.oracle.objective, directory, median_stopping
    )
    if not is_worker():
        result.write_study_json()  # before search: the chief of a distributed sweep waits there
    result.search(
        x,
        y,
        validation_data=validation_data,
        epochs=epochs,
        callbacks=callbacks,
        verbose=verbose,
        **({} if batch_size is None else {"batch_size": batch_size}),
    )
    result.finish_study()
    return result
