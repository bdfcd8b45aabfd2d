"""StepDecay and MultiStepDecay against closed forms written here."""

import bisect

import numpy as np
import pytest

from nnkit.schedules import MultiStepDecay, StepDecay


def test_step_decay_every_step_size(evaluate):
    steps = [0, 1, 29, 30, 31, 59, 60, 89, 90, 300]
    got = evaluate(StepDecay(0.1, 30, 0.1), steps)
    want = [0.1 * 0.1 ** (t // 30) for t in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(np.diff(got) <= 0), "decay never rises"


def test_step_decay_default_factor_is_a_tenth():
    assert float(StepDecay(1.0, 5)(5)) == pytest.approx(0.1)


def test_multistep_decay_at_milestones(evaluate):
    milestones = [50, 75, 90]
    steps = [0, 49, 50, 51, 74, 75, 89, 90, 1000]
    got = evaluate(MultiStepDecay(0.2, milestones, 0.5), steps)
    want = [0.2 * 0.5 ** bisect.bisect_right(milestones, t) for t in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: StepDecay(0.1, 0), ValueError, "step_size=0"),
        (lambda: StepDecay(0.1, 10, factor=0.0), ValueError, "factor=0.0"),
        (lambda: StepDecay(0.1, 10, factor=1.5), ValueError, "factor=1.5"),
        (lambda: StepDecay(-0.1, 10), ValueError, "initial_learning_rate=-0.1"),
        (lambda: StepDecay(0.1, 10, factor=float("inf")), ValueError, "inf"),
        (lambda: MultiStepDecay(0.1, []), ValueError, "milestones=[]"),
        (lambda: MultiStepDecay(0.1, [30, 20]), ValueError, "[30, 20]"),
        (lambda: MultiStepDecay(0.1, [0, 20]), ValueError, "milestones[0]=0"),
        (lambda: MultiStepDecay(0.1, 30), TypeError, "milestones=30"),
        (lambda: MultiStepDecay(0.1, [True]), TypeError, "True"),
        (lambda: StepDecay(0.1, step_size=10**400), ValueError, f"step_size={10**400}"),
        (lambda: StepDecay(0.1, step_size=1e308), ValueError, "step_size=1e+308"),
        (lambda: StepDecay(10**400, step_size=10), ValueError, "initial_learning_rate="),
        (lambda: StepDecay(0.1, step_size=np.bool_(True)), TypeError, "step_size=np.True_"),
        (
            lambda: StepDecay(np.float64("nan"), step_size=10),
            ValueError,
            "initial_learning_rate=np.float64(nan)",
        ),
    ],
)
def test_bad_arguments(make, error, fragment):
    with pytest.raises(error, match="Received") as info:
        make()
    assert fragment in str(info.value)


def test_step_size_too_large_for_the_step_arithmetic_is_rejected_at_construction():
    # It used to be accepted and raise OverflowError at the first step.
    with pytest.raises(ValueError, match=r"`step_size` must be at most 2\*\*53") as info:
        StepDecay(0.1, step_size=10**400)
    assert f"Received: step_size={10**400}" in str(info.value)


def test_numpy_scalars_and_0d_arrays_are_accepted():
    lr = StepDecay(np.float32(0.5), step_size=np.array(10), factor=np.float64(0.5))
    assert lr.get_config() == StepDecay(0.5, 10, 0.5).get_config()
    assert type(lr.step_size) is int
    assert float(lr(10)) == pytest.approx(0.25)
