"""FLOPs against hand counts; the Pareto front against a brute-force definition."""

import itertools
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from nnkit.search import (
    conv1d_space,
    count_flops,
    measure_cost,
    measure_latency,
    pareto_front,
    residual_mlp_space,
)


def test_conv_flops_are_the_hand_count():
    space = conv1d_space()
    arch = {
        "stages": 2,
        "stage_0_channels": 8,
        "stage_0_kernel": 5,
        "stage_1_channels": 16,
        "stage_1_kernel": 3,
        "downsample": "max",
        "residual": False,
        "head": "flatten",
    }
    model = space.build(arch, (40,), 10)
    # conv 1: 40 long, 5·1·8; max-pool → 20; conv 2: 20 long, 3·8·16; pool → 10; dense 10·16 → 10
    expected = 2 * 5 * 1 * 8 * 40 + 2 * 3 * 8 * 16 * 20 + 2 * 160 * 10
    assert count_flops(model) == expected
    keras.backend.clear_session()


def test_mlp_flops_count_the_kernels_inside_the_blocks():
    space = residual_mlp_space()
    arch = {
        "stages": 1,
        "stage_0_depth": 1,
        "stage_0_width": 32,
        "skip": "residual",
        "activation": "relu",
        "normalization": "none",
        "dropout": 0.0,
        "pre_activation": False,
        "drop_path": 0.0,
    }
    model = space.build(arch, (6,), 3)
    # W1 6·32, W2 32·32, projection 6·32, head 32·3
    assert count_flops(model) == 2 * (6 * 32 + 32 * 32 + 6 * 32 + 32 * 3)
    keras.backend.clear_session()


def _brute_front(accuracy, cost):
    n = len(accuracy)
    return {
        i
        for i in range(n)
        if not any(
            accuracy[j] >= accuracy[i]
            and cost[j] <= cost[i]
            and (accuracy[j] > accuracy[i] or cost[j] < cost[i])
            for j in range(n)
        )
    }


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    accuracy = rng.integers(0, 5, size=12).astype(float).tolist()
    cost = rng.integers(0, 5, size=12).astype(float).tolist()
    front = pareto_front(accuracy, cost)
    assert set(front) == _brute_front(accuracy, cost)
    assert [cost[i] for i in front] == sorted(cost[i] for i in front)
    for i, j in itertools.combinations(front, 2):  # along the front, more cost buys accuracy
        if cost[i] < cost[j]:
            assert accuracy[i] < accuracy[j]


def test_pareto_front_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one length"):
        pareto_front([0.5], [1.0, 2.0])


def test_conv2d_flops_are_the_hand_count():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8×8 out, 3·3·1·4 kernel
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same")(x)  # 4×4 out, 3·3·4·6 kernel
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    expected = 2 * 3 * 3 * 1 * 4 * 64 + 2 * 3 * 3 * 4 * 6 * 16 + 2 * 6 * 10
    assert count_flops(model) == expected
    keras.backend.clear_session()


def test_measure_cost_says_which_flops_it_used():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    cost = measure_cost(model, latency=False)
    assert cost["params"] == 8 * 4 + 4 + 4 * 2 + 2
    assert cost["flops_analytic"] == 2 * 8 * 4 + 2 * 4 * 2
    if keras.backend.backend() == "jax":
        assert cost["flops_source"] == "xla"
    else:  # TensorFlow's compiler IR has no cost analysis
        assert cost["flops_source"] == "analytic" and cost["flops"] == cost["flops_analytic"]
    assert "latency_ms" not in cost
    timed = measure_cost(model, batch_size=2)
    assert timed["latency_ms"] > 0 and timed["latency_iqr_ms"] >= 0
    keras.backend.clear_session()


_JAX_FLOPS = """
import keras, numpy as np
from nnkit.search import measure_cost
dense = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, use_bias=False),
                          keras.layers.Dense(2, use_bias=False)])
conv = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, use_bias=False)])
print(measure_cost(dense, latency=False)["flops"], measure_cost(conv, latency=False)["flops"],
      measure_cost(conv, latency=False)["flops_source"])
"""


def test_on_jax_the_flops_are_xla_cost_analysis():
    pytest.importorskip("jax")
    root = str(pathlib.Path(__file__).resolve().parents[2])
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": root}
    result = subprocess.run(
        [sys.executable, "-c", _JAX_FLOPS], capture_output=True, text=True, env=env, cwd=root,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    dense, conv, source = result.stdout.split()[-3:]
    # Two matrix products without bias or activation: exactly 2·8·4 + 2·4·2.
    assert int(dense) == 2 * 8 * 4 + 2 * 4 * 2
    # A "valid" 3×3 convolution, 6×6 outputs, no padding to skip: 2·3·3·1·4·36.
    assert int(conv) == 2 * 3 * 3 * 1 * 4 * 36 and source == "xla"


class _Clock:
    """Scripted seconds: each call returns the next value."""

    def __init__(self, durations):
        self.now, self.ticks = 0.0, []
        for duration in durations:
            self.ticks += [self.now, self.now + duration]
            self.now += duration + 1.0

    def __call__(self):
        return self.ticks.pop(0)


def test_latency_is_the_median_and_iqr_of_the_timed_calls():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    durations = [0.004, 0.001, 0.003, 0.002, 0.010]  # seconds
    timing = measure_latency(model, batch_size=2, repeats=5, warmup=1, clock=_Clock(durations))
    ms = np.asarray(durations) * 1000
    assert timing["median_ms"] == pytest.approx(3.0)
    q25, q75 = np.percentile(ms, [25, 75])  # 2.0 and 4.0 with linear interpolation
    assert timing["iqr_ms"] == pytest.approx(q75 - q25) == pytest.approx(2.0)
    assert timing["min_ms"] == pytest.approx(1.0) and timing["repeats"] == 5
    keras.backend.clear_session()


def test_latency_rejects_bad_counts():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="repeats=0"):
        measure_latency(model, repeats=0)
    with pytest.raises(TypeError, match="clock"):
        measure_latency(model, clock=3)
