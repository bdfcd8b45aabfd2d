"""The study-directory format: what ``tune`` writes is what the report reads."""

import csv
import json
import math

import numpy as np
import pytest

from nnkit.tuning._study import (
    hyperparameter_spec,
    study_header,
    write_curves,
    write_study,
    write_trial,
    write_trials_csv,
)
from nnkit.tuning._study_read import read_study

SPECS = [
    {"name": "learning_rate", "type": "float", "min": 1e-4, "max": 1e-1, "sampling": "log"},
    {"name": "units", "type": "int", "min": 8, "max": 64, "default": 32},
    {"name": "optimizer", "type": "choice", "values": ["sgd", "adam"]},
    {"name": "momentum", "type": "float", "min": 0.0, "max": 0.99,
     "conditions": [{"parent": "optimizer", "values": ["sgd"]}]},
    {"name": "batch_size", "type": "choice", "values": [32, 64, 128]},
    {"name": "residual", "type": "boolean"},
    {"name": "epochs", "type": "fixed", "values": None, "default": 5},
]  # fmt: skip


def _header(**kwargs):
    return study_header(
        SPECS, objective="val_loss", tuner="random", seed=3, created="2024-01-01T00:00:00+00:00",
        **kwargs,
    )  # fmt: skip


def _trial(trial_id, status="completed", objective=0.5, **hps):
    executions = [
        {"seed": 0, "best_epoch": 2, "best": {"val_loss": objective, "loss": 0.1},
         "wall_seconds": 1.0},
        {"seed": 1, "best_epoch": 3, "best": {"val_loss": objective, "loss": 0.3},
         "wall_seconds": 2.0},
    ] if objective is not None else []  # fmt: skip
    return {
        "trial_id": trial_id,
        "status": status,
        "message": "" if status != "failed" else "loss became NaN, at epoch 1",
        "hyperparameters": hps,
        "executions": executions,
        "objective": objective,
        "wall_seconds": 3.0,
    }


def _trials():
    return [
        _trial("0", objective=0.5, learning_rate=1e-3, units=16, optimizer="sgd",
               momentum=0.9, batch_size=64, residual=True, epochs=5),
        _trial("1", objective=0.25, learning_rate=0.01, units=32, optimizer="adam",
               batch_size=32, residual=False, epochs=5),
        _trial("2", status="failed", objective=None, learning_rate=0.1, units=64,
               optimizer="adam", batch_size=128, residual=False, epochs=5),
    ]  # fmt: skip


def test_header_has_the_contract_keys():
    header = _header()
    assert set(header) == {
        "format", "objective", "tuner", "seed", "hyperparameters", "nnkit_version", "created",
    }  # fmt: skip
    assert header["format"] == 1
    assert header["objective"] == {"name": "val_loss", "direction": "min"}
    assert [s["name"] for s in header["hyperparameters"]] == [s["name"] for s in SPECS]
    for spec in header["hyperparameters"]:
        assert set(spec) == {
            "name", "type", "min", "max", "sampling", "values", "default", "conditions"
        }  # fmt: skip
    by_name = {s["name"]: s for s in header["hyperparameters"]}
    assert by_name["units"]["sampling"] == "linear"
    assert by_name["residual"]["values"] == [False, True]
    assert by_name["optimizer"]["default"] == "sgd"
    assert by_name["momentum"]["conditions"] == [{"parent": "optimizer", "values": ["sgd"]}]


def test_round_trip(tmp_path):
    write_study(
        tmp_path,
        _header(),
        _trials(),
        curves={"0": [{"loss": [1.0, 0.5, 0.1], "val_loss": [1.1, 0.6, 0.5]},
                      {"loss": [1.0, 0.3], "val_loss": [1.2, float("nan")]}]},
        seeds=[{"seed": 0, "objective": 0.5, "loss": 0.1}, {"seed": 1, "objective": 0.4}],
    )  # fmt: skip
    study = read_study(tmp_path)
    assert study.header == json.loads((tmp_path / "study.json").read_text())
    assert study.tuner == "random" and study.objective == "val_loss" and study.direction == "min"
    assert study.trial_ids == ["0", "1", "2"]
    assert study.metric_names == ["loss", "val_loss"]
    first, second, failed = study.trials
    assert first["hyperparameters"] == _trials()[0]["hyperparameters"]
    assert type(first["hyperparameters"]["units"]) is int
    assert first["hyperparameters"]["residual"] is True
    assert first["hyperparameters"]["batch_size"] == 64
    assert type(first["hyperparameters"]["batch_size"]) is int
    assert "momentum" not in second["hyperparameters"]
    assert study.hp_values("momentum") == [0.9, None, None]
    assert first["metrics"] == {"loss": pytest.approx(0.2), "val_loss": 0.5}
    assert first["best_epoch"] == 2  # median of 2 and 3, rounded down
    assert first["epochs_run"] == 3 and first["executions"] == 2
    assert second["epochs_run"] is None  # no curves recorded
    assert failed["status"] == "failed" and failed["objective"] is None
    assert failed["message"] == "loss became NaN, at epoch 1"
    assert failed["executions"] == 0
    np.testing.assert_array_equal(study.objective_values(), [0.5, 0.25, np.nan])
    curves = study.curves("0")
    np.testing.assert_array_equal(curves["execution"], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(curves["epoch"], [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(curves["val_loss"], [1.1, 0.6, 0.5, 1.2, np.nan])
    assert study.curves("1") is None
    assert study.trial_record("0")["executions"][1]["seed"] == 1
    np.testing.assert_array_equal(study.seeds["seed"], [0, 1])
    np.testing.assert_array_equal(study.seeds["objective"], [0.5, 0.4])
    assert math.isnan(study.seeds["loss"][1])


def test_trials_csv_header_follows_the_contract(tmp_path):
    write_study(tmp_path, _header(), _trials())
    with (tmp_path / "trials.csv").open(newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == [
        "trial_id", "status", "message", "wall_seconds", "best_epoch", "epochs_run",
        "executions", "hp:learning_rate", "hp:units", "hp:optimizer", "hp:momentum",
        "hp:batch_size", "hp:residual", "hp:epochs", "metric:loss", "metric:val_loss",
        "objective",
    ]  # fmt: skip
    assert rows[1][header.index("hp:momentum")] == ""  # inactive
    assert rows[2][header.index("objective")] == ""  # failed


def test_trials_are_added_one_by_one_in_trial_order(tmp_path):
    """A resumed sweep adds trials later; trials.csv is rebuilt from the trial folders."""
    from nnkit.tuning._study import write_study_json

    write_study_json(tmp_path, _header())
    trials = _trials()
    ids = ["10", "9", "100"]
    for trial, trial_id in zip(trials, ids, strict=True):
        write_trial(tmp_path, dict(trial, trial_id=trial_id))
    assert read_study(tmp_path).trial_ids == ["9", "10", "100"]
    (tmp_path / "trials.csv").unlink()
    write_trials_csv(tmp_path)
    assert len(read_study(tmp_path).trials) == 3
    assert not list(tmp_path.rglob("*.tmp"))


def test_empty_study_reads(tmp_path):
    from nnkit.tuning._study import write_study_json

    write_study_json(tmp_path, _header())
    study = read_study(tmp_path)
    assert study.trials == [] and study.seeds is None
    assert study.objective_values().shape == (0,)


def test_curves_of_unequal_length(tmp_path):
    write_curves(tmp_path, "5", [{"loss": [3.0, 2.0], "lr": [0.1]}])
    from nnkit.tuning._study_format import load_curves as _load_curves

    loaded = _load_curves(tmp_path / "trials" / "5" / "curves.csv")
    np.testing.assert_array_equal(loaded["lr"], [0.1, np.nan])


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="study.json"):
        read_study(tmp_path)
    (tmp_path / "study.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ValueError, match="format=99"):
        read_study(tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "x", "type": "float", "min": 1.0, "max": 0.0}, "min <= max"),
        ({"name": "x", "type": "float", "min": 0.0, "max": 1.0, "sampling": "log"}, "min > 0"),
        ({"name": "x", "type": "choice", "values": []}, "needs values"),
        ({"name": "x", "type": "choice", "values": [1], "sampling": "log"}, "sampling"),
        ({"name": "x", "type": "tensor"}, "type="),
        ({"name": "x", "type": "boolean", "conditions": [{"parent": "y"}]}, "conditions="),
    ],
)
def test_bad_specs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hyperparameter_spec(**kwargs)


def test_bad_header_and_trial(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        study_header([SPECS[0], SPECS[0]])
    with pytest.raises(ValueError, match="tuner='sobol'"):
        study_header(SPECS, tuner="sobol")
    with pytest.raises(ValueError, match="status='done'"):
        write_trial(tmp_path, dict(_trials()[0], status="done"), update_csv=False)


@pytest.mark.parametrize("content", ["", '{"format": 1, "objec', "[1, 2]"])
def test_a_damaged_study_json_is_a_clear_error_naming_it(tmp_path, content):
    write_study(tmp_path, _header(), _trials())
    (tmp_path / "study.json").write_text(content)
    with pytest.raises(ValueError, match=r"study\.json is empty, truncated") as error:
        read_study(tmp_path)
    assert "start afresh" in str(error.value)
    assert (tmp_path / "study.json").read_text() == content  # left as it is


def test_a_truncated_trials_csv_is_a_clear_error_not_a_partial_report(tmp_path):
    write_study(tmp_path, _header(), _trials())
    path = tmp_path / "trials.csv"
    data = path.read_bytes()
    cut = data[: data.rstrip(b"\n").rfind(b",")]  # the last row loses its last cells
    path.write_bytes(cut)
    with pytest.raises(ValueError, match=r"trials\.csv is truncated or damaged"):
        read_study(tmp_path)
    assert path.read_bytes() == cut
