"""Optimizer state under ZeRO-1 and FSDP: nnkit's Shampoo, SOAP and KFAC on 8 JAX devices.

One subprocess (``KERAS_BACKEND=jax``, 8 logical CPU devices) trains a
3-layer MLP (8 → 16 → 16 → 8) for 4 steps with Shampoo and with SOAP,
unsharded and under ``"dp"``, ``"fsdp"`` and ``"zero1"``, and with KFAC
(fixed rate) unsharded and under ``"dp"``, ``"fsdp"`` and ``"zero1"``, from the same
initial weights (and KFAC on a model of every layer kind it factors, under
``"fsdp"``); the tests compare the runs and check where each optimizer
variable went (Keras's own optimizers under ZeRO-1 are tested with the
transformer in test_sharded_training.py).
"""

import numpy as np
import pytest

from tests.distribute.sharding._subprocess import run_jax_script

LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-4  # Shampoo and SOAP are Adam-like: Adam's tolerance
IN, H, OUT = 8, 16, 8


@pytest.fixture(scope="module")
def run():
    return run_jax_script("_jax_optimizer_state.py", timeout=900)


def _floats():
    """Float32 entries of each optimizer's state: (moments, factors), from the layer sizes."""
    weights = IN * H + H + H * H + H + H * OUT + OUT
    # Per kernel: a statistic and a root (Shampoo) or basis (SOAP) for each side.
    factors = 2 * ((IN**2 + H**2) + (H**2 + H**2) + (H**2 + OUT**2))
    vectors = H + H + OUT
    return 2 * weights, factors, 2 * vectors  # two moments each (momentum, velocity)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["shampoo", "soap"])
@pytest.mark.parametrize("strategy", ["dp", "fsdp", "zero1"])
def test_sharded_state_trains_as_the_unsharded_run(run, optimizer, strategy):
    entry = run[optimizer][strategy]
    np.testing.assert_allclose(entry["loss"], entry["unsharded_loss"], rtol=LOSS_RTOL)
    assert entry["weight_difference"] <= WEIGHT_ATOL, entry["weight_difference"]
    assert entry["moved"] > 100 * WEIGHT_ATOL  # it trained (and was preconditioned)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["shampoo", "soap"])
def test_state_per_device_follows_the_layout(run, optimizer):
    moments, factors, vector_moments = _floats()
    counters = 8  # the step counter and the learning rate, 4 bytes each, whole
    entries = run[optimizer]
    assert entries["dp"]["state_bytes"] == 4 * (moments + factors) + counters
    # FSDP: kernels and every factor (8 x 8 or 16 x 16) split 8 ways, bias moments whole.
    fsdp = 4 * ((moments - vector_moments + factors) / 8 + vector_moments) + counters
    assert entries["fsdp"]["state_bytes"] == fsdp
    # ZeRO-1: everything but the two counters split 8 ways.
    assert entries["zero1"]["state_bytes"] == 4 * (moments + factors) / 8 + counters
    for strategy, entry in entries.items():
        assert entry["planned_bytes"] == entry["state_bytes"], strategy
        assert {p: r["axes"] for p, r in entry["planned"].items()} == entry["specs"] or all(
            entry["specs"][p] in (r["axes"], []) for p, r in entry["planned"].items()
        )


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["shampoo", "soap"])
def test_factors_split_on_their_weights_axis_and_say_why(run, optimizer):
    fsdp = run[optimizer]["fsdp"]
    factor = "basis" if optimizer == "soap" else "root"
    for kernel in ("ff_1_kernel", "ff_2_kernel", "head_kernel"):
        for side in ("left", "right"):
            for kind in ("statistic", factor):
                path = f"nnkit_optimizer_{kernel}_{side}_{kind}_0_0"
                assert fsdp["specs"][path] == ["batch", None], path
                assert (
                    "gathered whole where it is eigendecomposed" in fsdp["planned"][path]["reason"]
                )
        assert fsdp["specs"][f"nnkit_optimizer_{kernel}_momentum"] in (
            [None, "batch"],
            ["batch", None],
        )
    assert fsdp["specs"]["nnkit_optimizer_ff_1_kernel_momentum"] == [None, "batch"]  # (8, 16)
    assert fsdp["planned"]["nnkit_optimizer_ff_1_kernel_momentum"]["reason"] == (
        "follows its weight ff_1/kernel"
    )
    zero1 = run[optimizer]["zero1"]
    assert zero1["specs"]["nnkit_optimizer_head_bias_momentum"] == ["batch"]
    assert zero1["planned"]["iteration"]["reason"] == "scalar: replicated"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["dp", "fsdp", "zero1"])
def test_kfac_sharded_state_trains_as_the_unsharded_run(run, strategy):
    entry = run["kfac"][strategy]
    np.testing.assert_allclose(entry["loss"], entry["unsharded_loss"], rtol=LOSS_RTOL)
    assert entry["weight_difference"] <= WEIGHT_ATOL, entry["weight_difference"]
    assert entry["moved"] > 100 * WEIGHT_ATOL  # it trained (and was preconditioned)


@pytest.mark.slow
def test_kfac_state_per_device_follows_the_layout(run):
    kernels, biases = IN * H + H * H + H * OUT, H + H + OUT  # one momentum each
    # Per block A ((d_in + 1)², the bias row) and G (d_out²), each with its damped inverse.
    a_floats = 2 * ((IN + 1) ** 2 + 2 * (H + 1) ** 2)
    g_floats = 2 * (H**2 + H**2 + OUT**2)
    counters = 12  # the step, the learning rate and the factor updates, 4 bytes each, whole
    entries = run["kfac"]
    assert entries["dp"]["state_bytes"] == 4 * (kernels + biases + a_floats + g_floats) + counters
    # FSDP: kernel momenta and every G (16 x 16, 8 x 8) split 8 ways; the A factors
    # (9 x 9, 17 x 17: no side divides by 8) and the bias momenta whole, deliberately.
    fsdp = 4 * (kernels / 8 + biases + a_floats + g_floats / 8) + counters
    assert entries["fsdp"]["state_bytes"] == fsdp
    assert fsdp < 0.55 * entries["dp"]["state_bytes"]
    # ZeRO-1: every variable on its largest dimension divisible by 8: all the momenta
    # (biases included) and the G factors split, the A factors (9, 17) whole.
    zero1 = 4 * ((kernels + biases) / 8 + a_floats + g_floats / 8) + counters
    assert entries["zero1"]["state_bytes"] == zero1
    specs = entries["fsdp"]["specs"]
    for layer in ("ff_1", "ff_2", "head"):
        for i, side in enumerate(("a", "g")):
            split = [None, None] if side == "a" else ["batch", None]
            assert specs[f"nnkit_optimizer_kfac_{layer}_{side}_factor"] == split, (layer, side)
            assert specs[f"nnkit_optimizer_kfac_{layer}_curvature_{i}"] == split, (layer, side)
        assert "batch" in specs[f"nnkit_optimizer_kfac_momentum_{layer}_kernel"]
    assert all(axis is None for spec in entries["dp"]["specs"].values() for axis in spec)


@pytest.mark.slow
@pytest.mark.parametrize("damping_type", ["pi", "eigen"])
def test_kfac_factors_of_every_layer_kind_under_fsdp(run, damping_type):
    entry = run["kfac_layers"][damping_type]
    np.testing.assert_allclose(entry["loss"], entry["unsharded_loss"], rtol=LOSS_RTOL)
    assert entry["weight_difference"] <= WEIGHT_ATOL, entry["weight_difference"]
    specs = {p.removeprefix("nnkit_optimizer_kfac_"): s for p, s in entry["specs"].items()}
    assert specs["emb_a_factor"] == ["batch"]  # the tokens' frequencies (32,), like the rows
    assert specs["emb_g_factor"] == ["batch", None]
    assert specs["conv_a_factor"] == [None, None]  # 3 * 16 + 1 = 49: whole, deliberately
    assert specs["conv_g_factor"] == ["batch", None]
    assert specs["ein_g_factor"] == ["batch", None]
    assert specs["out_a_factor"] == ["batch", None]  # no bias: 16 divides
    assert specs["out_g_factor"] == ["batch", None]
    # The curvature: an inverse or eigenbasis like its factor, eigenvalues whole.
    if damping_type == "pi":
        assert specs["out_curvature_0"] == specs["out_a_factor"]
        assert specs["emb_curvature_0"] == ["batch"]
    else:
        assert specs["out_curvature_0"] == ["batch", None]
        assert specs["out_curvature_1"] == [None]
        assert specs["out_curvature_2"] == ["batch", None]
        assert specs["emb_curvature_0"] == ["batch"]  # a diagonal A's eigenvalues are A's
