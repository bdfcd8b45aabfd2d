"""Reading a study directory back: ``read_study(DIR)`` returns a ``Study``.

The format is described in ``nnkit.tuning._study_format``; ``nnkit.tuning._study`` writes it.
"""

import math
import pathlib

import numpy as np

from nnkit.tuning import _study_format as fmt


def _number(text, kind=float):
    if text == "":
        return None
    value = float(text)
    return int(value) if kind is int and math.isfinite(value) else value


def _parse_any(text):
    """A cell of unknown type: bool, int, float or the string itself."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_hp(spec, text):
    if text == "":
        return None
    kind = spec["type"]
    if kind == "float":
        return float(text)
    if kind == "int":
        return int(float(text))
    if kind == "boolean":
        return text == "True"
    candidates = list(spec.get("values") or [])
    if kind == "fixed":
        candidates.append(spec.get("default"))
    for candidate in candidates:
        if fmt.cell(candidate) == text:
            return candidate
    return _parse_any(text)


class Study:
    """A study directory read back: specs, the trials table, and lazily loaded curves.

    ``trials`` is a list of dicts, one per ``trials.csv`` row, with keys
    ``trial_id``, ``status``, ``message``, ``wall_seconds``, ``best_epoch``,
    ``epochs_run``, ``executions`` (a count), ``hyperparameters`` (active ones,
    typed by their spec), ``metrics`` (``{name: float or None}``) and
    ``objective`` (float or None).
    """

    def __init__(self, directory, header, trials, metric_names, seeds):
        self.directory = pathlib.Path(directory)
        self.header = header
        self.trials = trials
        self.metric_names = metric_names
        self.seeds = seeds
        self._curves = {}

    @property
    def hyperparameters(self):
        return self.header["hyperparameters"]

    @property
    def hp_names(self):
        return [spec["name"] for spec in self.hyperparameters]

    def spec(self, name):
        for spec in self.hyperparameters:
            if spec["name"] == name:
                return spec
        raise KeyError(f"No hyperparameter {name!r} in the study. Known: {self.hp_names}")

    @property
    def objective(self):
        return self.header["objective"]["name"]

    @property
    def direction(self):
        return self.header["objective"]["direction"]

    @property
    def tuner(self):
        return self.header["tuner"]

    @property
    def trial_ids(self):
        return [t["trial_id"] for t in self.trials]

    def statuses(self):
        return np.array([t["status"] for t in self.trials], dtype=object)

    def objective_values(self):
        """Objective per trial (float array; NaN where a trial has none)."""
        return np.array(
            [np.nan if t["objective"] is None else t["objective"] for t in self.trials],
            dtype=float,
        )

    def metric_values(self, name):
        return np.array(
            [np.nan if t["metrics"].get(name) is None else t["metrics"][name] for t in self.trials],
            dtype=float,
        )

    def hp_values(self, name):
        """Values of one hyperparameter per trial (None where it was inactive)."""
        self.spec(name)
        return [t["hyperparameters"].get(name) for t in self.trials]

    def curves(self, trial_id):
        """``{"execution": int array, "epoch": int array, <metric>: float array}`` or None."""
        trial_id = str(trial_id)
        if trial_id not in self._curves:
            self._curves[trial_id] = fmt.load_curves(
                fmt.trial_dir(self.directory, trial_id) / "curves.csv"
            )
        return self._curves[trial_id]

    def trial_record(self, trial_id):
        """The parsed ``trials/<id>/trial.json`` (per-execution seeds and values)."""
        path = fmt.trial_dir(self.directory, trial_id) / "trial.json"
        return fmt.load_json(path, fmt.TRIAL_REMEDY)


def read_study(directory, name="directory"):
    """Read a study directory written by ``tune`` or ``write_study``.

    ``name`` is the argument the directory came from, for the error messages.
    """
    directory = pathlib.Path(directory)
    study_path = directory / "study.json"
    if not study_path.exists():
        raise FileNotFoundError(
            f"{study_path} does not exist: expected a study directory written by "
            f"nnkit.tuning.tune. Received: {name}={str(directory)!r}"
        )
    header = fmt.load_json(study_path, fmt.STUDY_REMEDY)
    if header.get("format") != fmt.FORMAT:
        raise ValueError(
            f"Unsupported study format; this nnkit reads format {fmt.FORMAT}. "
            f"Received: format={header.get('format')!r}"
        )
    specs = {spec["name"]: spec for spec in header["hyperparameters"]}
    try:
        trials, metric_names = _read_trials(directory, specs)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{directory / 'trials.csv'} is truncated or damaged ({type(error).__name__}: "
            f"{error}); refusing to report a partial study. Each completed trial's record "
            "(trial.json) is kept; repair or remove the damaged last line of trials.csv."
        ) from None
    seeds = fmt.load_curves(directory / "seeds.csv")
    if seeds is not None and "seed" in seeds:
        seeds["seed"] = seeds["seed"].astype(int)
    return Study(directory, header, trials, metric_names, seeds)


def _read_trials(directory, specs):
    loaded = fmt.load_csv_columns(directory / "trials.csv")
    trials, metric_names = [], []
    if loaded is not None:
        columns, body = loaded
        metric_names = [
            c[len(fmt.METRIC_PREFIX) :] for c in columns if c.startswith(fmt.METRIC_PREFIX)
        ]
        for cells in body:
            row = dict(zip(columns, cells, strict=True))
            hps = {}
            for column, text in row.items():
                if column.startswith(fmt.HP_PREFIX) and text != "":
                    name = column[len(fmt.HP_PREFIX) :]
                    spec = specs.get(name, {"type": "fixed", "values": None, "default": None})
                    hps[name] = _parse_hp(spec, text)
            trials.append(
                {
                    "trial_id": row["trial_id"],
                    "status": row["status"],
                    "message": row["message"],
                    "wall_seconds": _number(row["wall_seconds"]),
                    "best_epoch": _number(row["best_epoch"], int),
                    "epochs_run": _number(row["epochs_run"], int),
                    "executions": _number(row["executions"], int),
                    "hyperparameters": hps,
                    "metrics": {m: _number(row[fmt.METRIC_PREFIX + m]) for m in metric_names},
                    "objective": _number(row["objective"]),
                }
            )
    return trials, metric_names
