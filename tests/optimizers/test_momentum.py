"""SGD and Adam with a scheduled momentum (beta_1): one-cycle's inverse momentum cycle.

Every number is checked against a closed form written here with numpy/math: PyTorch
OneCycleLR's momentum formula, and the SGD/Adam recursions run by hand.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.optimizers import SGD, Adam
from nnkit.schedules import OneCycle, OneCycleMomentum
from nnkit.testing import assert_round_trip


def _torch_momentum(step, total, pct=0.3, base=0.85, top=0.95, strategy="cos", three=False):
    """PyTorch OneCycleLR(cycle_momentum=True)'s momentum at ``step``, written out."""
    step = min(step, total - 1)
    if three:
        phases = [(pct * total - 1, top, base), (2 * pct * total - 2, base, top),
                  (total - 1, top, top)]  # fmt: skip
    else:
        phases = [(pct * total - 1, top, base), (total - 1, base, top)]
    start = 0.0
    for i, (end, a, b) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            x = (step - start) / (end - start)
            if strategy == "cos":
                return b + (a - b) / 2 * (math.cos(math.pi * x) + 1)
            return (b - a) * x + a
        start = end
    raise AssertionError


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"anneal_strategy": "linear"}, {"three_phase": True},
     {"rise_fraction": 0.25, "base_momentum": 0.8, "max_momentum": 0.99}],
)  # fmt: skip
def test_one_cycle_momentum_is_pytorchs(kwargs):
    total = 100
    mu = OneCycleMomentum(total, **kwargs)
    expected_kwargs = {
        "pct": kwargs.get("rise_fraction", 0.3),
        "base": kwargs.get("base_momentum", 0.85),
        "top": kwargs.get("max_momentum", 0.95),
        "strategy": kwargs.get("anneal_strategy", "cos"),
        "three": kwargs.get("three_phase", False),
    }
    steps = [0, 1, 10, 28, 29, 30, 50, 57, 58, 70, 98, 99, 150]
    got = [float(mu(s)) for s in steps]
    want = [_torch_momentum(s, total, **expected_kwargs) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    compiled = tf.function(lambda s: mu(s))
    np.testing.assert_allclose([float(compiled(tf.constant(s))) for s in steps], want, rtol=1e-6)


def test_one_cycle_momentum_mirrors_the_rate():
    total = 60
    rate, mu = OneCycle(0.1, total), OneCycleMomentum(total)
    rates = np.array([float(rate(s)) for s in range(total)])
    moms = np.array([float(mu(s)) for s in range(total)])
    assert np.argmax(rates) == np.argmin(moms)  # the dip sits at the peak
    rise = np.argmax(rates)
    assert np.all(np.diff(moms[: rise + 1]) <= 0) and np.all(np.diff(moms[rise:]) >= 0)


def test_bad_momentum_schedule_arguments():
    with pytest.raises(ValueError, match="base_momentum"):
        OneCycleMomentum(100, base_momentum=0.99, max_momentum=0.9)
    with pytest.raises(ValueError, match="max_momentum"):
        OneCycleMomentum(100, max_momentum=1.0)
    with pytest.raises(ValueError, match="rise_fraction"):
        OneCycleMomentum(3, rise_fraction=0.2)
    with pytest.raises(TypeError, match="momentum"):
        SGD(0.1, momentum=lambda step: 0.9)
    with pytest.raises(ValueError, match="momentum"):
        SGD(0.1, momentum=1.0)
    with pytest.raises(TypeError, match="beta_1"):
        Adam(beta_1="0.9")


def _gradients(steps, rng):
    return [rng.normal(size=(3,)).astype("float32") for _ in range(steps)]


def _run(optimizer, grads, compiled):
    w = keras.Variable(np.array([1.0, -2.0, 0.5], "float32"))
    optimizer.build([w])

    def apply(g):
        optimizer.apply_gradients([(g, w)])

    step = tf.function(apply) if compiled else apply
    for g in grads:
        step(tf.constant(g))
    return w.numpy()


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_with_a_momentum_schedule_matches_the_recursion(compiled, nesterov):
    total, lr = 20, 0.05
    grads = _gradients(25, np.random.default_rng(0))
    got = _run(SGD(lr, momentum=OneCycleMomentum(total), nesterov=nesterov), grads, compiled)
    w, m = np.array([1.0, -2.0, 0.5]), np.zeros(3)
    for t, g in enumerate(grads):
        mu = _torch_momentum(t, total)
        m = mu * m - lr * g
        w = w + (mu * m - lr * g if nesterov else m)
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


def test_under_accumulation_the_momentum_reads_the_rates_clock():
    # Keras reads a rate schedule at its micro-batch counter (update j at
    # micro-batch 2j + 1 for N = 2); the momentum schedule must read the same
    # step, or one-cycle's rate and momentum drift out of phase.
    total, n = 20, 2
    rate = OneCycle(0.1, total)
    grads = _gradients(2 * 8, np.random.default_rng(2))
    optimizer = SGD(rate, momentum=OneCycleMomentum(total), gradient_accumulation_steps=n)
    got = _run(optimizer, grads, True)
    w, m = np.array([1.0, -2.0, 0.5]), np.zeros(3)
    for j in range(len(grads) // n):
        g = np.mean(grads[n * j : n * j + n], axis=0)
        clock = n * j + n - 1
        mu, lr = _torch_momentum(clock, total), float(rate(clock))
        m = mu * m - lr * g
        w = w + m
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_with_a_beta_1_schedule_matches_the_recursion(amsgrad):
    total, lr, b2, eps = 20, 0.01, 0.999, 1e-7
    grads = _gradients(25, np.random.default_rng(1))
    got = _run(Adam(lr, beta_1=OneCycleMomentum(total), amsgrad=amsgrad), grads, True)
    w, m, v, vmax = np.array([1.0, -2.0, 0.5]), np.zeros(3), np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads):
        b1, k = _torch_momentum(t, total), t + 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        alpha = lr * math.sqrt(1 - b2**k) / (1 - b1**k)
        w = w - alpha * m / (np.sqrt(vmax if amsgrad else v) + eps)
    np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "ours, keras_own",
    [
        (lambda: SGD(0.05, momentum=0.9), lambda: keras.optimizers.SGD(0.05, momentum=0.9)),
        (lambda: SGD(0.05), lambda: keras.optimizers.SGD(0.05)),
        (lambda: Adam(0.01, beta_1=0.8), lambda: keras.optimizers.Adam(0.01, beta_1=0.8)),
        (lambda: Adam(0.01, weight_decay=0.01), lambda: keras.optimizers.AdamW(0.01, weight_decay=0.01)),
    ],
)  # fmt: skip
def test_a_float_momentum_is_keras_own_update(ours, keras_own):
    grads = _gradients(10, np.random.default_rng(2))
    np.testing.assert_allclose(_run(ours(), grads, True), _run(keras_own(), grads, True),
                               rtol=1e-6, atol=1e-7)  # fmt: skip


@pytest.mark.parametrize(
    "make",
    [lambda: SGD(OneCycle(0.1, 40), momentum=OneCycleMomentum(40), nesterov=True),
     lambda: Adam(OneCycle(0.01, 40), beta_1=OneCycleMomentum(40, three_phase=True),
                  weight_decay=1e-3)],
)  # fmt: skip
def test_config_round_trip(make):
    restored = assert_round_trip(make())
    assert isinstance(getattr(restored, "momentum", None) or restored.beta_1, OneCycleMomentum)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    return x, x @ np.array([[1.0], [-1.0], [0.5]], "float32")


def _model(optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer, loss="mse")
    return model


@pytest.mark.parametrize(
    "make",
    [lambda: SGD(OneCycle(0.05, 16), momentum=OneCycleMomentum(16)),
     lambda: Adam(OneCycle(0.01, 16), beta_1=OneCycleMomentum(16))],
)  # fmt: skip
def test_save_load_and_resume_continue_the_cycle(make, tmp_path):
    x, y = _data()
    straight = _model(make())
    straight.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)  # 16 steps
    first = _model(make())
    first.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)  # 8 steps
    path = tmp_path / "half.keras"
    first.save(path)
    resumed = keras.saving.load_model(path, safe_mode=True)
    assert type(resumed.optimizer) is type(first.optimizer)
    assert int(resumed.optimizer.iterations.numpy()) == 8
    for a, b in zip(first.optimizer.variables, resumed.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    resumed.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
