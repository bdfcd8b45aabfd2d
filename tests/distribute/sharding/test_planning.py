"""The planner's decisions (``planning.plan``), in-process on any backend.

``plan_layout`` needs the JAX backend (tests in test_sharded_training.py);
the decisions underneath read only layer types and shapes, so they are
checked here on small models against the axes written out by hand.
"""

import keras
import pytest

from nnkit.distribute import device_mesh, plan_layout
from nnkit.distribute.sharding.planning import plan
from nnkit.distribute.sharding.report import dtype_bytes, is_shardable

TP8 = {"batch": 1, "model": 8}
FSDP_TP = {"batch": 2, "model": 4}


def _axes(model, sizes, strategy):
    return {p.path: p.axes for p in plan(model, sizes, strategy).variables}


def _sequential(*layers, shape=(16,), name="net"):
    return keras.Sequential([keras.Input(shape), *layers], name=name)


def test_consecutive_dense_layers_pair_column_then_row():
    model = _sequential(
        keras.layers.Dense(64, name="up"),
        keras.layers.Dense(16, name="down"),
        keras.layers.Dense(32, name="up2"),
        keras.layers.Dense(40, name="other"),  # input 32 = up2's output: row
    )
    axes = _axes(model, TP8, "tp")
    assert axes["net/up/kernel"] == (None, "model")
    assert axes["net/down/kernel"] == ("model", None)
    assert axes["net/up2/kernel"] == (None, "model")
    assert axes["net/other/kernel"] == ("model", None)
    assert axes["net/up/bias"] == (None,)


def test_a_matmul_whose_input_is_not_the_previous_output_starts_a_pair():
    inputs = keras.Input((16,))
    a = keras.layers.Dense(64, name="a")(inputs)
    b = keras.layers.Dense(24, name="b")(inputs)  # input 16, not a's 64: column again
    model = keras.Model(inputs, [a, b], name="branches")
    axes = _axes(model, TP8, "tp")
    assert axes["a/kernel"] == (None, "model")
    assert axes["b/kernel"] == (None, "model")


def test_einsum_dense_splits_output_then_contracted_dimensions():
    model = _sequential(
        keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 64), name="up"),
        keras.layers.EinsumDense("abd,de->abe", output_shape=(None, 16), name="down"),
        shape=(4, 16),
    )
    axes = _axes(model, TP8, "tp")
    assert axes["net/up/kernel"] == (None, "model")
    assert axes["net/down/kernel"] == ("model", None)


def test_grouped_query_attention_falls_back_on_key_value_heads():
    query = keras.Input((6, 32))
    attention = keras.layers.GroupQueryAttention(4, 8, 2, name="gqa")  # 8 query, 2 kv heads
    model = keras.Model(query, attention(query, query), name="m")
    report = plan(model, {"batch": 1, "model": 4}, "tp")
    axes = {p.path: p.axes for p in report.variables}
    assert axes["gqa/query/kernel"] == (None, "model", None)
    assert axes["gqa/attention_output/kernel"] == ("model", None, None)
    assert axes["gqa/key/kernel"] == (None, None, None)  # 2 heads over 4 devices
    reasons = {p.path: p.reason for p in report.fallbacks}
    assert "2 heads not divisible by 4" in reasons["gqa/key/kernel"]
    assert set(reasons) == {f"gqa/{n}/{v}" for n in ("key", "value") for v in ("kernel", "bias")}


def test_conv_splits_output_channels_and_an_unknown_layer_is_reported():
    model = _sequential(
        keras.layers.Conv2D(16, 3, name="conv"),
        keras.layers.Conv2D(6, 3, name="narrow"),  # 6 channels over 4: replicated, reported
        keras.layers.DepthwiseConv2D(3, name="depthwise"),  # no rule
        shape=(12, 12, 3),
    )
    report = plan(model, {"batch": 1, "model": 4}, "tp")
    axes = {p.path: p.axes for p in report.variables}
    assert axes["net/conv/kernel"] == (None, None, None, "model")
    assert axes["net/narrow/kernel"] == (None,) * 4
    reasons = {p.path: p.reason for p in report.fallbacks}
    assert "6 output channels not divisible by 4" in reasons["net/narrow/kernel"]
    assert "no tensor-parallel rule" in reasons["net/depthwise/kernel"]


def test_fsdp_splits_the_largest_divisible_dimension_and_keeps_vectors():
    model = _sequential(
        keras.layers.Dense(64, name="up"),
        keras.layers.LayerNormalization(name="norm"),
        keras.layers.Dense(7, name="odd"),  # (64, 7): 64 divides
    )
    axes = _axes(model, {"batch": 8, "model": 1}, "fsdp")
    assert axes["net/up/kernel"] == (None, "batch")
    assert axes["net/odd/kernel"] == ("batch", None)
    assert axes["net/norm/gamma"] == (None,)
    both = _axes(model, FSDP_TP, "fsdp_tp")
    assert both["net/up/kernel"] == ("batch", "model")


def test_report_bytes_against_a_hand_count():
    model = _sequential(keras.layers.Dense(64, name="up"), keras.layers.Dense(16, name="down"))
    report = plan(model, FSDP_TP, "fsdp_tp")
    kernels, vectors = 16 * 64 + 64 * 16, 64 + 16
    assert report.bytes == 4 * (kernels + vectors)
    assert report.bytes_per_device == 4 * (kernels / 8 + vectors)
    assert report.shardable_bytes == 4 * kernels
    assert report.replicated_fraction == 0.0
    assert plan(model, FSDP_TP, "dp").replicated_fraction == 1.0
    assert report.fallbacks == ()
    assert "net/up/kernel" in str(report) and "replicated fraction 0.000" in str(report)


@pytest.mark.parametrize(
    ("dtype", "size"), [("float32", 4), ("bfloat16", 2), ("int64", 8), ("bool", 1)]
)
def test_dtype_bytes(dtype, size):
    assert dtype_bytes(dtype) == size


def test_shardable_means_two_dimensions_one_divisible():
    assert is_shardable((64, 7), {"batch": 8})
    assert not is_shardable((64,), {"batch": 8})
    assert not is_shardable((6, 7), {"batch": 8})
    assert not is_shardable((64, 64), {"batch": 1})


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="the refusal of other backends")
def test_plan_layout_refuses_other_backends():
    model = _sequential(keras.layers.Dense(8))
    mesh = device_mesh(1, devices=["cpu:0"])
    with pytest.raises(ValueError, match="JAX backend"):
        plan_layout(model, mesh, "fsdp")


def test_sequence_parallel_splits_outputs_with_a_divisible_sequence():
    model = _sequential(
        keras.layers.Dense(64, name="up"),
        keras.layers.Dense(16, name="down"),
        keras.layers.LayerNormalization(name="norm"),
        shape=(8, 16),
    )
    sizes = {"batch": 2, "model": 4}
    # Without tensor parallelism every (batch, seq, features) output goes on the sequence.
    report = plan(model, sizes, "fsdp", sequence_axis="model")
    seq = ("batch", "model", None)
    assert dict(report.activations) == {f"net/{n}/output": seq for n in ("up", "down", "norm")}
    # Megatron: the column-parallel output (up: features on the model axis) keeps its split.
    report = plan(model, sizes, "fsdp_tp", sequence_axis="model")
    assert dict(report.activations) == {"net/down/output": seq, "net/norm/output": seq}
    # A batch axis of size 1 is left off; a sequence of 6 does not divide by 4.
    assert dict(plan(model, {"batch": 1, "model": 4}, "dp", sequence_axis="model").activations)[
        "net/up/output"
    ] == (None, "model", None)
    odd = _sequential(keras.layers.Dense(8, name="up"), shape=(6, 16))
    assert plan(odd, sizes, "dp", sequence_axis="model").activations == ()
    flat = _sequential(keras.layers.Dense(8, name="up"))  # (batch, features): no sequence
    assert plan(flat, sizes, "dp", sequence_axis="model").activations == ()
    assert plan(model, sizes, "fsdp").activations == ()
    assert "net/down/output" in str(report)
