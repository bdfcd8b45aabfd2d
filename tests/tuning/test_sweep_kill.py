"""A sweep SIGKILLed at two moments resumes without redoing or losing completed trials."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from tests.tuning.test_sweep import _record, _rows

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _child(directory, kill_at, when):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "tests.tuning._sweep_kill_child", str(directory),
               str(kill_at), when]  # fmt: skip
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)


def _completed(directory):
    if not (directory / "trials.csv").exists():
        return []
    return [r["trial_id"] for r in _rows(directory) if r["status"] == "completed"]


@pytest.mark.slow
def test_a_sweep_killed_twice_resumes_without_redoing_or_losing_trials(tmp_path):
    directory = tmp_path / "study"
    first = _child(directory, 3, "begin")  # killed as the third trial starts
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    done = _completed(directory)
    assert done == ["0", "1"]
    kept = {t: _record(directory, t) for t in done}
    second = _child(directory, 1, "epoch")  # killed inside the resumed third trial
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert _completed(directory) == ["0", "1"]
    last = _child(directory, 0, "never")
    assert last.returncode == 0, last.stderr[-2000:]
    rows = _rows(directory)
    assert [(r["trial_id"], r["status"]) for r in rows] == [(str(i), "completed") for i in range(4)]
    assert {t: _record(directory, t) for t in done} == kept  # completed trials untouched
    assert len({(r["hp:units"], r["hp:lr"]) for r in rows}) == 4
