"""FLOPs against hand counts; the Pareto front against a brute-force definition."""

import itertools

import keras
import numpy as np
import pytest

from nnkit.search import conv1d_space, count_flops, pareto_front, residual_mlp_space


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
