"""Warmup, JoinSchedules, EpochSchedule, Constant and Scaled, with closed forms."""

import math

import keras
import numpy as np
import pytest

from nnkit.schedules import (
    Constant,
    CosineAnnealing,
    EpochSchedule,
    JoinSchedules,
    MultiStepDecay,
    Scaled,
    StepDecay,
    Warmup,
)


def test_warmup_linear_from_initial_then_shifted_schedule(evaluate):
    steps = list(range(0, 50))
    got = evaluate(Warmup(StepDecay(0.1, 10, 0.5), 8, initial_learning_rate=0.02), steps)
    want = [0.02 + (0.1 - 0.02) * t / 8 if t < 8 else 0.1 * 0.5 ** ((t - 8) // 10) for t in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(np.diff(got[:9]) > 0)
    assert got[8] == pytest.approx(0.1)


def test_zero_warmup_is_the_schedule_itself():
    inner = CosineAnnealing(0.1, 20)
    lr = Warmup(inner, 0)
    assert [float(lr(t)) for t in range(25)] == pytest.approx([float(inner(t)) for t in range(25)])


def test_warmup_wraps_keras_schedules_too(evaluate):
    inner = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    steps = [0, 2, 4, 5, 15, 25]
    got = evaluate(Warmup(inner, 5), steps)
    want = [0.1 * t / 5 if t < 5 else 0.1 * 0.5 ** ((t - 5) / 10) for t in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize(
    "inner",
    [
        CosineAnnealing(0.1, 100),
        CosineAnnealing(0.1, 100, cycle_steps=30),
        StepDecay(0.1, 10),
        MultiStepDecay(0.1, [10, 20]),
        Constant(0.1),
        EpochSchedule(StepDecay(0.1, 2), 10),
        JoinSchedules([Constant(0.1), StepDecay(0.1, 5)], [10]),
    ],
    ids=lambda s: type(s).__name__,
)
def test_warmup_across_every_schedule(inner):
    """Warmup rises to the inner schedule's start and is continuous at the join."""
    lr = Warmup(inner, 10)
    values = np.array([float(lr(t)) for t in range(0, 11)])
    assert values[0] == 0.0
    assert np.all(np.diff(values) > 0)
    assert values[10] == pytest.approx(float(inner(0)))
    assert float(lr(10 + 7)) == pytest.approx(float(inner(7)))


def test_join_restarts_each_clock(evaluate):
    lr = JoinSchedules([Constant(0.05), StepDecay(0.1, 10, 0.5), Constant(0.001)], [20, 50])
    steps = [0, 19, 20, 29, 30, 49, 50, 1000]
    want = [0.05, 0.05, 0.1, 0.1, 0.05, 0.1 * 0.5**2, 0.001, 0.001]
    np.testing.assert_allclose(evaluate(lr, steps), want, rtol=1e-5)


def test_join_is_continuous_when_pieces_meet():
    warm = keras.optimizers.schedules.PolynomialDecay(0.0, 10, end_learning_rate=0.1, power=1.0)
    lr = JoinSchedules([warm, CosineAnnealing(0.1, 90)], [10])
    assert float(lr(9)) == pytest.approx(0.09)
    assert float(lr(10)) == pytest.approx(0.1)
    assert float(lr(55)) == pytest.approx(0.05)


def test_epoch_schedule_step_and_epoch_granularity(evaluate):
    spe = 7
    cos = CosineAnnealing(0.1, 10, warmup_steps=2)  # counted in epochs

    def closed(e):
        if e < 2:
            return 0.1 * e / 2
        return 0.5 * 0.1 * (1 + math.cos(math.pi * min(e - 2, 8) / 8))

    steps = list(range(0, 80))
    smooth = evaluate(EpochSchedule(cos, spe), steps)
    np.testing.assert_allclose(smooth, [closed(t / spe) for t in steps], rtol=1e-4, atol=1e-7)
    per_epoch = evaluate(EpochSchedule(cos, spe, granularity="epoch"), steps)
    np.testing.assert_allclose(per_epoch, [closed(t // spe) for t in steps], rtol=1e-4, atol=1e-7)
    for epoch in range(10):  # constant within an epoch
        assert len(set(per_epoch[epoch * spe : (epoch + 1) * spe].round(8))) == 1


def test_times_point_one_every_thirty_epochs():
    lr = EpochSchedule(StepDecay(0.1, 30), steps_per_epoch=390, granularity="epoch")
    assert float(lr(30 * 390 - 1)) == pytest.approx(0.1)
    assert float(lr(30 * 390)) == pytest.approx(0.01)
    assert float(lr(60 * 390)) == pytest.approx(0.001)


def test_scaled_multiplies_and_can_change_without_retracing():
    import tensorflow as tf

    lr = Scaled(StepDecay(0.1, 10), scale=0.5)
    fn = tf.function(lambda t: lr(t))
    assert float(fn(tf.constant(0))) == pytest.approx(0.05)
    lr.set_scale(0.1)
    assert float(fn(tf.constant(10))) == pytest.approx(0.001)
    assert fn.experimental_get_tracing_count() == 1
    assert lr.get_config()["scale"] == pytest.approx(0.1)


def test_scaled_accepts_a_float():
    assert float(Scaled(0.3, scale=0.5)(100)) == pytest.approx(0.15)


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: Warmup(0.1, 10), TypeError, "schedule=0.1"),
        (lambda: Warmup(Constant(0.1), -1), ValueError, "warmup_steps=-1"),
        (lambda: Warmup(Constant(0.1), 5, initial_learning_rate=-1.0), ValueError, "-1.0"),
        (lambda: JoinSchedules([Constant(0.1)], []), ValueError, "schedules="),
        (lambda: JoinSchedules([Constant(0.1), Constant(0.2)], [5, 6]), ValueError, "[5, 6]"),
        (lambda: JoinSchedules([Constant(0.1), Constant(0.2)], [0]), ValueError, "boundaries[0]=0"),
        (lambda: JoinSchedules(Constant(0.1), [5]), TypeError, "schedules="),
        (lambda: EpochSchedule(Constant(0.1), 0), ValueError, "steps_per_epoch=0"),
        (lambda: EpochSchedule(Constant(0.1), 10, granularity="batch"), ValueError, "'batch'"),
        (lambda: Constant(float("nan")), ValueError, "nan"),
        (lambda: Scaled(Constant(0.1), scale=0.0), ValueError, "scale=0.0"),
        (lambda: Scaled("cosine"), TypeError, "schedule='cosine'"),
    ],
)
def test_bad_arguments(make, error, fragment):
    with pytest.raises(error, match="Received") as info:
        make()
    assert fragment in str(info.value)
