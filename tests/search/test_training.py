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
