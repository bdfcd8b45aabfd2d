"""Kill -9 at seeded random points, resume, and end exactly like an uninterrupted run.

The harness is ``bench/kill_resume.py`` (its docstring describes the kill
points): a worker subprocess (``PYTHONPATH`` = this repository) forks one
child per training process; each child kills itself with SIGKILL at its
kill point (a callback hook before/after it runs, mid-epoch, between
epochs, during the backup write) and the next one resumes from the backup.
Each case here chains five kill points, so one case is six processes.
"""

import importlib.util
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "kill_resume.py"


def _bench():
    spec = importlib.util.spec_from_file_location("kill_resume", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ten_kill_points_resume_identically(capsys):
    figures = _bench().main(
        [
            "--quick",
            "--points",
            "10",
            "--per-case",
            "5",
            "--seed",
            "11",
            "--orders",
            "backup-first,mixed",
        ]
    )
    assert figures["tried"] >= 10
    assert figures["differing"] == 0, figures["cases_differing"]
    assert figures["identical"] == figures["tried"]


@pytest.mark.slow
def test_the_harness_catches_keras_backup_and_restore(capsys):
    """A control: Keras's BackupAndRestore restores no callback state, so runs differ."""
    figures = _bench().main(
        [
            "--quick",
            "--points",
            "2",
            "--per-case",
            "2",
            "--seed",
            "1",
            "--orders",
            "backup-first",
            "--keras-backup",
        ]
    )
    assert figures["tried"] >= 2 and figures["differing"] >= 1, figures


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["nnkit", "keras"])
def test_the_saved_best_after_kills_is_the_uninterrupted_best(checkpoint, capsys):
    """ModelCheckpoint(save_best_only=True) under the harness; Keras's class is the control.

    With seed 3 the uninterrupted run's best is epoch 2 and it stops at epoch 5,
    so a kill after epoch 2 resumes with worse epochs: Keras's class, which
    forgets its best, overwrites the best file (keras-team/keras#17012).
    """
    figures = _bench().main(
        ["--quick", "--points", "4", "--seed", "3", "--orders", "backup-first",
         "--checkpoint", checkpoint]
    )  # fmt: skip
    assert figures["reference"]["backup-first"]["best_epoch"] == 2
    if checkpoint == "nnkit":
        assert figures["tried"] >= 4 and figures["identical"] == figures["tried"]
    else:
        assert figures["checkpoint_differing"] >= 1
