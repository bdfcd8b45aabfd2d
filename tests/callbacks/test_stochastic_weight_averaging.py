"""StochasticWeightAveraging and recompute_batch_norm against closed forms (numpy)."""

import copy

import keras
import numpy as np
import pytest

from nnkit._arrays import to_numpy
from nnkit.callbacks import BackupAndRestore, StochasticWeightAveraging, recompute_batch_norm
from nnkit.callbacks.stochastic_weight_averaging import averaging_epochs
from nnkit.schedules import Constant, StepDecay
from nnkit.testing import assert_round_trip

ROWS, BATCH = 16, 8  # 2 steps per epoch


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 3)).astype("float32") * np.array([1.0, 2.0, 0.5], "float32") + 1.0
    return x, (x @ np.array([[1.0], [-2.0], [0.5]], "float32") + 0.3).astype("float32")


def _model(learning_rate=0.05, batch_norm=False):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((3,))]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization(momentum=0.5))
    model = keras.Sequential(
        [*layers, keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.SGD(learning_rate, momentum=0.5), loss="mse")
    return model


class Record(keras.callbacks.Callback):
    """Trainable weights at every epoch end, and the rate at every batch."""

    def __init__(self):
        super().__init__()
        self.weights, self.rates = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(to_numpy(self.model.optimizer.learning_rate)))

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([to_numpy(w).copy() for w in self.model.trainable_variables])


def _fit(model, callbacks, epochs=7, **kwargs):
    x, y = _data()
    return model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
        **kwargs,
    )


@pytest.mark.parametrize(("start", "period"), [(2, 2), (0, 1), (5, 3)])
def test_average_is_the_mean_of_the_recorded_weights(start, period):
    model, record = _model(), Record()
    swa = StochasticWeightAveraging(start, period)
    _fit(model, [record, swa])
    epochs = [e for e in range(7) if e >= start and (e - start) % period == 0]
    assert swa.averaged_epochs == epochs == averaging_epochs(start, period, 7)
    for got, *seen in zip(
        model.trainable_variables, *(record.weights[e] for e in epochs), strict=True
    ):
        np.testing.assert_allclose(to_numpy(got), np.mean(seen, axis=0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("start", "epochs"), [(3, 3), (10, 3)])
def test_a_window_that_cannot_start_is_refused_at_train_begin(start, epochs):
    with pytest.raises(ValueError, match=f"start_epoch={start}, epochs={epochs}"):
        _fit(_model(), [StochasticWeightAveraging(start)], epochs=epochs)


def test_stopped_before_the_window_warns_and_leaves_the_weights():
    model, record = _model(), Record()
    swa = StochasticWeightAveraging(5)
    stop = keras.callbacks.EarlyStopping("loss", min_delta=100.0, patience=1)
    with pytest.warns(UserWarning, match="averaged no epoch"):
        _fit(model, [record, swa, stop], epochs=7)
    assert swa.average is None and len(record.weights) == 2
    for got, last in zip(model.trainable_variables, record.weights[-1], strict=True):
        np.testing.assert_array_equal(to_numpy(got), last)


def test_constant_rate_from_the_start_epoch_then_restored():
    model, record = _model(0.05), Record()
    _fit(model, [StochasticWeightAveraging(3, learning_rate=0.01), record], epochs=5)
    np.testing.assert_allclose(record.rates, [0.05] * 6 + [0.01] * 4, rtol=1e-6)
    assert float(to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.05)


def test_schedule_rate_is_joined_after_the_optimizers_schedule():
    """η(t) = 0.05 for t < 3·S, then StepDecay(0.02, 2, 0.5)(t − 3·S), S = 2 steps per epoch."""
    model, record = _model(Constant(0.05)), Record()
    swa = StochasticWeightAveraging(3, learning_rate=StepDecay(0.02, 2, 0.5))
    _fit(model, [swa, record], epochs=6)
    want = [0.05 if t < 6 else 0.02 * 0.5 ** ((t - 6) // 2) for t in range(12)]
    np.testing.assert_allclose(record.rates, want, rtol=1e-6)
    assert float(to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.05)


def test_schedule_rate_needs_a_schedule_on_the_optimizer():
    with pytest.raises(ValueError, match="float rate"):
        _fit(_model(0.05), [StochasticWeightAveraging(1, learning_rate=Constant(0.01))], epochs=2)


def test_batch_norm_statistics_are_recomputed_at_the_end():
    """BN on the inputs: its statistics become the mean of the batch means and variances of x."""
    x, _ = _data()
    model = _model(batch_norm=True)
    swa = StochasticWeightAveraging(1, batch_norm_data=x, batch_size=4)
    _fit(model, [swa], epochs=3)
    norm = model.layers[0]
    batches = x.reshape(4, 4, 3).astype("float64")
    np.testing.assert_allclose(
        to_numpy(norm.moving_mean), batches.mean(axis=1).mean(axis=0), rtol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(norm.moving_variance), batches.var(axis=1).mean(axis=0), rtol=1e-5
    )
    assert norm.momentum == 0.5  # restored


def test_batch_norm_without_data_warns():
    model = _model(batch_norm=True)
    with pytest.warns(UserWarning, match="batch_norm_data"):
        _fit(model, [StochasticWeightAveraging(1)], epochs=2)


def test_recompute_batch_norm_on_request_with_a_dataset_and_steps():
    import tensorflow as tf

    x, y = _data()
    model = _model(batch_norm=True)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    assert recompute_batch_norm(model, dataset, steps=1) == 1
    np.testing.assert_allclose(to_numpy(model.layers[0].moving_mean), x[:8].mean(axis=0), rtol=1e-5)
    assert recompute_batch_norm(_model(), x) == 0  # no batch normalization: nothing runs


class _Interrupted(Exception):
    pass


class _InterruptAt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 4:
            raise _Interrupted


@pytest.mark.parametrize("rate", [0.01, "schedule"])
def test_resumes_through_backup_and_restore(tmp_path, rate):
    def parts():
        base = Constant(0.05) if rate == "schedule" else 0.05
        swa_rate = StepDecay(0.02, 2, 0.5) if rate == "schedule" else rate
        return _model(base), StochasticWeightAveraging(2, 2, learning_rate=swa_rate)

    reference, swa = parts()
    _fit(reference, [swa])
    model, first = parts()
    with pytest.raises(_Interrupted):
        _fit(model, [BackupAndRestore(str(tmp_path)), first, _InterruptAt()])
    model, resumed = parts()
    _fit(model, [BackupAndRestore(str(tmp_path)), resumed])
    assert resumed.averaged_epochs == swa.averaged_epochs == [2, 4, 6]
    for got, want in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_state_round_trip_config_and_deep_copy():
    x, _ = _data()
    swa = StochasticWeightAveraging(1, 2, learning_rate=StepDecay(0.02, 2), batch_norm_data=x)
    restored = assert_round_trip(swa)
    assert restored.get_config() == swa.get_config() and restored.batch_norm_data is None
    copied = copy.deepcopy(swa)
    assert copied.batch_norm_data is x
    _fit(_model(), [StochasticWeightAveraging(1)], epochs=2)
    swa.set_state({"averaged_epochs": [1, 3], "average": [np.ones(2)], "replaced_rate": None})
    state = swa.get_state()
    assert state["averaged_epochs"] == [1, 3] and np.array_equal(state["average"][0], np.ones(2))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"start_epoch": -1}, ValueError, "start_epoch=-1"),
        ({"start_epoch": True}, TypeError, "start_epoch"),
        ({"start_epoch": 1, "period": 0}, ValueError, "period=0"),
        ({"start_epoch": 1, "learning_rate": -0.1}, ValueError, "learning_rate"),
        ({"start_epoch": 1, "learning_rate": "fast"}, TypeError, "learning_rate"),
        ({"start_epoch": 1, "batch_size": 0}, ValueError, "batch_size=0"),
    ],
)
def test_arguments_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        StochasticWeightAveraging(**kwargs)
