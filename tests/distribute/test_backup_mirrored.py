"""BackupAndRestore under MirroredStrategy (two logical CPUs): a resumed run equals an uninterrupted one."""

import keras
import numpy as np
import pytest

from nnkit.callbacks import BackupAndRestore, EarlyStopping, LearningRateMonitor
from tests.distribute._mirrored import mirrored_strategy

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="MirroredStrategy is TensorFlow's"
)


class Interrupted(Exception):
    pass


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2:
            raise Interrupted


def _run(backup_dir, extra=()):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1))).astype("float32")
    with mirrored_strategy().scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.05), loss="mse")
    stop = EarlyStopping("loss", patience=10, restore_best_weights=True)
    monitor = LearningRateMonitor(sample_every=1)
    history = model.fit(
        x, y, batch_size=8, epochs=5, shuffle=False, verbose=0,
        callbacks=[BackupAndRestore(backup_dir), stop, monitor, *extra],
    )  # fmt: skip
    return history, model.get_weights(), stop, monitor


def test_resumed_equals_uninterrupted_under_mirrored_strategy(tmp_path):
    _, expected, stop, monitor = _run(str(tmp_path / "a"))
    with pytest.raises(Interrupted):
        _run(str(tmp_path / "b"), extra=[Interrupt()])
    history, got, resumed_stop, resumed_monitor = _run(str(tmp_path / "b"))
    assert history.epoch == [2, 3, 4]  # the crash came before epoch 2 was saved
    assert resumed_stop.best == pytest.approx(stop.best, rel=1e-6)
    assert resumed_stop.best_epoch == stop.best_epoch
    assert resumed_monitor.samples == monitor.samples
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
