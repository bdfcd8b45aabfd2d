"""CosineAnnealing against closed forms written here, independently of nnkit."""

import math

import numpy as np
import pytest

from nnkit.schedules import CosineAnnealing, Warmup


def cosine(t, eta_max, T, eta_min=0.0):
    """η_t = η_min + ½(η_max − η_min)(1 + cos(π·t/T)), η_min after T."""
    if t >= T:
        return eta_min
    return eta_min + 0.5 * (eta_max - eta_min) * (1 + math.cos(math.pi * t / T))


def sgdr(t, eta_max, T, eta_min, T0, mult, decay):
    """Warm restarts by walking the cycles one by one (no closed-form index)."""
    if t >= T:
        return eta_min
    start, length, i = 0, T0, 0
    while t >= start + length:
        start, length, i = start + length, length * mult, i + 1
    peak = max(eta_max * decay**i, eta_min)
    return eta_min + 0.5 * (peak - eta_min) * (1 + math.cos(math.pi * (t - start) / length))


def test_plain_cosine_start_middle_end_beyond(evaluate):
    steps = [0, 1, 25, 50, 75, 99, 100, 101, 10_000]
    got = evaluate(CosineAnnealing(0.1, 100, 0.001), steps)
    want = [cosine(t, 0.1, 100, 0.001) for t in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert got[0] == pytest.approx(0.1) and got[3] == pytest.approx(0.0505)
    assert got[-1] == pytest.approx(0.001)


def test_positional_order_matches_the_formula():
    lr = CosineAnnealing(0.2, 10, 0.05)
    assert float(lr(0)) == pytest.approx(0.2)
    assert float(lr(10)) == pytest.approx(0.05)


def test_warmup_rises_linearly_then_follows_cosine(evaluate):
    w, total = 10, 110
    steps = list(range(0, 130))
    got = evaluate(CosineAnnealing(0.1, total, 0.0, warmup_steps=w), steps)
    want = [0.1 * t / w if t < w else cosine(t - w, 0.1, total - w) for t in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert np.all(np.diff(got[: w + 1]) > 0), "warmup must rise"
    assert np.all(np.diff(got[w:]) <= 1e-9), "decay must never rise"
    assert got[w] == pytest.approx(0.1)  # continuity at the join


def test_warmup_is_the_combinator():
    a = CosineAnnealing(0.1, 110, 0.01, warmup_steps=10)
    b = Warmup(CosineAnnealing(0.1, 100, 0.01), 10)
    steps = range(0, 130, 3)
    np.testing.assert_allclose([float(a(t)) for t in steps], [float(b(t)) for t in steps])


@pytest.mark.parametrize(
    "T0, mult, decay",
    [(20, 1.0, 1.0), (20, 2.0, 1.0), (10, 3.0, 0.5), (7, 1.5, 0.8), (100, 2.0, 1.0)],
)
def test_warm_restarts_match_walked_cycles(evaluate, T0, mult, decay):
    T = 200
    steps = list(range(0, 215))
    got = evaluate(
        CosineAnnealing(0.1, T, 0.001, cycle_steps=T0, cycle_mult=mult, cycle_decay=decay), steps
    )
    want = [sgdr(t, 0.1, T, 0.001, T0, mult, decay) for t in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_restarts_jump_back_to_the_decayed_peak():
    lr = CosineAnnealing(1.0, 70, cycle_steps=10, cycle_mult=2.0, cycle_decay=0.5)
    # cycles start at 0, 10, 30 with peaks 1, 0.5, 0.25
    assert [float(lr(t)) for t in (0, 10, 30)] == pytest.approx([1.0, 0.5, 0.25])
    assert float(lr(9)) < 0.03 and float(lr(29)) < 0.01


def test_restarts_with_warmup(evaluate):
    steps = list(range(0, 60))
    got = evaluate(CosineAnnealing(0.1, 55, warmup_steps=5, cycle_steps=10), steps)
    want = [0.1 * t / 5 if t < 5 else sgdr(t - 5, 0.1, 50, 0.0, 10, 1.0, 1.0) for t in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_large_step_counts_stay_accurate():
    lr = CosineAnnealing(1.0, 1_000_000, cycle_steps=1000, cycle_mult=2.0)
    for t in (999, 1000, 2999, 3000, 510_999, 511_000, 999_999):
        assert float(lr(t)) == pytest.approx(sgdr(t, 1.0, 1_000_000, 0.0, 1000, 2.0, 1.0), abs=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(max_learning_rate=0.0, total_steps=10), ValueError, "max_learning_rate=0.0"),
        (dict(max_learning_rate=float("nan"), total_steps=10), ValueError, "nan"),
        (dict(max_learning_rate=True, total_steps=10), TypeError, "max_learning_rate=True"),
        (dict(max_learning_rate=0.1, total_steps=0), ValueError, "total_steps=0"),
        (dict(max_learning_rate=0.1, total_steps=2.5), ValueError, "total_steps=2.5"),
        (dict(max_learning_rate=0.1, total_steps="10"), TypeError, "total_steps='10'"),
        (dict(max_learning_rate=0.1, total_steps=10, min_learning_rate=0.2), ValueError, "0.2"),
        (
            dict(max_learning_rate=0.1, total_steps=10, warmup_steps=10),
            ValueError,
            "warmup_steps=10",
        ),
        (dict(max_learning_rate=0.1, total_steps=10, cycle_steps=0), ValueError, "cycle_steps=0"),
        (dict(max_learning_rate=0.1, total_steps=10, cycle_mult=2.0), ValueError, "cycle_steps"),
        (
            dict(max_learning_rate=0.1, total_steps=10, cycle_steps=2, cycle_mult=0.5),
            ValueError,
            "0.5",
        ),
        (
            dict(max_learning_rate=0.1, total_steps=10, cycle_steps=2, cycle_decay=0.0),
            ValueError,
            "cycle_decay=0.0",
        ),
        (
            dict(max_learning_rate=0.1, total_steps=100, cycle_steps=1e308),
            ValueError,
            "cycle_steps=1e+308",
        ),
        (dict(max_learning_rate=0.1, total_steps=10**400), ValueError, f"total_steps={10**400}"),
        (
            dict(max_learning_rate=0.1, total_steps=10, cycle_steps=np.bool_(True)),
            TypeError,
            "cycle_steps=np.True_",
        ),
    ],
)
def test_bad_arguments_are_rejected_with_the_received_value(kwargs, error, fragment):
    with pytest.raises(error, match="Received") as info:
        CosineAnnealing(**kwargs)
    assert fragment in str(info.value)


def test_cycle_steps_too_large_for_the_step_arithmetic_is_rejected_at_construction():
    # 1e308 is a whole float, so it used to pass and give NaN learning rates.
    with pytest.raises(ValueError, match=r"`cycle_steps` must be at most 2\*\*53") as info:
        CosineAnnealing(0.1, 100, cycle_steps=1e308)
    assert "Received: cycle_steps=1e+308" in str(info.value)


def test_numpy_scalars_are_accepted_like_python_numbers():
    from_numpy = CosineAnnealing(np.float32(0.5), np.int64(100), cycle_steps=np.array(50))
    plain = CosineAnnealing(0.5, 100, cycle_steps=50)
    assert from_numpy.get_config() == plain.get_config()
    assert type(from_numpy.get_config()["cycle_steps"]) is int
    assert type(from_numpy.get_config()["max_learning_rate"]) is float
