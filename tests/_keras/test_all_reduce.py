"""nnkit._keras.all_reduce: functions on the gradients after the all-reduce."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from nnkit._keras import all_reduce as agg
from nnkit._keras import shadow
from tests.distribute._mirrored import mirrored_strategy

LR = 0.1
RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 3)).astype("float32")
Y = RNG.normal(size=(16, 1)).astype("float32")
W0 = RNG.normal(size=(3, 1)).astype("float32")


def linear_gradient(w, x=X, y=Y):
    """MSE gradient of the bias-free linear model ``x @ w`` (closed form)."""
    return 2.0 / len(x) * x.T @ (x @ w - y)


def train(strategy, optimizer, steps=1, batch_size=16):
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
        model.set_weights([W0])
        model.compile(optimizer=optimizer, loss="mse")
    model.fit(X, Y, batch_size=batch_size, epochs=steps, verbose=0, shuffle=False)
    return model.get_weights()[0]


def scale(factor):
    def fn(grads_and_vars):
        return [(g * factor, v) for g, v in grads_and_vars]

    return fn


def shift(amount):
    def fn(grads_and_vars):
        return [(g + amount, v) for g, v in grads_and_vars]

    return fn


def normalize(grads_and_vars):
    """Unit global norm: differs when applied to a part of the gradient instead of the sum."""
    norm = ops.sqrt(sum(ops.sum(ops.square(g)) for g, _ in grads_and_vars))
    return [(g / norm, v) for g, v in grads_and_vars]


def test_transform_runs_without_a_strategy():
    """The default strategy calls `_all_reduce_sum_gradients` too (its all-reduce is identity)."""
    optimizer = keras.optimizers.SGD(LR)
    agg.add_transform(optimizer, scale(3.0), owner="gradient_monitor")
    w = train(tf.distribute.get_strategy(), optimizer)
    np.testing.assert_allclose(w, W0 - LR * 3.0 * linear_gradient(W0), atol=1e-6)


@pytest.mark.parametrize("added_first", ["clip_after_aggregation", "gradient_monitor"])
def test_transforms_compose_in_the_order_of_their_owners(added_first):
    """The owner later in shadow.ORDER is nearer the all-reduce: it sees the gradients first."""
    optimizer = keras.optimizers.SGD(LR)
    transforms = {"gradient_monitor": scale(2.0), "clip_after_aggregation": shift(1.0)}
    for owner in sorted(transforms, key=lambda o: o != added_first):
        agg.add_transform(optimizer, transforms[owner], owner=owner)
    assert agg.owners(optimizer) == ["clip_after_aggregation", "gradient_monitor"]
    w = train(tf.distribute.get_strategy(), optimizer)
    np.testing.assert_allclose(w, W0 - LR * (2.0 * linear_gradient(W0) + 1.0), atol=1e-5)


def test_transform_sees_the_aggregated_gradient_under_mirrored_strategy():
    strategy = mirrored_strategy()
    with strategy.scope():
        optimizer = keras.optimizers.SGD(LR)
    agg.add_transform(optimizer, normalize, owner="gradient_monitor")
    w = train(strategy, optimizer)
    g = linear_gradient(W0)  # the global batch of 16, split 8 + 8 over the replicas
    np.testing.assert_allclose(w, W0 - LR * g / np.linalg.norm(g), atol=1e-6)


def test_removing_the_last_transform_restores_the_optimizer_exactly():
    optimizer = keras.optimizers.Adam(LR)
    before = dict(vars(optimizer))
    first = agg.add_transform(optimizer, scale(2.0), owner="gradient_monitor")
    second = agg.add_transform(optimizer, shift(1.0), owner="clip_after_aggregation")
    assert agg.METHOD in vars(optimizer)
    agg.remove_transform(first)
    assert agg.owners(optimizer) == [second.owner]
    agg.remove_transform(second)
    assert vars(optimizer) == before
    assert optimizer._all_reduce_sum_gradients.__func__ is type(optimizer)._all_reduce_sum_gradients
    w = train(tf.distribute.get_strategy(), keras.optimizers.SGD(LR))
    np.testing.assert_allclose(w, W0 - LR * linear_gradient(W0), atol=1e-6)


def test_an_existing_instance_override_is_kept_and_restored():
    optimizer = keras.optimizers.SGD(LR)
    own = optimizer._all_reduce_sum_gradients  # a bound method
    object.__setattr__(optimizer, "_all_reduce_sum_gradients", own)
    handle = agg.add_transform(optimizer, scale(1.0), owner="gradient_monitor")
    agg.remove_transform(handle)
    assert vars(optimizer)["_all_reduce_sum_gradients"] is own


def test_loss_scale_optimizer_uses_its_inner_optimizer():
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LR))
    handle = agg.add_transform(optimizer, scale(1.0), owner="gradient_monitor")
    assert "_all_reduce_sum_gradients" in vars(optimizer.inner_optimizer)
    agg.remove_transform(handle)
    assert "_all_reduce_sum_gradients" not in vars(optimizer.inner_optimizer)


def test_errors():
    optimizer = keras.optimizers.SGD(LR)
    with pytest.raises(TypeError, match="Received: optimizer='sgd'"):
        agg.add_transform("sgd", scale(1.0), owner="gradient_monitor")
    with pytest.raises(TypeError, match="Received: fn=3"):
        agg.add_transform(optimizer, 3, owner="gradient_monitor")
    with pytest.raises(ValueError, match="Received: owner='someone'"):
        agg.add_transform(optimizer, scale(1.0), owner="someone")
    handle = agg.add_transform(optimizer, scale(1.0), owner="gradient_monitor")
    with pytest.raises(ValueError, match="already shadows"):
        agg.add_transform(optimizer, scale(1.0), owner="gradient_monitor")
    agg.remove_transform(handle)
    agg.remove_transform(handle)  # idempotent
    assert not shadow.is_shadowed(optimizer, agg.METHOD)
    agg.add_transform(
        optimizer, lambda grads_and_vars: grads_and_vars[:0], owner="gradient_monitor"
    )
    with pytest.raises(ValueError, match="got 1, returned 0"):
        train(tf.distribute.get_strategy(), optimizer)


NON_TF_BACKEND = """
import keras
import nnkit.distribute as nd
from nnkit._keras import all_reduce
assert keras.backend.backend() == "jax"
optimizer = keras.optimizers.SGD(0.1, global_clipnorm=1.0)
model = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
model.compile(optimizer=optimizer, loss="mse")
calls = [
    lambda: all_reduce.add_transform(optimizer, lambda gv: gv, owner="gradient_monitor"),
    lambda: nd.clip_after_aggregation(optimizer),
    lambda: nd.synchronize_batch_norm(model),
    lambda: nd.check(model),
]
for call in calls:
    try:
        call()
    except ValueError as error:
        assert "Received: backend='jax'" in str(error), error
    else:
        raise SystemExit("no error")
print("ok")
"""


def test_non_tensorflow_backend_is_refused():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NON_TF_BACKEND)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
