"""The format of a study directory: what ``tune`` writes (``_study``) and the report reads (``_study_read``).

Layout (format 1)::

    DIR/study.json                    objective, tuner, seed, hyperparameter specs
    DIR/trials.csv                    one row per trial (rebuilt from the trial.json files)
    DIR/trials/<trial_id>/trial.json  status, message, active hyperparameters, executions
    DIR/trials/<trial_id>/curves.csv  per-epoch curves: execution,epoch,<metrics...>
    DIR/seeds.csv                     optional: the best configuration re-run with several seeds
    DIR/report/                       written by the sensitivity report

``trials.csv`` is a pure function of ``study.json`` and the ``trials/`` folder, so
a sweep that is killed and resumed can always rebuild it (``write_trials_csv``).
Every file is written with ``nnkit._io.atomic_write`` (temporary name,
``fsync``, rename), so a killed process never leaves half a file behind.

Reading::

    study = read_study(d)
    study.hyperparameters          # list of spec dicts, study.json order
    study.trials                   # list of row dicts, trial order
    study.objective_values()       # float array, NaN where a trial has none
    study.hp_values("learning_rate")  # list, None where inactive
    study.curves("00")             # {"execution": array, "epoch": array, "loss": array, ...}
    study.seeds                    # None or {"seed": array, "objective": array, ...}
"""

import csv
import json
import pathlib

import numpy as np

FORMAT = 1
HP_TYPES = ("float", "int", "choice", "boolean", "fixed")
SAMPLINGS = ("linear", "log", "reverse_log")
STATUSES = ("completed", "failed", "stopped", "invalid", "infeasible")
DIRECTIONS = ("min", "max")
TUNERS = ("random", "bayesian", "hyperband", "grid", "custom")
FIXED_COLUMNS = (
    "trial_id",
    "status",
    "message",
    "wall_seconds",
    "best_epoch",
    "epochs_run",
    "executions",
)
HP_PREFIX = "hp:"
METRIC_PREFIX = "metric:"


def cell(value):
    """How one value is written in a CSV cell: empty for None, ``nan``/``inf`` kept."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def trial_dir(directory, trial_id):
    return pathlib.Path(directory) / "trials" / str(trial_id)


TRIAL_REMEDY = (
    "Restore it from a copy, or delete its trials/<id> folder: that trial then drops out of "
    "the report (keras-tuner's own record under tuner/ still keeps it from being rerun)."
)
STUDY_REMEDY = (
    "Restore it from a copy, or start afresh in another directory (or with overwrite=True, "
    "which deletes this study)."
)


def load_json(path, remedy):
    """The parsed JSON object in ``path``; a ValueError naming the file if it is damaged.

    ``remedy`` says how to recover; the file is left as it is.
    """
    path = pathlib.Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(value, dict):
            raise ValueError(f"a JSON {type(value).__name__}, not an object")
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is empty, truncated or damaged ({error}); nnkit left it as it is. {remedy}"
        ) from None
    return value


def load_csv_columns(path):
    path = pathlib.Path(path)
    if not path.exists():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return None
    header, body = rows[0], rows[1:]
    return header, body


def load_curves(path):
    loaded = load_csv_columns(path)
    if loaded is None:
        return None
    header, body = loaded
    columns = {}
    for i, name in enumerate(header):
        cells = [row[i] for row in body]
        if name in ("execution", "epoch"):
            columns[name] = np.array([int(c) for c in cells], dtype=int)
        else:
            columns[name] = np.array([np.nan if c == "" else float(c) for c in cells])
    return columns
