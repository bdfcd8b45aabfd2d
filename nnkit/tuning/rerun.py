"""Re-running a study's best configuration with several seeds: the report's noise floor."""

import math

import numpy as np

from nnkit import _validation as v
from nnkit._validation import check_int
from nnkit.tuning._study import write_seeds
from nnkit.tuning._study_read import read_study
from nnkit.tuning.importance import usable_trials


def _best_row(study):
    rows = usable_trials(study)
    if not rows:
        raise ValueError(
            f"The study has no trial with an objective value to re-run. "
            f"Received: study_dir={str(study.directory)!r}"
        )
    sign = 1.0 if study.direction == "min" else -1.0
    return min(rows, key=lambda row: sign * row["objective"])


def _best_epoch_values(logs, objective, direction):
    """keras-tuner's convention: every metric at the epoch where the objective is best."""
    curve = np.asarray(logs[objective], dtype=float)
    oriented = np.where(np.isnan(curve), np.inf, curve if direction == "min" else -curve)
    epoch = int(np.argmin(oriented))
    return {name: float(values[epoch]) for name, values in logs.items() if len(values) > epoch}


def rerun_best(study_dir, build, x=None, y=None, *, seeds=(0, 1, 2), **fit_kwargs):
    """Train the study's best configuration once per seed and write ``seeds.csv``.

    The spread of the objective over these runs is the noise floor that the
    sensitivity report compares differences against ("better than the default"
    means more than twice this spread). Each run seeds Keras
    (``keras.utils.set_random_seed``), builds the model from a
    ``keras_tuner.HyperParameters`` holding the best trial's values, trains it,
    and takes every metric at the epoch where the objective is best (keras-tuner's
    convention). Use the same data, epochs and callbacks as the sweep.

    Args:
        study_dir: A study directory written by ``nnkit.tuning.tune``.
        build: A ``keras_tuner.HyperModel`` (its ``build`` and ``fit`` are used) or a
            function ``build(hp)`` returning a compiled model (trained with ``fit``).
        x: Training inputs, passed to ``fit``.
        y: Training targets, passed to ``fit``.
        seeds: At least three seeds. Defaults to ``(0, 1, 2)``.
        **fit_kwargs: Passed to ``fit`` (``validation_data``, ``epochs``, ...).

    Returns:
        The rows written to ``seeds.csv``: ``{"seed", "objective", <metric>: value}``.

    Raises:
        ValueError: If fewer than three seeds are given, the study has no usable
            trial, or training does not log the objective.

    Example:
        >>> import tempfile, numpy as np, keras
        >>> from nnkit.tuning._synthetic import write_random_study
        >>> specs = [{"name": "units", "type": "int", "min": 2, "max": 8}]
        >>> study_dir = tempfile.mkdtemp()
        >>> _ = write_random_study(study_dir, specs, lambda v, rng: 1.0 / v["units"],
        ...                        n_trials=3, seed=0)
        >>> def build(hp):
        ...     model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(hp["units"]),
        ...                               keras.layers.Dense(1)])
        ...     model.compile("sgd", "mse")
        ...     return model
        >>> x = np.ones((8, 3), "float32"); y = np.zeros((8, 1), "float32")
        >>> rows = rerun_best(study_dir, build, x, y, validation_data=(x, y), epochs=1,
        ...                   verbose=0)
        >>> [row["seed"] for row in rows]
        [0, 1, 2]
    """
    import keras
    import keras_tuner

    if isinstance(build, bool) or not (
        isinstance(build, keras_tuner.HyperModel) or callable(build)
    ):
        raise TypeError(
            "`build` must be a keras_tuner.HyperModel or a function build(hp) returning a "
            f"compiled model, not {type(build).__name__}. Received: build={build!r}"
        )
    v.check_batches("x", x, allow_none=True)
    v.check_data("y", y, allow_none=True)
    seeds = v.check_sequence("seeds", seeds, "a list of ints")
    seeds = [check_int(f"seeds[{i}]", s, limit=v.SEED_LIMIT) for i, s in enumerate(seeds)]
    if len(seeds) < 3:
        raise ValueError(
            "A noise floor needs at least three seeds (two give a spread with one degree "
            f"of freedom). Received: seeds={seeds!r}"
        )
    study = read_study(v.check_path("study_dir", study_dir), "study_dir")
    best = _best_row(study)
    rows = []
    for seed in seeds:
        hp = keras_tuner.HyperParameters()
        hp.values = dict(best["hyperparameters"])
        keras.utils.set_random_seed(seed)
        if isinstance(build, keras_tuner.HyperModel):
            model = build.build(hp)
            result = build.fit(hp, model, x, y, **fit_kwargs)
        else:
            model = build(hp)
            result = model.fit(x, y, **fit_kwargs)
        if isinstance(result, keras.callbacks.History):
            logs = result.history
        elif isinstance(result, dict):
            logs = {name: [value] for name, value in result.items()}
        else:
            logs = {study.objective: [float(result)]}
        if study.objective not in logs:
            raise ValueError(
                f"Training did not log the study's objective {study.objective!r} (pass "
                f"validation_data for a val_ metric). Received: logged={sorted(logs)!r}"
            )
        values = _best_epoch_values(logs, study.objective, study.direction)
        objective = values.pop(study.objective)
        rows.append(
            {"seed": seed, "objective": objective if math.isfinite(objective) else None} | values
        )
    write_seeds(study_dir, rows)
    return rows
