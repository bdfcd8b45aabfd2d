"""keras-tuner's distributed mode: a chief oracle and two workers on 127.0.0.1 write one study.

Three processes run ``tests/tuning/_distributed_sweep.py`` (the same ``tune`` call)
through ``tests/tuning/_distributed.py``: the workers train, the chief serves
the oracle over gRPC. Every process is killed if the sweep does not finish in time.
"""

import csv
import json
import pathlib

import pytest

from tests.tuning._distributed import failure_text, run_chief_and_workers

SCRIPT = pathlib.Path(__file__).with_name("_distributed_sweep.py")
TIMEOUT = 150  # seconds for the whole sweep (it takes ~40 s on two busy cores)


@pytest.mark.slow
def test_chief_and_two_workers_write_a_complete_study(tmp_path):
    pytest.importorskip("grpc")
    directory = tmp_path / "study"
    codes, output = run_chief_and_workers(SCRIPT, [directory], tmp_path, TIMEOUT)
    assert codes == {"chief": 0, "tuner0": 0, "tuner1": 0}, failure_text(codes, output)

    rows = list(csv.DictReader((directory / "trials.csv").read_text().splitlines()))
    assert sorted(int(r["trial_id"]) for r in rows) == list(range(4))  # every trial once
    assert all(r["status"] == "completed" and r["objective"] for r in rows)
    for row in rows:
        trial = directory / "trials" / row["trial_id"]
        curves = list(csv.DictReader((trial / "curves.csv").read_text().splitlines()))
        assert [c["epoch"] for c in curves] == ["0", "1"]
        assert json.loads((trial / "trial.json").read_text())["status"] == "completed"
    # Both workers trained: each saved its tuner state in keras-tuner's project.
    assert (directory / "tuner" / "tuner0.json").exists()
    assert (directory / "tuner" / "tuner1.json").exists()
    study = json.loads((directory / "study.json").read_text())
    assert [s["name"] for s in study["hyperparameters"]][:2] == ["learning_rate", "optimizer"]

    from nnkit.tuning import sensitivity_report

    sensitivity_report(str(directory))
    assert (directory / "report" / "report.md").exists()
