"""``plan_layout`` and ``check_layout`` on the JAX backend with 8 logical CPU devices.

The sharding needs JAX and devices chosen before JAX starts, so one
subprocess (``KERAS_BACKEND=jax``,
``XLA_FLAGS=--xla_force_host_platform_device_count=8``) plans every strategy
for a 2-block transformer, trains it from the unsharded run's initial weights
for 4 steps with SGD and with Adam, exercises the guards and runs the
modules' doctests (their JAX-only lines included), and prints JSON that the
tests below check.
"""

import re

import numpy as np
import pytest

from tests.distribute.sharding._subprocess import run_jax_script

STRATEGIES = {"dp": [8, 1], "zero1": [8, 1], "fsdp": [8, 1], "tp": [1, 8], "fsdp_tp": [2, 4]}
# Sharded against unsharded: the same computation with partial sums added in
# another order. Weights are O(1) (largest |w| about 1, the norms' gammas).
LOSS_RTOL = 1e-5
WEIGHT_ATOL = {"sgd": 1e-5, "adam": 1e-4}
# The model (d=32, 8 heads, ff=64, vocabulary 64), in float32 bytes.
D, FF, VOCAB, HEADS = 32, 64, 64, 8


@pytest.fixture(scope="module")
def run():
    return run_jax_script("_jax_script.py", timeout=1200)


def _bytes():
    """Every variable's float32 bytes and its expected share per device, per strategy."""
    attention = {"kernel": D * D, "bias": D}  # q/k/v: (d, heads, d/heads), (heads, d/heads)
    block = 3 * (attention["kernel"] + attention["bias"]) + D * D + D  # + output projection
    block += D * FF + FF + FF * D + D + 4 * D  # feed-forward and two norms
    total = VOCAB * D + 2 * block + D * VOCAB + VOCAB
    vectors = 2 * (D + FF + D + 4 * D) + VOCAB  # biases and norm scales, always whole
    return 4 * total, 4 * vectors


@pytest.mark.slow
def test_runs_on_eight_jax_devices(run):
    assert run["backend"] == "jax" and run["devices"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sharded_training_equals_the_unsharded_run(run, strategy, optimizer):
    entry = run[strategy][optimizer]
    assert run[strategy]["mesh"] == STRATEGIES[strategy]
    np.testing.assert_allclose(entry["loss"], entry["unsharded_loss"], rtol=LOSS_RTOL)
    assert entry["weight_difference"] <= WEIGHT_ATOL[optimizer], entry["weight_difference"]
    assert 0.5 < entry["largest_weight"] < 2
    assert entry["moved"] > 10 * WEIGHT_ATOL[optimizer]  # it trained
    # Placed as planned; every slot of Adam (momentum, velocity) like its weight.
    assert entry["placed"] == {p: r["axes"] for p, r in run[strategy]["report"].items()}
    assert entry["specs"] == entry["placed"]
    if optimizer == "adam":
        shapes = {p: r["shape"] for p, r in run[strategy]["report"].items()}
        for path, axes in entry["placed"].items():
            slot = re.compile(r"adam(_\d+)?/" + re.escape(path.replace("/", "_")) + "_[a-z]+")
            slots = [s for p, s in entry["slot_specs"].items() if slot.fullmatch(p)]
            if strategy == "zero1":  # the weight whole, its slots split on its largest dimension
                shape = shapes[path]
                dim = max(range(len(shape)), key=lambda d: (shape[d], -d))
                axes = [("batch" if d == dim else None) for d in range(len(shape))]
            assert len(slots) == 2 and all(s == axes for s in slots), (path, slots)


@pytest.mark.slow
def test_the_plans_place_each_layer_type_as_megatron_and_fsdp_do(run):
    tp = {p: r["axes"] for p, r in run["tp"]["report"].items()}
    for i in range(2):
        block = f"block_{i}"
        for name in ("query", "key", "value"):
            assert tp[f"{block}_attention/{name}/kernel"] == [None, "model", None]  # heads
            assert tp[f"{block}_attention/{name}/bias"] == ["model", None]
        assert tp[f"{block}_attention/attention_output/kernel"] == ["model", None, None]
        assert tp[f"{block}_ff_1/kernel"] == [None, "model"]  # column-parallel
        assert tp[f"{block}_ff_2/kernel"] == ["model", None]  # row-parallel, paired
        for vector in ("attention/attention_output/bias", "ff_1/bias", "norm_1/gamma"):
            assert tp[f"{block}_{vector}"] == [None]
    assert tp["embedding/embeddings"] == ["model", None]  # vocabulary-parallel
    assert tp["head/kernel"] == [None, "model"]  # the output vocabulary
    fsdp_tp = {p: r["axes"] for p, r in run["fsdp_tp"]["report"].items()}
    assert fsdp_tp["block_0_ff_1/kernel"] == ["batch", "model"]
    assert fsdp_tp["block_0_attention/attention_output/kernel"] == ["model", None, "batch"]
    fsdp = {p: r["axes"] for p, r in run["fsdp"]["report"].items()}
    assert fsdp["block_0_ff_1/kernel"] == [None, "batch"]  # the larger dimension (64)
    assert fsdp["block_0_attention/query/kernel"] == ["batch", None, None]  # d=32 > heads=8
    assert all(axes == [None] * len(axes) for axes in
               ({p: r["axes"] for p, r in run["dp"]["report"].items()}).values())  # fmt: skip
    assert run["dp"]["keys"] == {}


@pytest.mark.slow
def test_report_bytes_and_keys(run):
    total, vectors = _bytes()
    for strategy in STRATEGIES:
        entry = run[strategy]
        assert entry["bytes"] == total
        assert entry["fallbacks"] == []
        # Every non-vector variable is split over all 8 devices; vectors stay whole.
        whole = strategy in ("dp", "zero1")
        expected = total if whole else (total - vectors) / 8 + vectors
        assert entry["bytes_per_device"] == pytest.approx(expected)
        assert entry["replicated_fraction"] == (1.0 if whole else 0.0)
        # One exact, escaped key per variable not replicated, with its axes.
        placed = {p: r["axes"] for p, r in entry["report"].items() if any(r["axes"])}
        assert entry["keys"] == placed


@pytest.mark.slow
def test_guards_name_what_keras_ignores(run):
    errors = run["errors"]
    assert "matches no variable of model 'tiny': ['ff_1/kernel']" in errors["unmatched"]
    assert "block_0_attention/query/kernel" in errors["unmatched"]  # the real paths are shown
    assert "not placed as the layout map says" in errors["outside_scope"]
    assert "embedding/embeddings: expected ('model', None), found None" in errors["outside_scope"]
    assert "Received: strategy='zero3'" in errors["strategy"]
    assert "Received: optimizer='adam'" in errors["shard_optimizer_state"]
    assert "Received: model_axis='model'" in errors["axis"]
    assert "Received: max_replicated=1.5" in errors["max_replicated"]
    # A model built under one key, checked against an empty map: the placement differs.
    assert (
        "block_0_ff_1/kernel: expected (None, None), found (None, 'model')" in errors["replicated"]
    )


@pytest.mark.slow
def test_fallbacks_are_reported(run):
    # 6 heads, vocabulary 60 and d=48 over 8 devices.
    fallback = run["fallback"]
    assert fallback["embedding/embeddings"]["axes"] == [None, "model"]
    assert "vocabulary 60 not divisible by 8" in fallback["embedding/embeddings"]["reason"]
    assert fallback["block_0_attention/query/kernel"]["axes"] == [None, None, None]
    assert "6 heads not divisible by 8" in fallback["block_0_attention/query/kernel"]["reason"]
    assert fallback["head/kernel"]["axes"] == ["model", None]  # rows (48) instead of 60 columns
    assert "block_0_ff_1/kernel" not in fallback
    # Attention (4 · 48 · 48 per block, the biases too small to count) stays whole:
    kernels = 2 * 4 * 48 * 48
    shardable = kernels + 60 * 48 * 2 + 2 * (48 * 64 * 2) + 2 * 3 * 6 * 8
    assert run["fallback_fraction"] == pytest.approx((kernels + 2 * 3 * 6 * 8) / shardable)


@pytest.mark.slow
def test_doctests_pass_on_jax_with_their_jax_only_lines(run):
    doctests = run["doctests"]
    assert doctests["failed"] == 0, doctests["report"]
    assert doctests["attempted"] >= 10


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["dp", "zero1", "fsdp_tp"])
def test_memory_estimate_equals_the_real_compile(run, strategy):
    memory = run[strategy]["memory"]
    estimate, real = memory["estimate"], memory["real"]
    for field, value in real.items():
        assert estimate[field] == value, field
    trainable, non_trainable, optimizer, _ = memory["real_state_bytes"]
    assert estimate["parameter_bytes"] == trainable + non_trainable
    assert estimate["parameter_bytes"] == run[strategy]["bytes_per_device"]
    # Adam: two slots like each weight, plus its step and learning rate (4 bytes each);
    # under ZeRO-1 the slots split 8 ways (every weight has a dimension divisible by 8).
    slots = 2 * estimate["parameter_bytes"] / (8 if strategy == "zero1" else 1)
    assert estimate["optimizer_bytes"] == optimizer == slots + 8
    assert estimate["peak_bytes"] == (
        real["argument_bytes"] + real["output_bytes"] - real["alias_bytes"]
        + real["temporary_bytes"]
    )  # fmt: skip
