"""SAM on a linear least-squares model, in closed form with numpy, and the checks that use it.

Shared by the TensorFlow tests and the JAX subprocess (``check_all()``), so both
backends are held to the same independent formulas:

    L(θ) = mean_i (a_i · θ − y_i)²,   ∇L(θ) = (2/n) Aᵀ(Aθ − y),   A = [X, 1]
    ε = ρ · T² g / ‖T g‖,  T = |θ| (adaptive) or 1,   θ ← θ − η · ∇L(θ + ε)
"""

import keras
import numpy as np

ROWS, FEATURES = 8, 3
RHO = 0.3


def data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(ROWS, FEATURES)).astype("float32")
    y = rng.normal(size=(ROWS, 1)).astype("float32")
    return x, y


def initial_theta():
    return np.array([0.5, -1.0, 2.0, 0.25])  # kernel (3) then bias


def grad(theta, x, y):
    a = np.hstack([x, np.ones((len(x), 1))]).astype("float64")
    return 2.0 / len(a) * a.T @ (a @ theta - y[:, 0].astype("float64"))


def sam_grad(theta, x, y, rho, adaptive, splits=1):
    """``Σ_i (n_i/n) ∇L_i(θ + ε_i)`` over ``splits`` contiguous parts."""
    total = np.zeros_like(theta)
    bounds = [len(x) * i // splits for i in range(splits + 1)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        g = grad(theta, x[lo:hi], y[lo:hi])
        t = np.abs(theta) if adaptive else np.ones_like(theta)
        eps = rho * t**2 * g / (np.linalg.norm(t * g) + 1e-12)
        total += (hi - lo) / len(x) * grad(theta + eps, x[lo:hi], y[lo:hi])
    return total


def expected_run(steps, learning_rates, adaptive, splits=1, rho=RHO):
    """θ after ``steps`` full-batch SGD steps on SAM's gradient, and each step's ‖g'‖."""
    x, y = data()
    theta, norms = initial_theta(), []
    for step in range(steps):
        g = sam_grad(theta, x, y, rho, adaptive, splits)
        norms.append(np.linalg.norm(g))
        theta = theta - learning_rates[step] * g
    return theta, norms


def linear_model():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    theta = initial_theta()
    model.set_weights(
        [theta[:FEATURES, None].astype("float32"), theta[FEATURES:].astype("float32")]
    )
    return model


def theta_of(model):
    kernel, bias = model.get_weights()
    return np.concatenate([kernel.ravel(), bias]).astype("float64")


def sam_model(adaptive=False, splits=1, learning_rate=0.1, **compile_kwargs):
    from nnkit.models import SharpnessAwareMinimization

    sam = SharpnessAwareMinimization(
        linear_model(), rho=RHO, adaptive=adaptive, num_batch_splits=splits
    )
    sam.compile(keras.optimizers.SGD(learning_rate), loss="mse", **compile_kwargs)
    return sam


def check_quadratic(adaptive, splits=1, steps=3, **compile_kwargs):
    x, y = data()
    sam = sam_model(adaptive, splits, **compile_kwargs)
    history = sam.fit(x, y, batch_size=ROWS, epochs=steps, shuffle=False, verbose=0)
    want, _ = expected_run(steps, [0.1] * steps, adaptive, splits)
    np.testing.assert_allclose(theta_of(sam.model), want, rtol=2e-5, atol=1e-6)
    # The logged loss is the loss at θ before each step (pass 1), over the whole batch.
    a = np.hstack([x, np.ones((ROWS, 1))])
    theta, losses = initial_theta(), []
    for _ in range(steps):
        losses.append(np.mean((a @ theta - y[:, 0]) ** 2))
        theta = theta - 0.1 * sam_grad(theta, x, y, RHO, adaptive, splits)
    np.testing.assert_allclose(history.history["loss"], losses, rtol=2e-5)


def check_batch_norm_first_pass_only():
    """Moving statistics move once, from pass 1's batch statistics (at θ, not θ + ε)."""
    from nnkit.models import SharpnessAwareMinimization

    keras.utils.set_random_seed(0)
    x, y = data()
    dense = keras.layers.Dense(4)
    norm = keras.layers.BatchNormalization(momentum=0.9)
    inner = keras.Sequential([keras.Input((FEATURES,)), dense, norm, keras.layers.Dense(1)])
    kernel, bias = (np.asarray(w) for w in dense.get_weights())
    h = x.astype("float64") @ kernel + bias  # the normalized input at θ
    sam = SharpnessAwareMinimization(inner, rho=0.5)
    sam.compile(keras.optimizers.SGD(0.1), loss="mse")
    sam.fit(x, y, batch_size=ROWS, epochs=1, shuffle=False, verbose=0)
    mean, variance = (np.asarray(w) for w in norm.get_weights()[2:])
    np.testing.assert_allclose(mean, 0.1 * h.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(variance, 0.9 + 0.1 * h.var(axis=0), rtol=1e-4, atol=1e-6)
    assert not np.allclose(dense.get_weights()[0], kernel)  # and the weights did train


def check_all():
    """Every check, for the JAX subprocess."""
    for adaptive in (False, True):
        check_quadratic(adaptive)
        check_quadratic(adaptive, jit_compile=False)
    check_quadratic(True, splits=2)
    check_batch_norm_first_pass_only()
