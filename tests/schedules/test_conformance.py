"""Shared tests run over every public schedule, discovered from ``nnkit.schedules``.

A new schedule fails ``test_every_schedule_has_an_example`` until it gets a
row in ``tests/examples.py``; the other tests then cover it automatically.
"""

import inspect

import keras
import numpy as np
import pytest

import nnkit.schedules as S
from nnkit.testing import assert_round_trip, assert_saved_in_model
from tests.examples import examples_in

EXAMPLES = examples_in("schedules")


def _public_schedules():
    return sorted(
        name
        for name in S.__all__
        if inspect.isclass(getattr(S, name))
        and issubclass(getattr(S, name), keras.optimizers.schedules.LearningRateSchedule)
        and getattr(S, name) is not S.Schedule
    )


SCHEDULES = _public_schedules()


def test_every_schedule_has_an_example():
    assert sorted(EXAMPLES) == SCHEDULES


@pytest.mark.parametrize("name", SCHEDULES)
def test_config_round_trip(name):
    schedule = EXAMPLES[name]()
    restored = assert_round_trip(schedule)
    steps = range(0, 50, 3)
    np.testing.assert_allclose(
        [float(restored(t)) for t in steps], [float(schedule(t)) for t in steps], rtol=1e-6
    )


@pytest.mark.parametrize("name", SCHEDULES)
def test_survives_model_save_and_safe_load(name):
    assert_saved_in_model(EXAMPLES[name]())


@pytest.mark.parametrize("name", SCHEDULES)
def test_values_are_float32_finite_and_non_negative(name):
    values = EXAMPLES[name]()(np.arange(0, 60))
    assert keras.backend.standardize_dtype(values.dtype) == "float32"
    values = np.asarray(values)
    assert np.all(np.isfinite(values)) and np.all(values >= 0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_a_negative_step_gets_the_rate_of_step_0(name):
    # Issue 15 #13: CosineAnnealing(0.1, 100, warmup_steps=10)(-5) was negative.
    schedule = EXAMPLES[name]()
    at_zero = float(schedule(0))
    for step in (-1, -5, -1000):
        assert float(schedule(step)) == at_zero, step


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("name", SCHEDULES)
def test_drives_sgd_in_a_compiled_fit(name, jit_compile):
    """With a constant unit gradient, SGD moves each weight by exactly −Σ_t η(t)."""
    schedule = EXAMPLES[name]()
    steps = 23
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=schedule),
        loss=lambda y_true, y_pred: keras.ops.mean(y_pred),  # d/dw = mean(x) = 1
        jit_compile=jit_compile,
    )
    x = np.ones((steps, 2), "float32")
    model.fit(x, np.zeros((steps, 1), "float32"), batch_size=1, epochs=1, verbose=0, shuffle=False)
    expected = -sum(float(schedule(t)) for t in range(steps))
    np.testing.assert_allclose(model.get_weights()[0], np.full((2, 1), expected), rtol=1e-5)
    assert int(model.optimizer.iterations.numpy()) == steps
