"""Writing a study directory, trial by trial; the format is in ``nnkit.tuning._study_format``.

Writing (what ``tune`` does, trial by trial)::

    write_study_json(d, study_header(specs, objective="val_loss", direction="min",
                                     tuner="random", seed=0))
    write_trial(d, {"trial_id": "00", "status": "completed", "message": "",
                    "hyperparameters": {"learning_rate": 1e-3},
                    "executions": [{"seed": 0, "best_epoch": 4,
                                    "best": {"val_loss": 0.3, "loss": 0.2},
                                    "wall_seconds": 1.5}],
                    "objective": 0.3, "wall_seconds": 1.5},
                curves=[history.history])     # one {metric: [per-epoch values]} per execution

``nnkit.tuning._study_read.read_study`` reads it back.
"""

import csv
import datetime
import io
import json
import math
import pathlib

import numpy as np

from nnkit import _io
from nnkit._validation import check_one_of, check_str
from nnkit.tuning import _study_format as fmt

# -- specs and header -------------------------------------------------------------


def hyperparameter_spec(
    name,
    type,
    *,
    min=None,
    max=None,
    sampling=None,
    values=None,
    default=None,
    conditions=(),
):
    """One entry of ``study.json["hyperparameters"]``, checked.

    ``conditions`` is a list of ``{"parent": name, "values": [...]}``: the
    hyperparameter is active only when every parent takes one of its values.
    """
    check_str("name", name)
    check_one_of("type", type, fmt.HP_TYPES)
    if type in ("float", "int"):
        if min is None or max is None or not min <= max:
            raise ValueError(
                f"A {type} hyperparameter needs min <= max. Received: name={name!r}, "
                f"min={min!r}, max={max!r}"
            )
        sampling = "linear" if sampling is None else sampling
        check_one_of("sampling", sampling, fmt.SAMPLINGS)
        if sampling != "linear" and min <= 0:
            raise ValueError(
                f"{sampling!r} sampling needs min > 0. Received: name={name!r}, min={min!r}"
            )
    elif sampling is not None:
        raise ValueError(
            f"Only float and int hyperparameters have a sampling. Received: name={name!r}, "
            f"type={type!r}, sampling={sampling!r}"
        )
    if type == "choice":
        if not values:
            raise ValueError(
                f"A choice hyperparameter needs values. Received: name={name!r}, values={values!r}"
            )
        values = list(values)
    elif type == "boolean":
        values = [False, True]
    elif values is not None:
        values = list(values)
    if default is None:
        default = {"float": min, "int": min, "boolean": False}.get(
            type, values[0] if values else None
        )
    parsed = []
    for condition in conditions:
        if set(condition) != {"parent", "values"}:
            raise ValueError(
                "Each condition is {'parent': name, 'values': [...]}. "
                f"Received: conditions={conditions!r}"
            )
        parsed.append({"parent": condition["parent"], "values": list(condition["values"])})
    return {
        "name": name,
        "type": type,
        "min": min,
        "max": max,
        "sampling": sampling,
        "values": values,
        "default": default,
        "conditions": parsed,
    }


def study_header(
    hyperparameters,
    *,
    objective="val_loss",
    direction="min",
    tuner="custom",
    seed=None,
    created=None,
):
    """The content of ``study.json``; ``created`` defaults to now (UTC, ISO-8601)."""
    from nnkit._version import __version__

    check_str("objective", objective)
    check_one_of("direction", direction, fmt.DIRECTIONS)
    check_one_of("tuner", tuner, fmt.TUNERS)
    specs = [hyperparameter_spec(**spec) for spec in hyperparameters]
    names = [spec["name"] for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"Hyperparameter names must be unique. Received: names={names!r}")
    if created is None:
        created = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return {
        "format": fmt.FORMAT,
        "objective": {"name": objective, "direction": direction},
        "tuner": tuner,
        "seed": seed,
        "hyperparameters": specs,
        "nnkit_version": __version__,
        "created": created,
    }


# -- writing ----------------------------------------------------------------------


def _atomic_write(path, text):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _io.atomic_write(path, text)


def _json_value(value):
    """numpy scalars to Python; NaN/inf to None (JSON has neither)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_tree(value):
    if isinstance(value, dict):
        return {str(k): _json_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_tree(v) for v in value]
    return _json_value(value)


def _csv_text(header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([fmt.cell(v) for v in row])
    return buffer.getvalue()


def write_study_json(directory, study):
    """Write ``DIR/study.json`` (``study`` as returned by ``study_header``)."""
    check_one_of("study['tuner']", study.get("tuner"), fmt.TUNERS)
    _atomic_write(pathlib.Path(directory) / "study.json", json.dumps(_json_tree(study), indent=2))


def write_trial(directory, trial, curves=None, *, update_csv=True):
    """Write ``trials/<id>/trial.json`` (and ``curves.csv``), then rebuild ``trials.csv``.

    ``trial`` has the keys of ``trial.json``: ``trial_id``, ``status``, ``message``,
    ``hyperparameters`` (active ones only), ``executions`` (a list of
    ``{"seed", "best_epoch", "best": {metric: value}, "wall_seconds"}``),
    ``objective`` (None for failed trials) and ``wall_seconds``. ``curves`` is
    one ``{metric: [value per epoch]}`` per execution (Keras ``History.history``).
    """
    trial_id = check_str("trial_id", str(trial.get("trial_id", "")))
    status = check_one_of("status", trial.get("status"), fmt.STATUSES)
    record = {
        "trial_id": trial_id,
        "status": status,
        "message": trial.get("message") or "",
        "hyperparameters": dict(trial.get("hyperparameters") or {}),
        "executions": [dict(e) for e in trial.get("executions") or []],
        "objective": trial.get("objective"),
        "wall_seconds": trial.get("wall_seconds"),
    }
    folder = fmt.trial_dir(directory, trial_id)
    if curves is not None:
        write_curves(directory, trial_id, curves)
    _atomic_write(folder / "trial.json", json.dumps(_json_tree(record), indent=2))
    if update_csv:
        write_trials_csv(directory)


def write_curves(directory, trial_id, curves):
    """Write ``trials/<id>/curves.csv`` from one ``{metric: [values]}`` per execution."""
    metrics = []
    for history in curves:
        for name in history:
            if name not in metrics:
                metrics.append(name)
    rows = []
    for execution, history in enumerate(curves):
        n_epochs = max((len(v) for v in history.values()), default=0)
        for epoch in range(n_epochs):
            values = [history.get(m, []) for m in metrics]
            rows.append([execution, epoch] + [v[epoch] if epoch < len(v) else None for v in values])
    _atomic_write(
        fmt.trial_dir(directory, trial_id) / "curves.csv",
        _csv_text(["execution", "epoch", *metrics], rows),
    )


def _trial_order(trial_id):
    # keras-tuner's ids are zero-padded numbers; order numerically where possible.
    return (0, int(trial_id), "") if trial_id.isdigit() else (1, 0, trial_id)


def trial_records(directory):
    root = pathlib.Path(directory) / "trials"
    records = []
    if root.is_dir():
        for path in root.glob("*/trial.json"):
            records.append(fmt.load_json(path, fmt.TRIAL_REMEDY))
    return sorted(records, key=lambda r: _trial_order(str(r["trial_id"])))


def _epochs_run(directory, trial_id):
    curves = fmt.load_curves(fmt.trial_dir(directory, trial_id) / "curves.csv")
    if curves is None or not len(curves["epoch"]):
        return None
    return int(max(np.sum(curves["execution"] == e) for e in np.unique(curves["execution"])))


def _mean_best(executions):
    """keras-tuner's convention: each metric's best-epoch value averaged over executions."""
    names = []
    for execution in executions:
        for name in execution.get("best") or {}:
            if name not in names:
                names.append(name)
    means = {}
    for name in names:
        values = [
            float(e["best"][name]) for e in executions if e.get("best", {}).get(name) is not None
        ]
        means[name] = float(np.mean(values)) if values else None
    return means


def write_trials_csv(directory):
    """Rebuild ``DIR/trials.csv`` from ``study.json`` and every ``trials/<id>/trial.json``."""
    study = json.loads((pathlib.Path(directory) / "study.json").read_text(encoding="utf-8"))
    hp_names = [spec["name"] for spec in study["hyperparameters"]]
    records = trial_records(directory)
    metrics = {r["trial_id"]: _mean_best(r.get("executions") or []) for r in records}
    metric_names = sorted({name for m in metrics.values() for name in m})
    header = [
        *fmt.FIXED_COLUMNS,
        *(fmt.HP_PREFIX + n for n in hp_names),
        *(fmt.METRIC_PREFIX + n for n in metric_names),
        "objective",
    ]
    rows = []
    for record in records:
        executions = record.get("executions") or []
        best_epochs = [e["best_epoch"] for e in executions if e.get("best_epoch") is not None]
        # One execution: its best epoch; several: the median, rounded down.
        best_epoch = int(np.floor(np.median(best_epochs))) if best_epochs else None
        hps = record.get("hyperparameters") or {}
        rows.append(
            [
                record["trial_id"],
                record["status"],
                record.get("message") or "",
                record.get("wall_seconds"),
                best_epoch,
                _epochs_run(directory, record["trial_id"]),
                len(executions),
                *(hps.get(n) for n in hp_names),
                *(metrics[record["trial_id"]].get(n) for n in metric_names),
                record.get("objective"),
            ]
        )
    _atomic_write(pathlib.Path(directory) / "trials.csv", _csv_text(header, rows))


def write_seeds(directory, rows):
    """Write ``DIR/seeds.csv`` from ``[{"seed": s, "objective": v, <metric>: v, ...}]``."""
    columns = ["seed", "objective"]
    for row in rows:
        for name in row:
            if name not in columns:
                columns.append(name)
    _atomic_write(
        pathlib.Path(directory) / "seeds.csv",
        _csv_text(columns, [[row.get(c) for c in columns] for row in rows]),
    )


def write_study(directory, study, trials, curves=None, seeds=None):
    """Write a whole study at once (tests and synthetic studies).

    ``curves`` maps a trial id to its list of per-execution histories.
    """
    write_study_json(directory, study)
    curves = curves or {}
    for trial in trials:
        write_trial(directory, trial, curves.get(str(trial["trial_id"])), update_csv=False)
    write_trials_csv(directory)
    if seeds is not None:
        write_seeds(directory, seeds)
