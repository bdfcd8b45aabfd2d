"""keras-tuner's distributed mode: a chief oracle and two workers on 127.0.0.1 write one study.

Three processes run ``tests/tuning/_distributed_sweep.py`` (the same ``tune`` call)
with ``KERASTUNER_TUNER_ID``/``KERASTUNER_ORACLE_IP``/``KERASTUNER_ORACLE_PORT``
set; the workers train, the chief serves the oracle over gRPC. Every process is
killed if the sweep does not finish in time.
"""

import csv
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

SCRIPT = pathlib.Path(__file__).with_name("_distributed_sweep.py")
ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 150  # seconds for the whole sweep (it takes ~40 s on two busy cores)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(role, port, directory, log):
    env = dict(os.environ)
    env.update(
        KERASTUNER_TUNER_ID=role,
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT=str(port),
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=str(ROOT),
    )
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(directory)],
        env=env,
        cwd=str(ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_chief_and_two_workers_write_a_complete_study(tmp_path):
    pytest.importorskip("grpc")
    directory = tmp_path / "study"
    port = _free_port()
    logs = {role: open(tmp_path / f"{role}.log", "w") for role in ("chief", "tuner0", "tuner1")}
    processes = {}
    try:
        processes["chief"] = _start("chief", port, directory, logs["chief"])
        for role in ("tuner0", "tuner1"):
            processes[role] = _start(role, port, directory, logs[role])
        deadline = time.monotonic() + TIMEOUT
        for process in processes.values():
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs.values():
            log.close()
    output = {role: (tmp_path / f"{role}.log").read_text() for role in logs}
    codes = {role: process.returncode for role, process in processes.items()}
    assert codes == {"chief": 0, "tuner0": 0, "tuner1": 0}, f"{codes}\n" + "\n".join(
        f"--- {role} ---\n{text[-3000:]}" for role, text in output.items()
    )

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
