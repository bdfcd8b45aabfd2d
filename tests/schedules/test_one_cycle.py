"""OneCycle against PyTorch ``OneCycleLR``'s documented definition, written here.

torch is not a dependency: ``one_cycle_reference`` re-derives the rate from
the definition in PyTorch's documentation (phases ending at
``pct_start·T − 1``, [``2·pct_start·T − 2``,] ``T − 1``; ``_annealing_cos``
and ``_annealing_linear``) with ``math`` only, walking the phases in Python.
"""

import math

import numpy as np
import pytest

from nnkit.schedules import JoinSchedules, OneCycle


def one_cycle_reference(t, max_lr, T, pct_start=0.3, anneal="cos", div=25.0, final_div=1e4,
                        three_phase=False):  # fmt: skip
    initial = max_lr / div
    minimum = initial / final_div
    if three_phase:
        phases = [(pct_start * T - 1, initial, max_lr), (2 * pct_start * T - 2, max_lr, initial),
                  (T - 1, initial, minimum)]  # fmt: skip
    else:
        phases = [(pct_start * T - 1, initial, max_lr), (T - 1, max_lr, minimum)]
    t = min(t, T - 1)  # nnkit holds the final rate; PyTorch raises past T
    start = 0.0
    for i, (end, a, b) in enumerate(phases):
        if t <= end or i == len(phases) - 1:
            pct = (t - start) / (end - start)
            if anneal == "cos":
                return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
            return (b - a) * pct + a
        start = end
    raise AssertionError("unreachable")


CASES = [
    dict(max_lr=0.1, T=100),
    dict(max_lr=0.1, T=100, pct_start=0.25, anneal="linear"),
    dict(max_lr=1.0, T=37, pct_start=0.33, div=10.0, final_div=100.0),  # fractional phase ends
    dict(max_lr=0.5, T=100, three_phase=True),
    dict(max_lr=0.1, T=5, pct_start=0.3),  # the rise ends at step 0.5: a short cycle
    dict(max_lr=0.5, T=53, pct_start=0.41, anneal="linear", three_phase=True),
]


def _make(case):
    return OneCycle(
        case["max_lr"],
        case["T"],
        rise_fraction=case.get("pct_start", 0.3),
        anneal_strategy=case.get("anneal", "cos"),
        initial_divisor=case.get("div", 25.0),
        final_divisor=case.get("final_div", 1e4),
        three_phase=case.get("three_phase", False),
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_matches_pytorch_definition_start_middle_end_beyond(evaluate, case):
    T = case["T"]
    steps = list(range(0, T + 5)) + [10 * T, 10**6]
    got = evaluate(_make(case), steps)
    want = [one_cycle_reference(t, **case) for t in steps]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7 * case["max_lr"])  # float32


def test_landmarks_of_the_default_cycle():
    lr = OneCycle(0.1, 100)  # pct_start 0.3: the peak at step 29
    assert float(lr(0)) == pytest.approx(0.1 / 25)
    assert float(lr(29)) == pytest.approx(0.1)
    assert float(lr(99)) == pytest.approx(0.1 / 25 / 1e4, rel=1e-4)
    values = np.asarray(lr(np.arange(100, dtype="float32")))
    assert np.all(np.diff(values[:30]) > 0), "the rise must rise"
    assert np.all(np.diff(values[29:]) <= 1e-9), "the anneal must never rise"


def test_three_phase_returns_to_the_initial_rate_at_2pT_minus_2():
    lr = OneCycle(1.0, 100, rise_fraction=0.3, three_phase=True)
    assert float(lr(58)) == pytest.approx(1.0 / 25, rel=1e-5)


def test_phases_are_a_join():
    assert isinstance(OneCycle(0.1, 100)._schedule, JoinSchedules)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_learning_rate=0.0, total_steps=10), "max_learning_rate"),
        (dict(max_learning_rate=0.1, total_steps=1), "total_steps"),
        (dict(max_learning_rate=0.1, total_steps=10, rise_fraction=1.0), "rise_fraction"),
        (dict(max_learning_rate=0.1, total_steps=10, rise_fraction=0.1), "rise_fraction"),
        (
            dict(max_learning_rate=0.1, total_steps=10, rise_fraction=0.15, three_phase=True),
            "rise_fraction",
        ),
        (dict(max_learning_rate=0.1, total_steps=10, anneal_strategy="cosine"), "anneal_strategy"),
        (dict(max_learning_rate=0.1, total_steps=10, initial_divisor=0.5), "initial_divisor"),
        (dict(max_learning_rate=0.1, total_steps=10, final_divisor=math.nan), "final_divisor"),
        (
            dict(max_learning_rate=0.1, total_steps=10, rise_fraction=0.6, three_phase=True),
            "three_phase",
        ),
    ],
)
def test_bad_arguments_raise_value_errors_echoing_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OneCycle(**kwargs)


def test_three_phase_must_be_a_bool():
    with pytest.raises(TypeError, match="three_phase"):
        OneCycle(0.1, 100, three_phase=1)


def test_composes_with_warmup_join_and_scaled(evaluate):
    from nnkit.schedules import Cyclical, Scaled, Warmup

    steps = [0, 5, 10, 40, 109, 110, 200]
    warm = evaluate(Warmup(OneCycle(0.1, 100), 10), steps)
    want = [(0.1 / 25) * t / 10 if t < 10 else one_cycle_reference(t - 10, 0.1, 100) for t in steps]
    np.testing.assert_allclose(warm, want, rtol=2e-5, atol=1e-8)
    joined = evaluate(JoinSchedules([OneCycle(0.1, 100), Cyclical(0.0, 0.01, 10)], [100]), steps)
    tail = [abs(((t - 100) / 10 + 1) % 2 - 1) * 0.01 for t in steps]  # triangle, period 20
    want = [one_cycle_reference(t, 0.1, 100) if t < 100 else tail[i] for i, t in enumerate(steps)]
    np.testing.assert_allclose(joined, want, rtol=2e-5, atol=1e-8)
    half = evaluate(Scaled(OneCycle(0.1, 100), 0.5), steps)
    np.testing.assert_allclose(half, [0.5 * one_cycle_reference(t, 0.1, 100) for t in steps],
                               rtol=2e-5, atol=1e-9)  # fmt: skip
