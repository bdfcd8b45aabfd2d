"""ExceptionSave: the save on an exception in fit, and the exact resume from it."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from nnkit._keras import train_function
from nnkit.callbacks import BackupAndRestore, EarlyStopping, ExceptionSave
from tests.callbacks import _exception_run as R

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _same(weights, other):
    assert len(weights) == len(other)
    for a, b in zip(weights, other, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return R.run(str(tmp_path_factory.mktemp("uninterrupted")))


# Global steps (6 batches an epoch): mid-epoch 0, mid-epoch 2, an epoch's first batch.
@pytest.mark.parametrize("fail_at", [4, 15, 12])
def test_a_data_error_resumes_exactly(fail_at, uninterrupted, tmp_path):
    """The data raises at a step; the rerun ends bit-identical to the uninterrupted run."""
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(Exception, match="the data source went away"):
        R.run(backup_dir, fail_at)
    weights, losses = R.run(backup_dir)
    want_weights, want_losses = uninterrupted
    _same(weights, want_weights)
    assert losses == {e: want_losses[e] for e in losses}  # the resumed epochs' logs
    assert min(losses) <= fail_at // R.BATCHES  # resumed at (or before) the failed epoch


def test_a_data_error_between_micro_batches_resumes_exactly(tmp_path):
    """With gradient accumulation (N=4, across epochs of 6 batches), a failure in epoch 1:
    the accumulators, optimizer variables, are saved with the rest."""
    want_weights, want_losses = R.run(str(tmp_path / "want"), accumulation=4)
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(Exception, match="the data source went away"):
        R.run(backup_dir, 9, accumulation=4)
    weights, losses = R.run(backup_dir, accumulation=4)
    _same(weights, want_weights)
    assert losses == {e: want_losses[e] for e in losses}


@pytest.mark.slow
def test_a_data_error_at_random_steps_in_a_child_process(tmp_path):
    """A child process whose data raises at seeded random steps; a rerun resumes exactly."""

    def child(backup_dir, out, fail_at):
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
        command = [sys.executable, "-m", "tests.callbacks._exception_run"]
        return subprocess.run(
            [*command, backup_dir, out, str(fail_at)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=300,  # a hang fails the test instead of holding a CI worker
        ).returncode

    def read(path):
        data = np.load(path)
        weights = [data[f"arr_{i}"] for i in range(len(data.files) - 2)]
        return weights, dict(zip(data["epochs"].tolist(), data["losses"].tolist(), strict=True))

    want = str(tmp_path / "want.npz")
    assert child(str(tmp_path / "b0"), want, -1) == 0
    want_weights, want_losses = read(want)
    rng = np.random.default_rng(26)
    for i, fail_at in enumerate(rng.integers(1, R.BATCHES * R.EPOCHS, size=2)):
        backup_dir, out = str(tmp_path / f"b{i + 1}"), str(tmp_path / f"out{i}.npz")
        assert child(backup_dir, out, fail_at) == 3  # failed
        assert child(backup_dir, out, -1) == 0  # resumed
        weights, losses = read(out)
        _same(weights, want_weights)
        assert losses == {e: want_losses[e] for e in losses}, fail_at


# -- errors in callbacks and in the train step --------------------------------------


class Raise(keras.callbacks.Callback):
    """Raises ``error`` in ``hook`` at ``epoch`` (and ``batch`` for batch hooks)."""

    def __init__(self, hook, epoch, batch=None, error=None):
        super().__init__()
        self.hook, self.at, self.batch = hook, epoch, batch
        self.error = error or RuntimeError("a callback failed")
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self.hook == "on_epoch_begin" and epoch == self.at:
            raise self.error

    def on_train_batch_end(self, batch, logs=None):
        if self.hook == "on_train_batch_end" and (self.epoch, batch) == (self.at, self.batch):
            raise self.error


def _fit(backup_dir, *extra, first=(), epochs=4):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.01), loss="mse")
    save = ExceptionSave(verbose=0)
    callbacks = [*first, BackupAndRestore(backup_dir), save, EarlyStopping("loss"), *extra]
    history = model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0,
                        callbacks=callbacks)  # fmt: skip
    return model, history, save


def test_a_callback_error_propagates_unchanged_and_the_last_backup_stands(tmp_path):
    """A batch-end error leaves no consistent new cut: the rerun resumes from the last backup."""
    want, _, _ = _fit(str(tmp_path / "want"))
    error = RuntimeError("a callback failed")
    with pytest.raises(RuntimeError) as caught:
        _fit(str(tmp_path / "b"), Raise("on_train_batch_end", 2, batch=1, error=error))
    assert caught.value is error  # the same object
    model, history, _ = _fit(str(tmp_path / "b"))
    assert history.epoch == [2, 3]  # the backup written as epoch 2 began
    _same(model.get_weights(), want.get_weights())


def test_an_epoch_begin_error_writes_the_backup_that_was_due(tmp_path):
    """Raised before BackupAndRestore's hook: the epoch-end cut is complete, and saved."""
    want, _, _ = _fit(str(tmp_path / "want"))
    with pytest.raises(RuntimeError):
        _, _, save = _fit(str(tmp_path / "b"), first=[Raise("on_epoch_begin", 2)])
    model, history, _ = _fit(str(tmp_path / "b"))
    assert history.epoch == [2, 3]  # without ExceptionSave: [1, 2, 3]
    _same(model.get_weights(), want.get_weights())


def test_without_exception_save_the_due_backup_is_lost(tmp_path):
    """The control of the test above: Keras's fit has no hook that would write it."""
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    backup_dir = str(tmp_path / "b")
    with pytest.raises(RuntimeError):
        model.fit(x, y, epochs=4, verbose=0,
                  callbacks=[Raise("on_epoch_begin", 2), BackupAndRestore(backup_dir)])  # fmt: skip
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[BackupAndRestore(backup_dir)])
    assert history.epoch == [1, 2, 3]


def test_a_train_step_error_keeps_the_last_backup_and_says_so(tmp_path):
    class Failing(keras.Sequential):
        def train_step(self, data):
            raise ValueError("the step failed")

    keras.backend.clear_session()
    model = Failing([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", loss="mse")
    save = ExceptionSave(verbose=0)
    with pytest.raises(ValueError, match="the step failed"):
        model.fit(np.ones((8, 3)), np.zeros((8, 1)), epochs=2, verbose=0,
                  callbacks=[BackupAndRestore(str(tmp_path)), save])  # fmt: skip
    assert "ValueError in the train step" in save.save_message
    assert "nothing new saved" in save.save_message
    assert train_function.current(model) is not save._guard  # put back


def test_the_train_function_is_put_back_after_fit(tmp_path):
    model, _, save = _fit(str(tmp_path / "b"), epochs=1)
    assert save._guard is None
    assert "ExceptionSave" not in repr(train_function.current(model))
    model.fit(np.ones((8, 3)), np.ones((8, 1)), epochs=1, verbose=0)  # a plain fit still works


def test_refused_without_a_backup():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", loss="mse")
    with pytest.raises(ValueError, match="no nnkit.callbacks.BackupAndRestore"):
        model.fit(np.ones((8, 3)), np.zeros((8, 1)), verbose=0, callbacks=[ExceptionSave()])


@pytest.mark.parametrize(
    ("verbose", "error"), [(-1, ValueError), (True, TypeError), ("1", TypeError)]
)
def test_verbose_is_validated(verbose, error):
    with pytest.raises(error, match="verbose"):
        ExceptionSave(verbose=verbose)


def test_state_round_trip():
    save = ExceptionSave()
    assert save.get_state() == {"epoch": None, "batches": 0, "metrics": []}
    save.set_state({"epoch": 2, "batches": 3, "metrics": [np.ones(())]})
    assert save._resume[:2] == (2, 3)
    assert ExceptionSave.from_config(save.get_config()).get_config() == {"verbose": 1}
