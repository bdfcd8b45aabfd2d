"""Properties of the schedules over the whole step range: finite, and monotone where documented.

For every step (0, a few, huge up to 2**53, and negative), a schedule's rate
is finite and ``>= 0``; ``StepDecay`` and ``MultiStepDecay`` (factor < 1)
never rise, ``Warmup`` of a constant rises over its warmup, and
``CosineAnnealing`` stays between its floor and its peak. Evaluated in a
``tf.function`` (the form ``fit`` uses) on int64 steps.
"""

import math

import numpy as np
import tensorflow as tf
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nnkit.schedules import Constant, CosineAnnealing, MultiStepDecay, StepDecay, Warmup

steps = st.one_of(st.integers(-(2**20), 2**20), st.sampled_from([0, 1, -1, 2**31, 2**53]))


def _rates(schedule, values):
    fn = tf.function(lambda t: schedule(t))
    return np.array([float(fn(tf.constant(v, tf.int64))) for v in values])


@settings(max_examples=6)
@given(
    lr=st.floats(1e-6, 10.0),
    step_size=st.integers(1, 10**6),
    factor=st.floats(0.01, 0.99),
    at=st.lists(steps, min_size=2, max_size=4),
)
@example(lr=0.1, step_size=1, factor=0.5, at=[0, 2**53])
def test_step_decays_are_finite_and_never_rise(lr, step_size, factor, at):
    at = sorted(set(at))
    for schedule in (StepDecay(lr, step_size, factor), MultiStepDecay(lr, [step_size], factor)):
        rates = _rates(schedule, at)
        assert np.all(np.isfinite(rates)) and np.all(rates >= 0), (schedule, at, rates)
        assert np.all(np.diff(rates) <= 1e-12 * lr), (schedule, at, rates)


@settings(max_examples=6)
@given(
    peak=st.floats(1e-4, 1.0),
    total=st.integers(1, 10**7),
    at=st.lists(steps, min_size=1, max_size=4),
)
@example(peak=0.1, total=1, at=[-1, 0, 2**53])
def test_cosine_stays_between_floor_and_peak(peak, total, at):
    rates = _rates(CosineAnnealing(peak, total), at)
    assert np.all(np.isfinite(rates)), rates
    assert np.all(rates >= -1e-7) and np.all(rates <= peak * (1 + 1e-6)), rates


@settings(max_examples=6)
@given(
    lr=st.floats(1e-4, 1.0),
    warmup=st.integers(1, 10**6),
    at=st.lists(steps, min_size=2, max_size=4),
)
def test_warmup_rises_to_its_rate_and_stays_finite(lr, warmup, at):
    at = sorted(set(at))
    rates = _rates(Warmup(Constant(lr), warmup), at)
    assert np.all(np.isfinite(rates)) and np.all(rates >= 0), rates
    assert np.all(np.diff(rates) >= -1e-7 * lr), (at, rates)
    assert np.all(rates <= lr * (1 + 1e-6)) and math.isclose(
        float(_rates(Warmup(Constant(lr), warmup), [warmup])[0]), lr, rel_tol=1e-5
    )
