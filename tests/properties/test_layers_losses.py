"""Properties of nnkit's layers and losses over ranks, batch sizes (0 included) and dtype policies.

Layers (``DenseBlock``, ``ResidualBlock``, ``DropPath``, ``MCDropout``): for
inputs of rank 2 to 4 and any batch size, under the ``float32``,
``mixed_float16`` and ``mixed_bfloat16`` policies, the output has the
documented shape (the last axis becomes ``units``; the drop layers keep the
shape), the policy's compute dtype, and finite values, in training and in
inference. Losses: for any batch size >= 1 and float16/bfloat16/float32
inputs, the loss is finite and a scalar (``reduction="sum_over_batch_size"``).
An empty batch gives what Keras's own losses give (Hypothesis found it:
``Loss.__call__`` returns the empty per-example array unreduced), never NaN.
"""

import keras
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkit._arrays import to_numpy
from nnkit.layers import DenseBlock, DropPath, MCDropout, ResidualBlock
from nnkit.losses import SmoothL1, SparseCategoricalCrossentropy

POLICIES = ["float32", "mixed_float16", "mixed_bfloat16"]


def _layer(kind, units):
    return {
        "dense": lambda: DenseBlock(units, normalization="batch", dropout=0.1),
        "residual": lambda: ResidualBlock(units, drop_path=0.2),
        "drop_path": lambda: DropPath(0.3, seed=1),
        "mc_dropout": lambda: MCDropout(0.3, seed=1),
    }[kind]()


@settings(max_examples=10)
@given(
    kind=st.sampled_from(["dense", "residual", "drop_path", "mc_dropout"]),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    batch=st.sampled_from([0, 1, 2, 5]),
    policy=st.sampled_from(POLICIES),
    training=st.booleans(),
)
def test_layers_keep_shape_dtype_and_finiteness(kind, shape, batch, policy, training):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        layer = _layer(kind, shape[-1])  # ResidualBlock adds its input: same width
    finally:
        keras.config.set_dtype_policy(previous)
    x = np.random.default_rng(0).normal(size=(batch, *shape)).astype("float32")
    y = layer(x, training=training)
    assert tuple(y.shape) == (batch, *shape)
    assert keras.backend.standardize_dtype(y.dtype) == layer.compute_dtype
    assert np.all(np.isfinite(to_numpy(keras.ops.cast(y, "float32"))))


@settings(max_examples=8)
@given(
    batch=st.integers(0, 6),
    classes=st.integers(2, 5),
    dtype=st.sampled_from(["float16", "bfloat16", "float32"]),
)
def test_losses_are_finite_scalars(batch, classes, dtype):
    rng = np.random.default_rng(batch)
    y_true = rng.normal(size=(batch, classes)).astype("float32")
    y_pred = keras.ops.cast(rng.normal(size=(batch, classes)).astype("float32"), dtype)
    labels = rng.integers(0, classes, size=(batch,))
    for loss, target in (
        (SmoothL1(), y_true),
        (SparseCategoricalCrossentropy(from_logits=True), labels),
    ):
        value = to_numpy(keras.ops.cast(loss(target, y_pred), "float32"))
        keras_value = keras.losses.MeanSquaredError()(y_true, keras.ops.cast(y_pred, "float32"))
        assert value.shape == tuple(keras_value.shape), (loss, batch, dtype, value)
        assert np.all(np.isfinite(value)), (loss, batch, dtype, value)
