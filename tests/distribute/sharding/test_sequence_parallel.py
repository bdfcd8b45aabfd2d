"""Sequence parallelism and gradient accumulation under FSDP, on JAX with 8 logical CPU devices.

One subprocess (``_jax_sequence_script.py``; ``KERAS_BACKEND=jax``,
``XLA_FLAGS=--xla_force_host_platform_device_count=8``) trains the 2-block
transformer of ``_jax_model.py`` from the unsharded run's initial weights:
with the sequence split on the 4-way axis of a (2, 4) mesh (FSDP and
FSDP x TP plans; SGD and Adam, 4 steps), and with Adam's
``gradient_accumulation_steps=2`` under FSDP over 8 devices (4 updates).
"""

import numpy as np
import pytest

from tests.distribute.sharding._subprocess import run_jax_script

LOSS_RTOL = 1e-5
WEIGHT_ATOL = {"sgd": 1e-5, "adam": 1e-4}


@pytest.fixture(scope="module")
def run():
    result = run_jax_script("_jax_sequence_script.py", timeout=900)
    assert result["devices"] == 8
    return result


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "fsdp_tp"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sequence_parallel_training_equals_the_unsharded_run(run, strategy, optimizer):
    entry = run["sequence"][strategy][optimizer]
    np.testing.assert_allclose(entry["loss"], entry["unsharded_loss"], rtol=LOSS_RTOL)
    assert entry["weight_difference"] <= WEIGHT_ATOL[optimizer], entry["weight_difference"]


@pytest.mark.slow
def test_sequence_parallelism_splits_inputs_and_layer_outputs_on_the_sequence(run):
    fsdp, fsdp_tp = run["sequence"]["fsdp"], run["sequence"]["fsdp_tp"]
    layers = ["embedding", "head"] + [
        f"block_{i}_{name}" for i in range(2)
        for name in ("attention", "norm_1", "ff_1", "ff_2", "norm_2")
    ]  # fmt: skip
    # No tensor parallelism: every layer output (batch, seq, features) split on the sequence.
    assert fsdp["activations"] == {f"{name}/output": ["batch", "model", None] for name in layers}
    # Megatron: the column-parallel outputs (ff_1, the vocabulary head) keep their split.
    column = {"head", "block_0_ff_1", "block_1_ff_1"}
    assert fsdp_tp["activations"] == {
        f"{name}/output": ["batch", "model", None] for name in layers if name not in column
    }
    # Token ids and labels (batch, seq) on both axes; no sequence divisible by 4: batch only.
    layouts = fsdp["data_layouts"]
    assert layouts["(16, 8)"] == ["batch", "model"]
    assert layouts["(16, 8, 32)"] == ["batch", "model", None]
    assert layouts["(16,)"] == ["batch"]
    assert layouts["(16, 3)"] == ["batch", None]


@pytest.mark.slow
def test_gradient_accumulation_under_fsdp_equals_the_larger_batch(run):
    entry = run["accumulation"]
    assert entry["updates"] == 4  # 8 mini-batches of 8, 2 per Adam update
    np.testing.assert_allclose(entry["loss"], entry["unsharded_loss"], rtol=LOSS_RTOL)
    assert entry["difference_to_unsharded"] <= WEIGHT_ATOL["adam"]
    assert entry["difference_to_large_batch"] <= WEIGHT_ATOL["adam"]
    assert entry["moved"] > 10 * WEIGHT_ATOL["adam"]
    # The mean of the two mini-batches' first losses is the large batch's first loss
    # (same weights, equal halves of the batch).
    first = (entry["loss"][0] + entry["loss"][1]) / 2
    assert first == pytest.approx(entry["large_batch_loss"][0], rel=LOSS_RTOL)
    # Keras's accumulators take their weight's FSDP layout (add_variable_from_reference).
    for path, axes in entry["weight_specs"].items():
        name = path.replace("/", "_") + "_gradient_accumulator"
        found = [s for p, s in entry["accumulator_specs"].items() if p.endswith("/" + name)]
        assert found == [axes], (path, found)


@pytest.mark.slow
def test_a_sequence_axis_that_is_the_batch_axis_or_missing_is_refused(run):
    errors = run["errors"]
    assert "`sequence_axis` must differ from `batch_axis`" in errors["same_axis_plan"]
    assert "Received: sequence_axis='batch'" in errors["same_axis_distribution"]
    assert "Received: sequence_axis='seq'" in errors["unknown_axis"]
