"""Cyclical against PyTorch ``CyclicLR``'s documented definition, written here.

torch is not a dependency: ``cyclic_reference`` follows ``CyclicLR.get_lr``
as PyTorch documents it (cycle, x, scale factor, ``scale_fn`` per mode with
``scale_mode`` "cycle" or "iterations") with ``math`` only.
"""

import math

import numpy as np
import pytest

from nnkit.schedules import Cyclical


def cyclic_reference(t, base_lr, max_lr, up, down=None, mode="triangular", gamma=1.0):
    down = up if down is None else down
    total = up + down
    step_ratio = up / total
    cycle = math.floor(1 + t / total)
    x = 1.0 + t / total - cycle
    scale_factor = x / step_ratio if x <= step_ratio else (x - 1) / (step_ratio - 1)
    height = (max_lr - base_lr) * scale_factor
    if mode == "triangular":
        return base_lr + height * 1.0
    if mode == "triangular2":
        return base_lr + height * (1 / (2.0 ** (cycle - 1)))  # scale_mode "cycle"
    return base_lr + height * gamma**t  # exp_range, scale_mode "iterations"


CASES = [
    dict(base_lr=0.01, max_lr=0.1, up=10),
    dict(base_lr=0.0, max_lr=1.0, up=7, down=3),
    dict(base_lr=0.001, max_lr=0.1, up=4, down=9, mode="triangular2"),
    dict(base_lr=0.01, max_lr=0.1, up=5, mode="exp_range", gamma=0.97),
]


def _make(c):
    return Cyclical(c["base_lr"], c["max_lr"], c["up"], c.get("down"),
                    mode=c.get("mode", "triangular"), gamma=c.get("gamma", 1.0))  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_matches_pytorch_definition_start_middle_end_beyond(evaluate, case):
    steps = list(range(0, 60)) + [1000, 1003]
    got = evaluate(_make(case), steps)
    want = [cyclic_reference(t, **case) for t in steps]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_landmarks():
    lr = Cyclical(0.01, 0.1, 10, 30)
    assert float(lr(0)) == pytest.approx(0.01)
    assert float(lr(10)) == pytest.approx(0.1)  # the peak after up_steps
    assert float(lr(25)) == pytest.approx(0.01 + 0.09 * 0.5)  # halfway down
    assert float(lr(40)) == pytest.approx(0.01)  # the next cycle starts
    tri2 = Cyclical(0.0, 1.0, 10, mode="triangular2")
    assert [float(tri2(t)) for t in (10, 30, 50)] == pytest.approx([1.0, 0.5, 0.25])


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((0.2, 0.1), {}, ValueError, "min_learning_rate"),
        ((0.0, 0.0), {}, ValueError, "max_learning_rate"),
        ((0.01, 0.1, 0), {}, ValueError, "up_steps"),
        ((0.01, 0.1, 5, 0), {}, ValueError, "down_steps"),
        ((0.01, 0.1), {"mode": "cosine"}, ValueError, "mode"),
        ((0.01, 0.1), {"mode": "exp_range", "gamma": 0.0}, ValueError, "gamma"),
        ((0.01, 0.1), {"gamma": 0.9}, ValueError, "exp_range"),
        ((0.01, 0.1, True), {}, TypeError, "up_steps"),
    ],
)
def test_bad_arguments(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        Cyclical(*args, **kwargs)
