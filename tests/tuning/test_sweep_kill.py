"""A sweep SIGKILLed at chosen and at seeded random moments resumes without redoing or losing
completed trials."""

import os
import pathlib
import random
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


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_a_sweep_killed_at_seeded_random_moments_loses_and_redoes_nothing(tmp_path, seed):
    # Each round kills the sweep at a random hook of a random training run, or
    # midway through a random atomic write of a study file, then resumes it.
    rng = random.Random(seed)
    directory = tmp_path / "study"
    kept, kills = {}, 0
    for _ in range(6):
        when = rng.choice(["begin", "epoch", "end", "write"])
        kill_at = rng.randint(1, 6) if when == "write" else rng.randint(1, 2)
        run = _child(directory, kill_at if kills < 3 else 0, when if kills < 3 else "never")
        assert run.returncode in (0, -signal.SIGKILL), run.stderr[-2000:]
        done = _completed(directory)
        assert set(kept) <= set(done), (when, kill_at, done)  # nothing completed is lost
        assert {t: _record(directory, t) for t in kept} == kept  # nor rewritten
        kept = {t: _record(directory, t) for t in done}
        if run.returncode == 0:
            break
        kills += 1
    assert run.returncode == 0 and kills == 3  # seed 0: all three kill points are reached
    rows = _rows(directory)
    assert [(r["trial_id"], r["status"]) for r in rows] == [(str(i), "completed") for i in range(4)]
    assert len({(r["hp:units"], r["hp:lr"]) for r in rows}) == 4  # no trial redone with new values
