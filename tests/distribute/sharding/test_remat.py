"""nnkit.distribute.Remat: the same losses and gradients as the plain model, under plan_layout.

On CPU only the numbers can be tested: XLA:CPU removes the recomputation, so
the memory a policy saves shows only on an accelerator (docs/large-models.md).
"""

import functools
import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

SCRIPT = pathlib.Path(__file__).with_name("_remat_script.py")
ROOT = SCRIPT.parents[3]


@functools.lru_cache(maxsize=1)
def _run():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


POLICIES = ["nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable", "save_names"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_losses_and_gradients_equal_the_plain_model(policy):
    out = _run()
    assert out["devices"] == 8
    entry = out["policies"][policy]
    assert entry["checkpoints"] == 2 and out["plain_checkpoints"] == 0  # one per block
    assert abs(entry["loss"] - entry["plain_loss"]) <= 1e-6 * abs(entry["plain_loss"])
    assert entry["gradient_difference"] <= 1e-6 * entry["largest_gradient"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_composes_with_plan_layout(policy):
    entry = _run()["policies"][policy]
    # The same variables are planned (paths under the wrapper), nothing shardable replicated.
    assert entry["layout_keys"] == entry["plain_layout_keys"]
    assert entry["replicated_fraction"] == 0.0
    for a, b in zip(entry["sharded_losses"], entry["plain_sharded_losses"], strict=True):
        assert abs(a - b) <= 1e-5 * abs(b)
    assert entry["weight_difference"] <= 1e-5
    names = ["ff_hidden"] if policy == "save_names" else None
    assert entry["round_trip"] == [policy, names]


@pytest.mark.slow
def test_bad_arguments_are_refused():
    errors = _run()["errors"]
    assert errors["stateful"].startswith("ValueError") and "moving_mean" in errors["stateful"]
    assert errors["policy"].startswith("ValueError") and "policy='dots'" in errors["policy"]
    assert (
        errors["missing_names"].startswith("ValueError") and "names=None" in errors["missing_names"]
    )
    assert errors["stray_names"].startswith("ValueError") and "save_names" in errors["stray_names"]
    assert errors["layer"].startswith("TypeError") and "layer='dense'" in errors["layer"]


@pytest.mark.slow
def test_doctest_passes_on_jax_with_its_jax_only_lines():
    doctests = _run()["doctests"]
    assert doctests["attempted"] >= 5 and doctests["failed"] == 0, doctests["report"]


def test_refused_on_tensorflow():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the refusal is TensorFlow's")
    from nnkit.distribute import Remat

    with pytest.raises(ValueError, match="Remat.*jax"):
        Remat(keras.layers.Dense(2))
