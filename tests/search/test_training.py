"""Real training through keras-tuner: nnkit's study directory, budgets, resume."""

import csv
import json
import pathlib

import numpy as np
import pytest

from nnkit.search import conv1d_space, search_architectures


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    return x, y


def _rows(directory):
    text = (pathlib.Path(directory) / "trials.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


@pytest.mark.slow
def test_asha_trains_its_rungs_and_the_search_resumes(tmp_path):
    x, y = _data()
    space = conv1d_space(stages=(1, 2), channels=(4,), kernels=(3,), head=("avg",))
    tuner = search_architectures(
        space,
        x,
        y,
        validation_data=(x, y),
        directory=tmp_path,
        searcher="asha",
        max_trials=4,
        epochs=3,
        seed=0,
    )
    rows = _rows(tmp_path)
    assert [row["status"] for row in rows] == ["completed"] * 4
    # ASHA (eta 3, 3 epochs): three runs of 1 epoch, then the best promoted to 3
    assert [int(row["epochs_run"]) for row in rows] == [1, 1, 1, 3]
    assert all((tmp_path / "trials" / row["trial_id"] / "curves.csv").exists() for row in rows)
    assert tuner.oracle.searcher.rungs == [1, 3]
    cost = json.loads((tmp_path / "trials" / rows[3]["trial_id"] / "cost.json").read_text())
    assert cost["epochs"] == 3 and cost["params"] > 0 and cost["flops"] > 0
    again = search_architectures(
        space,
        x,
        y,
        validation_data=(x, y),
        directory=tmp_path,
        searcher="asha",
        max_trials=6,
        epochs=3,
        seed=0,
    )
    assert len(again.oracle.trials) == 6
    assert len(_rows(tmp_path)) == 6


@pytest.mark.slow
def test_asha_with_median_stopping_records_a_stopped_trial_at_the_rung_it_reached(tmp_path):
    from nnkit.tuning import MedianStopping

    x, y = _data()
    space = conv1d_space(stages=(1, 2), channels=(4,), kernels=(3,), head=("avg",))
    # A finished reference run that no trial can beat: every trial past its
    # warm-up epoch is stopped.
    folder = tmp_path / "tuner" / "median_stopping"
    folder.mkdir(parents=True)
    reference = {"monitor": "val_accuracy", "epochs": [0, 1, 2], "values": [1.0, 1.0, 1.0]}
    (folder / "reference.json").write_text(json.dumps(reference))
    rule = MedianStopping("val_accuracy", min_trials=1, warmup_epochs=1, mode="max")
    tuner = search_architectures(
        space,
        x,
        y,
        validation_data=(x, y),
        directory=tmp_path,
        searcher="asha",
        max_trials=4,
        epochs=3,
        seed=0,
        callbacks=[rule],
    )
    rows = _rows(tmp_path)
    # three 1-epoch runs (within the warm-up), then the promoted one, stopped
    # after 2 of its 3 epochs: rung 1 (1 epoch) is the highest it reached,
    # where it already is, so rung 3 stays empty.
    assert [row["status"] for row in rows] == ["completed"] * 3 + ["stopped"]
    assert int(rows[3]["epochs_run"]) == 2, (rows, tuner.oracle.events)
    tells = [event for event in tuner.oracle.events if "tell" in event]
    assert tells[-1]["epochs_run"] == 2 and all("epochs_run" not in e for e in tells[:3])
    assert tuner.oracle.searcher.results[1] == []
    assert len(tuner.oracle.searcher.results[0]) == 3
