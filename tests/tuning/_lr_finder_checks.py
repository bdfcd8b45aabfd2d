"""lr_find checks shared by the TensorFlow tests and the JAX subprocess (``check_all``)."""

import math

import keras
import numpy as np
import pytest

from nnkit.schedules import CosineAnnealing, Scaled
from nnkit.tuning import lr_find


def state(model):
    """Every variable lr_find promises to restore, as numpy copies."""
    variables = list(model.variables) + list(model.optimizer.variables)
    return [np.array(v.numpy(), copy=True) for v in variables]


def regression(n=64, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32") * np.array([1.0, 2.0, 0.5], "float32")[:d]
    y = x @ rng.normal(size=(d, 1)).astype("float32") + 0.3
    return x, y.astype("float32")


def divergence_rate(x):
    """2 / λ_max of the Hessian of mean((Xw + b − y)²): (2/n)·[X 1]ᵀ[X 1]."""
    augmented = np.hstack([x, np.ones((len(x), 1))]).astype("float64")
    hessian = 2.0 / len(x) * augmented.T @ augmented
    return 2.0 / np.linalg.eigvalsh(hessian).max()


def linear_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    return model


def conditioned_regression(n=1024, seed=0):
    """Centred inputs with orthogonal columns of scales 1, 0.7, 0.5: λ_max = 2, 2/λ_max = 1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    q, _ = np.linalg.qr(x - x.mean(axis=0))
    x = (q * np.sqrt(n) * np.array([1.0, 0.7, 0.5])).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3 + 0.1 * rng.normal(size=(n, 1))
    return x, y.astype("float32")


def check_known_answer():
    """SGD on linear regression diverges above 2/λ_max: the curve must show it.

    Mini-batches (128 of 1024) keep the error along the top eigenvector
    excited, so the loss turns up once the rate passes 2/λ_max; the stop
    rule (smoothed loss > 4 × its best) then fires within a few steps.
    """
    x, y = conditioned_regression()
    critical = divergence_rate(x)
    result = lr_find(linear_model(), x, y, batch_size=128, steps=60,
                     learning_rates=(1e-3, 10.0))  # fmt: skip
    assert result.stop_reason in ("diverged", "nonfinite"), result.stop_reason
    rates, losses = np.array(result.learning_rates), np.array(result.losses)
    lowest = rates[int(np.argmin(losses))]
    assert 0.3 * critical < lowest <= 1.2 * critical, (critical, lowest)
    assert critical < rates[-1] < 4.0 * critical, (critical, rates[-1])
    for name, rate in result.suggestions.items():
        assert rate is not None and rate < critical, (name, rate, critical)
    return result


def check_per_batch_loss():
    """Each recorded loss equals full-batch GD's loss at that step, simulated in numpy."""
    x, y = regression()
    model = linear_model()
    w, b = (np.asarray(a, "float64") for a in model.get_weights())
    result = lr_find(model, x, y, batch_size=len(x), steps=30,
                     learning_rates=(1e-3, 0.1))  # fmt: skip
    xd, yd = x.astype("float64"), y.astype("float64")
    expected = []
    for rate in result.learning_rates:
        residual = xd @ w + b - yd
        expected.append(float(np.mean(residual**2)))
        w = w - rate * 2.0 / len(x) * xd.T @ residual
        b = b - rate * 2.0 * residual.mean(axis=0)
    np.testing.assert_allclose(result.losses, expected, rtol=1e-4)
    running_mean = np.cumsum(expected) / np.arange(1, len(expected) + 1)
    assert not np.allclose(result.losses, running_mean, rtol=1e-2)  # not Keras's running mean
    rates = 1e-3 * (0.1 / 1e-3) ** (np.arange(30) / 29)
    np.testing.assert_allclose(result.learning_rates, rates, rtol=1e-6)


def check_restores_bit_for_bit():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((3,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.3),
        keras.layers.BatchNormalization(), keras.layers.Dense(1),
    ])  # fmt: skip
    model.compile(keras.optimizers.Adam(1e-3), loss="mse", metrics=["mae"])
    x, y = regression(128)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # slots, iterations, seeds advanced
    before = state(model)
    lr_find(model, x, y, batch_size=16, steps=20)
    after = state(model)
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.learning_rate.numpy() == np.float32(1e-3)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # still trains afterwards


def check_schedule_multiplier():
    """A schedule is multiplied in-graph, then put back and driving training again."""
    x, y = regression(256)
    schedule = CosineAnnealing(0.05, 1000)
    model = linear_model()
    model.compile(keras.optimizers.SGD(schedule), loss="mse")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # t0 = 8
    config = model.optimizer.get_config()["learning_rate"]
    before = state(model)
    result = lr_find(model, x, y, batch_size=16, steps=12, learning_rates=(1e-3, 1.0),
                     stop_factor=1e6)  # fmt: skip
    t0, n = 8, 12

    def cosine(t):
        return 0.5 * 0.05 * (1 + math.cos(math.pi * t / 1000))

    want = [cosine(t0 + k) * (1e-3 * 1000 ** (k / (n - 1))) / cosine(t0) for k in range(n)]
    np.testing.assert_allclose(result.learning_rates, want, rtol=1e-5)
    assert result.scale == pytest.approx(result.suggestion / cosine(t0), rel=1e-5)
    assert model.optimizer.get_config()["learning_rate"] == config
    for a, b in zip(before, state(model), strict=True):
        np.testing.assert_array_equal(a, b)
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # the schedule drives it again
    assert float(model.optimizer.learning_rate) == pytest.approx(cosine(16), rel=1e-5)
    assert np.isfinite(history.history["loss"][0])
    scaled = Scaled(schedule, result.scale)
    assert float(scaled(t0)) == pytest.approx(result.suggestion, rel=1e-5)


def check_all():
    check_known_answer()
    check_per_batch_loss()
    check_restores_bit_for_bit()
    check_schedule_multiplier()
