"""nnkit.distribute.synchronize_batch_norm: moving statistics of the global batch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.distribute import synchronize_batch_norm
from nnkit.layers import DenseBlock
from tests.distribute._mirrored import mirrored_strategy

MOMENTUM, BATCH, STEPS = 0.5, 16, 4
RNG = np.random.default_rng(0)
# Row-dependent location and scale, so that each half of a batch has other statistics.
ROWS = np.arange(BATCH * STEPS)[:, None]
X = (RNG.normal(size=(BATCH * STEPS, 3)) * (1 + ROWS / 32) + ROWS / 16).astype("float32")
Y = RNG.normal(size=(BATCH * STEPS, 1)).astype("float32")


def moving_statistics(batches, mean=None, variance=None):
    """Keras's update rule, in numpy: ``m <- m*momentum + batch_stat*(1 - momentum)``."""
    mean = np.zeros(3) if mean is None else mean
    variance = np.ones(3) if variance is None else variance
    for batch in batches:
        mean = mean * MOMENTUM + batch.mean(0) * (1 - MOMENTUM)
        variance = variance * MOMENTUM + batch.var(0) * (1 - MOMENTUM)  # biased, as tf.nn.moments
    return mean, variance


def global_batches(x=X):
    return [x[i : i + BATCH] for i in range(0, len(x), BATCH)]


def first_replica_batches(x=X):
    """Replica 0 of two gets the first half of each global batch."""
    return [x[i : i + BATCH // 2] for i in range(0, len(x), BATCH)]


def build(strategy):
    with strategy.scope():
        inner = keras.Sequential(
            [keras.layers.BatchNormalization(momentum=MOMENTUM, name="bn")], name="inner"
        )
        model = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model, inner.get_layer("bn")


def fit(model, x=X, y=Y):
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)


def assert_statistics(bn, expected, atol=2e-6):
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected[0], atol=atol)
    np.testing.assert_allclose(bn.moving_variance.numpy(), expected[1], atol=atol)


@pytest.fixture(scope="module")
def mirrored():
    return mirrored_strategy()


def test_one_device_follows_the_global_batch():
    model, bn = build(tf.distribute.get_strategy())
    fit(model)
    assert_statistics(bn, moving_statistics(global_batches()))


def test_unsynchronized_under_mirrored_strategy_keeps_the_first_replicas_statistics(mirrored):
    """The trap: each replica updates from its half; the first replica's values are read."""
    model, bn = build(mirrored)
    fit(model)
    assert_statistics(bn, moving_statistics(first_replica_batches()))
    expected = moving_statistics(global_batches())
    assert np.abs(bn.moving_variance.numpy() - expected[1]).max() > 0.1
    replicas = [value.numpy() for value in bn.moving_mean.value.values]
    assert np.abs(replicas[0] - replicas[1]).max() > 0.1  # the replicas drift apart


def test_synchronized_under_mirrored_strategy_equals_one_device(mirrored):
    model, bn = build(mirrored)
    assert synchronize_batch_norm(model) == [bn.path]
    fit(model)
    assert_statistics(bn, moving_statistics(global_batches()))
    replicas = [value.numpy() for value in bn.moving_mean.value.values]
    np.testing.assert_array_equal(replicas[0], replicas[1])


def test_converting_after_fit_retraces_the_train_step(mirrored):
    model, bn = build(mirrored)
    fit(model, X[:BATCH], Y[:BATCH])  # one unsynchronized step traces the train function
    weights = [w.copy() for w in model.get_weights()]
    synchronize_batch_norm(model)
    assert model.train_function is None
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)  # nothing rebuilt, weights kept
    fit(model, X[BATCH:], Y[BATCH:])
    first = moving_statistics(first_replica_batches(X[:BATCH]))
    assert_statistics(bn, moving_statistics(global_batches(X[BATCH:]), *first))


def test_nested_layers_are_converted_and_listed():
    inputs = keras.Input((3,))
    inner = keras.Sequential([keras.layers.BatchNormalization(name="deep")], name="inner")
    hidden = DenseBlock(4, normalization="batch", name="block")(inner(inputs))
    done = keras.layers.BatchNormalization(synchronized=True, name="done")(hidden)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="top")(done))
    converted = synchronize_batch_norm(model)
    assert converted[0] == "inner/deep" and converted[-1] == "top"
    assert len(converted) == 3 and converted[1].startswith("block/")
    bns = [x for x in model._flatten_layers() if isinstance(x, keras.layers.BatchNormalization)]
    assert len(bns) == 4 and all(layer.synchronized for layer in bns)
    assert synchronize_batch_norm(model) == []


def test_a_single_layer_and_save_and_load(tmp_path):
    layer = keras.layers.BatchNormalization()
    assert synchronize_batch_norm(layer) == [layer.name]  # not built: no path yet
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    synchronize_batch_norm(model)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert loaded.layers[0].synchronized


def test_errors():
    with pytest.raises(TypeError, match="Received: model='model'"):
        synchronize_batch_norm("model")
