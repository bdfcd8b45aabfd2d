"""nnkit.distribute.clip_after_aggregation: the clipped update equals one device's."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit._keras import all_reduce, shadow
from nnkit.distribute import clip_after_aggregation, remove_clip_after_aggregation
from nnkit.distribute.clipping import clips_after_aggregation
from tests.distribute._mirrored import mirrored_strategy

LR, BATCH, STEPS = 0.1, 16, 4
RNG = np.random.default_rng(0)
X = RNG.normal(size=(BATCH * STEPS, 4)).astype("float32")
Y = (3.0 * RNG.normal(size=(BATCH * STEPS, 2))).astype("float32")
W0 = RNG.normal(size=(4, 2)).astype("float32")
B0 = np.zeros(2, "float32")
# Thresholds well below the gradient norms seen here, so that every step clips.
CLIPS = {"global_clipnorm": 0.5, "clipnorm": 0.5, "clipvalue": 0.2}


def reference(kind, value):
    """SGD on the global batches with Keras's clipping rule, in float64 numpy."""
    w, b = W0.astype(np.float64), B0.astype(np.float64)
    for start in range(0, len(X), BATCH):
        x, y = X[start : start + BATCH], Y[start : start + BATCH]
        residual = x @ w + b - y
        gw, gb = 2.0 / residual.size * x.T @ residual, 2.0 / residual.size * residual.sum(0)
        if kind == "global_clipnorm":
            norm = np.sqrt(np.sum(gw**2) + np.sum(gb**2))
            gw, gb = gw * min(1.0, value / norm), gb * min(1.0, value / norm)
        elif kind == "clipnorm":
            gw = gw * min(1.0, value / np.linalg.norm(gw))
            gb = gb * min(1.0, value / np.linalg.norm(gb))
        else:
            gw, gb = np.clip(gw, -value, value), np.clip(gb, -value, value)
        w, b = w - LR * gw, b - LR * gb
    return w, b


def train(strategy, kind, *, after_aggregation):
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.set_weights([W0, B0])
        optimizer = keras.optimizers.SGD(LR, **{kind: CLIPS[kind]})
        if after_aggregation:
            clip_after_aggregation(optimizer)
        model.compile(optimizer=optimizer, loss="mse")
    model.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    return model


def max_error(model, kind):
    w, b = reference(kind, CLIPS[kind])
    got_w, got_b = model.get_weights()
    return max(np.abs(got_w - w).max(), np.abs(got_b - b).max())


@pytest.fixture(scope="module")
def mirrored():
    return mirrored_strategy()


@pytest.mark.parametrize("kind", sorted(CLIPS))
def test_mirrored_equals_one_device_after_aggregation(mirrored, kind):
    model = train(mirrored, kind, after_aggregation=True)
    assert max_error(model, kind) < 1e-6  # seen: < 1e-7


def test_keras_clipping_under_mirrored_strategy_differs_from_one_device(mirrored):
    """The trap: Keras clips each replica's half of the gradient before the all-reduce."""
    single = train(tf.distribute.get_strategy(), "global_clipnorm", after_aggregation=False)
    assert max_error(single, "global_clipnorm") < 1e-6
    model = train(mirrored, "global_clipnorm", after_aggregation=False)
    assert max_error(model, "global_clipnorm") > 1e-2  # seen: 0.044


def test_one_device_is_unchanged():
    model = train(tf.distribute.get_strategy(), "global_clipnorm", after_aggregation=True)
    assert max_error(model, "global_clipnorm") < 1e-6


def test_settings_stay_in_the_config_and_survive_save_and_load(tmp_path):
    model = train(tf.distribute.get_strategy(), "global_clipnorm", after_aggregation=True)
    name = model.optimizer.name
    expected = keras.optimizers.SGD(LR, global_clipnorm=CLIPS["global_clipnorm"], name=name)
    assert model.optimizer.get_config() == expected.get_config()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.optimizer.global_clipnorm == CLIPS["global_clipnorm"]
    assert int(loaded.optimizer.iterations.numpy()) == STEPS
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # A plain Keras optimizer again: clipping per replica until applied anew.
    assert not clips_after_aggregation(loaded.optimizer)
    assert clip_after_aggregation(loaded.optimizer) is loaded.optimizer


def test_remove_restores_the_optimizer_and_apply_twice_is_one():
    optimizer = keras.optimizers.SGD(LR, clipnorm=1.0)
    before = dict(vars(optimizer))
    clip_after_aggregation(optimizer)
    clip_after_aggregation(optimizer)
    assert all_reduce.owners(optimizer) == ["clip_after_aggregation"]
    assert shadow.owners(optimizer, "_clip_gradients") == ["clip_after_aggregation"]
    assert remove_clip_after_aggregation(optimizer) is optimizer
    assert vars(optimizer) == before
    assert remove_clip_after_aggregation(optimizer) is optimizer  # no-op


def test_global_clipnorm_argument_sets_the_attribute():
    optimizer = clip_after_aggregation(keras.optimizers.Adam(), global_clipnorm=2)
    assert optimizer.global_clipnorm == 2.0 and clips_after_aggregation(optimizer)
    clip_after_aggregation(optimizer, global_clipnorm=3.0)  # updates the threshold
    assert optimizer.global_clipnorm == 3.0


def test_loss_scale_optimizer_clips_through_its_inner_optimizer():
    inner = keras.optimizers.SGD(LR, global_clipnorm=1.0)
    optimizer = keras.optimizers.LossScaleOptimizer(inner)
    assert clip_after_aggregation(optimizer) is optimizer
    assert clips_after_aggregation(inner)


def test_errors():
    with pytest.raises(ValueError, match="does not clip"):
        clip_after_aggregation(keras.optimizers.SGD())
    with pytest.raises(ValueError, match="already clips with {'clipvalue': 0.5}"):
        clip_after_aggregation(keras.optimizers.SGD(clipvalue=0.5), global_clipnorm=1.0)
    with pytest.raises(ValueError, match="Received: global_clipnorm=0.0"):
        clip_after_aggregation(keras.optimizers.SGD(), global_clipnorm=0)
    with pytest.raises(TypeError, match="Received: global_clipnorm='1'"):
        clip_after_aggregation(keras.optimizers.SGD(), global_clipnorm="1")
    with pytest.raises(TypeError, match="keras.optimizers.Optimizer"):
        clip_after_aggregation("sgd")
