"""KFAC against independent numpy closed forms, in eager, compiled and XLA ``fit``."""

import keras
import numpy as np
import pytest

from nnkit.optimizers import KFAC

MODES = {"eager": {"run_eagerly": True}, "graph": {}, "xla": {"jit_compile": True}}


def _data(n=48, d=3, k=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x @ rng.normal(size=(d, k)) + 0.3 * rng.normal(size=(n, k))).astype("float32")
    return x, y


def _linear(d, k, activation=None, seed=1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((d,)), keras.layers.Dense(k, activation=activation)])


@pytest.mark.parametrize("mode", sorted(MODES))
def test_one_gauss_newton_step_lands_on_the_least_squares_solution(mode):
    x, y = _data()
    model = _linear(3, 2)
    optimizer = KFAC(
        1.0, model=model, damping=1e-10, damping_type="tikhonov", momentum=0.0,
        statistics_decay=0.0, refresh_every=1, kl_clip=None, output_fisher="mean_squared_error",
    )  # fmt: skip
    model.compile(optimizer=optimizer, loss="mse", **MODES[mode])
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    design = np.concatenate([x, np.ones((len(x), 1), "float32")], axis=1).astype("float64")
    solution, *_ = np.linalg.lstsq(design, y.astype("float64"), rcond=None)
    kernel, bias = (w.numpy() for w in model.layers[0].weights[:2])
    np.testing.assert_allclose(kernel, solution[:3], atol=2e-4)
    np.testing.assert_allclose(bias, solution[3], atol=2e-4)


def _numpy_kfac(w, b, x, y, steps, *, lr, damping, momentum, decay, every, kl_clip):
    """The empirical-Fisher K-FAC rule for one tanh Dense layer under mse, written out in numpy."""
    n, k = y.shape
    a_avg = np.zeros((w.shape[0] + 1,) * 2)
    g_avg = np.zeros((k, k))
    m_w, m_b = np.zeros_like(w), np.zeros_like(b)
    inv_a = inv_g = None
    design = np.concatenate([x, np.ones((n, 1))], axis=1)
    for t in range(steps):
        h = np.tanh(x @ w + b)
        per_example = (2.0 / k) * (h - y) * (1.0 - h**2)  # d loss_i / d preactivation
        grad = design.T @ per_example / n  # [dW; db] of the batch-mean loss
        a_avg = decay * a_avg + (1 - decay) * design.T @ design / n
        g_avg = decay * g_avg + (1 - decay) * per_example.T @ per_example / n
        if t % every == 0:
            a_hat, g_hat = a_avg / (1 - decay ** (t + 1)), g_avg / (1 - decay ** (t + 1))
            pi = np.sqrt((np.trace(a_hat) / len(a_hat)) / (np.trace(g_hat) / k))
            inv_a = np.linalg.inv(a_hat + pi * np.sqrt(damping) * np.eye(len(a_hat)))
            inv_g = np.linalg.inv(g_hat + np.sqrt(damping) / pi * np.eye(k))
        delta = inv_a @ grad @ inv_g
        nu = min(1.0, np.sqrt(kl_clip / (lr**2 * np.sum(delta * grad))))
        m_w = momentum * m_w - lr * nu * delta[:-1]
        m_b = momentum * m_b - lr * nu * delta[-1]
        w, b = w + m_w, b + m_b
    return w, b


@pytest.mark.parametrize("mode", ["graph", "xla"])
def test_empirical_fisher_matches_numpy_step_for_step(mode):
    x, y = _data(n=32, seed=3)
    y = np.tanh(y).astype("float32")
    model = _linear(3, 2, activation="tanh", seed=4)
    w0, b0 = (v.numpy().astype("float64") for v in model.layers[0].weights[:2])
    settings = dict(lr=0.2, damping=1e-2, momentum=0.9, decay=0.95, every=2, kl_clip=1e-3)
    optimizer = KFAC(
        settings["lr"], model=model, damping=settings["damping"], damping_type="pi",
        momentum=settings["momentum"], statistics_decay=settings["decay"],
        refresh_every=settings["every"], kl_clip=settings["kl_clip"],
    )  # fmt: skip
    model.compile(optimizer=optimizer, loss="mse", **MODES[mode])
    model.fit(x, y, batch_size=len(x), epochs=5, shuffle=False, verbose=0)
    w, b = _numpy_kfac(w0, b0, x.astype("float64"), y.astype("float64"), 5, **settings)
    kernel, bias = (v.numpy() for v in model.layers[0].weights[:2])
    np.testing.assert_allclose(kernel, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, b, rtol=1e-4, atol=1e-5)


def test_eigenvalue_damping_applies_the_damped_kronecker_inverse():
    x, y = _data(n=40, seed=5)
    model = _linear(3, 2, seed=6)
    w0 = np.concatenate([v.numpy() for v in (model.layers[0].kernel, model.layers[0].bias[None])])
    damping = 0.05
    optimizer = KFAC(
        1.0, model=model, damping=damping, damping_type="eigen", momentum=0.0,
        statistics_decay=0.0, refresh_every=1, kl_clip=None,
    )  # fmt: skip
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    per_example = design @ w0 - y  # (2/k)(s - y) with k = 2
    grad = design.T @ per_example / len(x)
    a = design.T @ design / len(x)
    g = per_example.T @ per_example / len(x)
    fisher = np.kron(a, g)  # row-major vec of the (d+1, k) gradient matrix
    delta = np.linalg.solve(fisher + damping * np.eye(len(fisher)), grad.reshape(-1))
    expected = w0 - delta.reshape(grad.shape)
    got = np.concatenate([model.layers[0].kernel.numpy(), model.layers[0].bias.numpy()[None]])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_without_preconditioning_it_is_keras_sgd_with_momentum_exactly():
    # A registered model none of whose layers KFAC factors (an EinsumDense whose kernel
    # shares the input's axis b is no single matrix).
    x, y = _data(seed=7)
    x, y = x[:, :, None], np.repeat(y[:, None, :], 3, axis=1)
    weights = {}
    for name in ("kfac", "sgd"):
        keras.utils.set_random_seed(8)
        layer = keras.layers.EinsumDense("abc,bcd->abd", (3, 2), bias_axes="d", activation="tanh")
        model = keras.Sequential([keras.Input((3, 1)), layer])
        if name == "kfac":
            with pytest.warns(UserWarning, match="first-order rule.*non-contracted axis 'b'"):
                optimizer = KFAC(0.05, model=model, momentum=0.9, kl_clip=None)
        else:
            optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        weights[name] = [w.numpy() for w in model.weights]
    for got, expected in zip(weights["kfac"], weights["sgd"], strict=True):
        np.testing.assert_array_equal(got, expected)


def test_conv2d_input_factor_is_the_patch_covariance():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(4, 5, 5, 2)).astype("float32")
    keras.utils.set_random_seed(10)
    model = keras.Sequential(
        [keras.Input((5, 5, 2)), keras.layers.Conv2D(3, 3, padding="valid"), keras.layers.Flatten()]
    )
    optimizer = KFAC(0.01, model=model, statistics_decay=0.0)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, np.zeros((4, 27), "float32"), batch_size=4, epochs=1, verbose=0)
    rows = [
        np.concatenate([x[n, i : i + 3, j : j + 3, :].reshape(-1), [1.0]])
        for n in range(4) for i in range(3) for j in range(3)
    ]  # fmt: skip
    rows = np.array(rows)
    expected = rows.T @ rows / len(rows)
    (factor,) = [v for v in optimizer.variables if v.name.endswith("_a_factor")]
    np.testing.assert_allclose(factor.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_unregister_restores_the_layers_and_unsupported_layers_are_listed():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5), keras.layers.BatchNormalization(),
         keras.layers.Dense(1)]
    )  # fmt: skip
    before = [w.path for w in model.weights]
    with pytest.warns(UserWarning, match="batch_normalization"):
        optimizer = KFAC(model=model)
    assert optimizer.registered_layers == [model.layers[0].path, model.layers[2].path]
    assert optimizer.first_order_layers[0].startswith(model.layers[1].path)
    assert len(model.weights) == len(before) + 4
    optimizer.unregister()
    assert [w.path for w in model.weights] == before
    assert optimizer.registered_layers == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"damping": 0}, ValueError, "damping"),
        ({"damping_type": "diag"}, ValueError, "damping_type"),
        ({"momentum": 1.0}, ValueError, "momentum"),
        ({"refresh_every": 0}, ValueError, "refresh_every"),
        ({"kl_clip": 1e-3, "max_update_norm": 1.0}, ValueError, "at most one"),
        ({"output_fisher": "hinge"}, ValueError, "output_fisher"),
        ({"gradient_accumulation_steps": 2}, ValueError, "gradient_accumulation_steps"),
        ({"statistics_decay": True}, TypeError, "statistics_decay"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        KFAC(**kwargs)


def test_output_fisher_needs_a_matching_output_layer():
    model = _linear(3, 2, activation="tanh")
    with pytest.raises(ValueError, match="activation"):
        KFAC(model=model, output_fisher="mean_squared_error")
