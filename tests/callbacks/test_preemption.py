"""nnkit.callbacks.PreemptionSave: real signals mid-epoch, exact resumes, handlers put back."""

import copy
import os
import signal
import threading

import keras
import numpy as np
import pytest

from nnkit.callbacks import (
    PREEMPTED_EXIT_STATUS,
    BackupAndRestore,
    EarlyStopping,
    Preempted,
    PreemptionSave,
)

STEPS = 4  # batches per epoch


class Clock:
    """A scripted clock: ``Scheduler`` moves it one second per batch."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Scheduler(keras.callbacks.Callback):
    """Sends real signals to this process at batch ends ``{(epoch, batch): signal}``."""

    def __init__(self, at, clock=None):
        super().__init__()
        self.at, self.clock, self.epoch = at, clock, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.clock is not None:
            self.clock.now += 1.0
        number = self.at.get((self.epoch, batch))
        if number is not None:
            os.kill(os.getpid(), number)


def _fit(backup_dir, extra=(), *, epochs=5, preemption=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, "tanh"), keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.Adam(0.05), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * STEPS, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    stop = EarlyStopping("loss", patience=10)
    callbacks = [
        preemption if preemption is not None else PreemptionSave(verbose=0),
        BackupAndRestore(backup_dir),
        stop,
        *extra,
    ]
    history = model.fit(
        x, y, batch_size=4, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks
    )
    return model.get_weights(), history.epoch, stop.best


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="SIGKILL"):
        PreemptionSave(signals=["SIGKILL"])
    with pytest.raises(ValueError, match="Received: 'SIGNOPE'"):
        PreemptionSave(signals=["SIGNOPE"])
    with pytest.raises(TypeError, match="Received: signals=\\[\\]"):
        PreemptionSave(signals=[])
    with pytest.raises(ValueError, match="grace_period"):
        PreemptionSave(grace_period=0)
    with pytest.raises(ValueError, match="exit_status"):
        PreemptionSave(exit_status=256)
    assert PreemptionSave(signals="TERM").signals == ["SIGTERM"]
    assert PreemptionSave(signals=[15, "SIGUSR1"]).signals == ["SIGTERM", "SIGUSR1"]


def test_config_round_trip_and_deep_copy():
    callback = PreemptionSave(signals=["SIGTERM", "SIGINT"], grace_period=30, exit_status=99)
    again = PreemptionSave.from_config(callback.get_config())
    assert again.get_config() == callback.get_config()
    assert copy.deepcopy(callback).get_config() == callback.get_config()
    assert keras.saving.get_registered_object("nnkit>PreemptionSave") is PreemptionSave


def test_preempted_is_a_system_exit_with_the_documented_status():
    error = Preempted("stopped")
    assert isinstance(error, SystemExit) and not isinstance(error, Exception)
    assert error.code == PREEMPTED_EXIT_STATUS == 75 and str(error) == "stopped"


@pytest.mark.parametrize("at", [(1, 1), (2, 0), (2, STEPS - 1), (0, 2)])
def test_sigterm_mid_epoch_stops_at_the_next_step_and_resumes_exactly(tmp_path, at):
    reference, epochs, best = _fit(str(tmp_path / "reference"))
    before = signal.getsignal(signal.SIGTERM)
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(Preempted) as stopped:
        _fit(backup_dir, [Scheduler({at: signal.SIGTERM})])
    assert stopped.value.code == PREEMPTED_EXIT_STATUS
    # The next step boundary: the next batch, or after the last batch the next epoch.
    resume = at[0] + (at[1] == STEPS - 1)
    assert f"SIGTERM received; stopped at epoch {resume}" in str(stopped.value)
    assert signal.getsignal(signal.SIGTERM) is before  # put back
    assert os.path.exists(os.path.join(backup_dir, "callback_state.json")) == (resume > 0)
    resumed, resumed_epochs, resumed_best = _fit(backup_dir)
    assert resumed_epochs == list(range(resume, 5)) and resumed_best == best
    for a, b in zip(resumed, reference, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not os.path.exists(backup_dir)  # the finished run deleted its backup


def test_a_signal_at_the_epoch_end_writes_the_due_backup_before_stopping(tmp_path):
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(Preempted, match="at epoch 2"):
        # The last batch of epoch 1: the backup of epoch 1 is due, written at epoch 2's start.
        _fit(backup_dir, [Scheduler({(1, STEPS - 1): signal.SIGTERM})])
    _, epochs, _ = _fit(backup_dir)
    assert epochs == [2, 3, 4]


def test_the_epoch_is_finished_when_it_fits_in_the_grace_period(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(PreemptionSave, "_clock", clock)
    if True:
        # Epochs take 4 s; a signal after 1 s leaves 3 s: 1.25 * 3 <= 4 (grace) -> finish.
        finish = PreemptionSave(grace_period=4, verbose=0)
        with pytest.raises(Preempted, match="at epoch 2 "):
            _fit(
                str(tmp_path / "a"), [Scheduler({(1, 0): signal.SIGTERM}, clock)], preemption=finish
            )
        # 1.25 * 3 > 3 (grace) -> stop at the next step.
        stop = PreemptionSave(grace_period=3, verbose=0)
        with pytest.raises(Preempted, match="at epoch 1, batch 1"):
            _fit(str(tmp_path / "b"), [Scheduler({(1, 0): signal.SIGTERM}, clock)], preemption=stop)
        # A second signal stops at the next step even when the epoch would fit.
        twice = PreemptionSave(grace_period=100, verbose=0)
        signals = {(1, 0): signal.SIGTERM, (1, 1): signal.SIGTERM}
        with pytest.raises(Preempted, match="at epoch 1, batch 2"):
            _fit(str(tmp_path / "c"), [Scheduler(signals, clock)], preemption=twice)
    _, epochs, _ = _fit(str(tmp_path / "a"))
    assert epochs == [2, 3, 4]  # epoch 1 was finished and backed up


def test_a_signal_after_the_last_step_lets_fit_complete(tmp_path):
    _, epochs, _ = _fit(str(tmp_path / "b"), [Scheduler({(4, STEPS - 1): signal.SIGTERM})])
    assert epochs == [0, 1, 2, 3, 4] and not os.path.exists(tmp_path / "b")


def test_a_user_signal_and_sigint_are_opt_in(tmp_path):
    handled = PreemptionSave(signals=["SIGUSR1", "SIGINT"], exit_status=99, verbose=0)
    with pytest.raises(Preempted) as stopped:
        _fit(str(tmp_path / "a"), [Scheduler({(1, 1): signal.SIGUSR1})], preemption=handled)
    assert stopped.value.code == 99 and "SIGUSR1" in str(stopped.value)
    with pytest.raises(KeyboardInterrupt):  # SIGINT not asked for: Python's default
        _fit(str(tmp_path / "b"), [Scheduler({(1, 1): signal.SIGINT})])


def test_refused_outside_the_main_thread_and_without_a_backup(tmp_path):
    errors = []

    def run():
        try:
            _fit(str(tmp_path / "a"))
        except RuntimeError as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert errors and "only in the main thread" in str(errors[0])

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", loss="mse")
    with pytest.raises(ValueError, match="no nnkit.callbacks.BackupAndRestore"):
        model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0, callbacks=[PreemptionSave()])
    assert (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        or signal.getsignal(signal.SIGTERM) != PreemptionSave()._handle
    )


def test_after_another_exception_a_signal_goes_to_the_previous_handler(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: seen.append(number))
    try:

        class Crash(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 1:
                    raise RuntimeError("crash")

        preemption = PreemptionSave(signals=["SIGUSR1"], verbose=0)
        with pytest.raises(RuntimeError, match="crash"):
            _fit(str(tmp_path / "a"), [Crash()], preemption=preemption)
        os.kill(os.getpid(), signal.SIGUSR1)  # fit is gone: the previous handler runs
        assert seen == [signal.SIGUSR1]
        assert signal.getsignal(signal.SIGUSR1) is not None
        assert signal.getsignal(signal.SIGUSR1) != preemption._handle
    finally:
        signal.signal(signal.SIGUSR1, previous)
