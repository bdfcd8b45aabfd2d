"""KFAC's adaptive step and sampled Fisher against closed forms written here in numpy."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from nnkit.models import SharpnessAwareMinimization
from nnkit.optimizers import KFAC
from nnkit.optimizers import _kfac_adaptive as adaptive
from nnkit.optimizers import _kfac_passes as passes
from nnkit.optimizers import _kfac_sampling as sampling
from nnkit.optimizers._kfac_batch import Batch
from tests.distribute._mirrored import mirrored_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OMEGA = (19 / 20) ** 5


# -- the quadratic model on linear least squares, where it is exact -------------


def _least_squares(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32") * np.array([1.0, 3.0, 0.3], "float32")
    y = (x @ rng.normal(size=(3, 2)) + 0.5 * rng.normal(size=(n, 2))).astype("float32")
    return x, y


def _linear(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


def _theta(model):
    layer = model.layers[0]
    kernel, bias = (w.numpy().astype("float64") for w in (layer.kernel, layer.bias))
    return np.concatenate([kernel.ravel(), bias])


def _residual(theta, x, y):
    kernel, bias = theta[:6].reshape(3, 2), theta[6:]
    return x.astype("float64") @ kernel + bias - y


def _loss(theta, x, y):
    return np.mean(_residual(theta, x, y) ** 2)


def _gradient(theta, x, y):
    r = _residual(theta, x, y) * (2.0 / r_size(x, y))
    return np.concatenate([(x.astype("float64").T @ r).ravel(), r.sum(axis=0)])


def r_size(x, y):
    return x.shape[0] * y.shape[1]


def _output_change(delta, x):
    """``J δ`` of the linear model (its outputs' change along ``δ``)."""
    return x.astype("float64") @ delta[:6].reshape(3, 2) + delta[6:]


def _curvature(u, v, x, y):
    """``uᵀ C v``: mean squared error's Gauss-Newton matrix, exact here (2/k · mean ⟨Ju, Jv⟩)."""
    return 2.0 * np.mean(np.sum(_output_change(u, x) * _output_change(v, x), axis=1)) / y.shape[1]


def _one_step(model, x, y):
    before = _theta(model)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return before, _theta(model)


def test_first_step_lands_on_the_optimum_of_its_line_search():
    x, y = _least_squares()
    model = _linear()
    optimizer = KFAC("adaptive", model=model, damping=1e-8, damping_type="tikhonov")
    model.compile(optimizer=optimizer, loss="mse")
    theta0, theta1 = _one_step(model, x, y)
    delta = theta1 - theta0
    # L(θ₀ + tδ) is a parabola in t; its minimum is at t* = −∇ᵀδ / δᵀCδ.
    t_star = -_gradient(theta0, x, y) @ delta / _curvature(delta, delta, x, y)
    assert abs(t_star - 1.0) < 1e-3, t_star
    assert optimizer.adaptive_state["step_momentum"] == 0.0  # no previous update yet
    assert _loss(theta1, x, y) < _loss(theta0, x, y)


def test_second_step_minimizes_the_damped_model_over_both_directions():
    x, y = _least_squares(seed=1)
    model = _linear(seed=1)
    optimizer = KFAC("adaptive", model=model, damping=1e-2, damping_type="tikhonov")
    model.compile(optimizer=optimizer, loss="mse")
    theta0, theta1 = _one_step(model, x, y)
    damping = optimizer.adaptive_state["damping"]  # after step 1's adjustment
    _, theta2 = _one_step(model, x, y)
    previous, delta = theta1 - theta0, theta2 - theta1
    assert abs(optimizer.adaptive_state["step_momentum"]) > 1e-3  # both directions used
    # M(δ) = ½δᵀ(C+λ)δ + ∇ᵀδ is stationary over span{Δ, δ₀} = span{δ, δ₀}: for v in
    # it, vᵀ((C+λ)δ + ∇₁) = 0, and (exact quadratic) ∇₁ + Cδ = ∇L(θ₂).
    residual = _gradient(theta2, x, y) + damping * delta
    for v in (delta, previous):
        scale = np.linalg.norm(_gradient(theta1, x, y)) * np.linalg.norm(v)
        assert abs(residual @ v) < 2e-3 * scale, (residual @ v, scale)


def test_reduction_ratio_and_levenberg_marquardt_rule_on_the_quadratic():
    x, y = _least_squares(seed=2)
    model = _linear(seed=2)
    optimizer = KFAC("adaptive", model=model, damping=1.0, damping_type="tikhonov")
    model.compile(optimizer=optimizer, loss="mse")
    theta0, theta1 = _one_step(model, x, y)
    delta = theta1 - theta0
    g = _gradient(theta0, x, y)
    quad = _curvature(delta, delta, x, y)
    actual = _loss(theta1, x, y) - _loss(theta0, x, y)
    np.testing.assert_allclose(actual, 0.5 * quad + g @ delta, rtol=1e-4)  # exact quadratic
    predicted = 0.5 * (quad + 1.0 * delta @ delta) + g @ delta
    state = optimizer.adaptive_state
    np.testing.assert_allclose(state["reduction_ratio"], actual / predicted, rtol=1e-3)
    expected = 1.0 * OMEGA if actual / predicted > 0.75 else 1.0
    expected = expected / OMEGA if actual / predicted < 0.25 else expected
    np.testing.assert_allclose(state["damping"], expected, rtol=1e-6)


def test_damping_rule_and_solve_closed_forms():
    rho = np.array([0.9, 0.5, 0.1, -np.inf], "float32")
    np.testing.assert_allclose(
        adaptive.adapt_damping(np.float32(1.0), rho), [OMEGA, 1.0, 1 / OMEGA, 1 / OMEGA], rtol=1e-6
    )
    # A 2×2 system with a known solution: A = [[2, 1], [1, 3]] (λ = 0), b = [1, 2].
    alpha, mu, change = adaptive.solve([2.0, 1.0, 3.0], [0.0, 0.0, 1.0], [1.0, 2.0], 0.0)
    solution = -np.linalg.solve([[2.0, 1.0], [1.0, 3.0]], [1.0, 2.0])
    np.testing.assert_allclose([float(alpha), float(mu)], solution, rtol=1e-6)
    np.testing.assert_allclose(float(change), 0.5 * solution @ [1.0, 2.0], rtol=1e-6)
    # A model that predicts an increase (negative curvature) skips the step.
    assert [float(t) for t in adaptive.solve([-1.0, 0.0, 0.0], [0.0, 0.0, 0.0],
                                             [1.0, 0.0], 0.0)] == [0.0, 0.0, 0.0]  # fmt: skip


# -- the curvature of each loss, and the sampled Fisher ---------------------------------


def _hessian(f, family, from_logits):
    """The rows' ``H`` (in the output ``f``) in numpy, one matrix per row."""
    k = f.shape[-1]
    if family == "mean_squared_error":
        return np.broadcast_to(np.eye(k) * 2.0 / k, (len(f), k, k))
    if family == "categorical_crossentropy":
        if from_logits:
            p = np.exp(f - f.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            return np.stack([np.diag(q) - np.outer(q, q) for q in p])
        return np.stack([np.diag(1.0 / q) for q in f])
    p = 1.0 / (1.0 + np.exp(-f)) if from_logits else f
    scale = p * (1.0 - p) if from_logits else 1.0 / (p * (1.0 - p))
    return np.stack([np.diag(s) / k for s in scale])


CASES = [
    ("mean_squared_error", False),
    ("categorical_crossentropy", True),
    ("categorical_crossentropy", False),
    ("binary_crossentropy", True),
    ("binary_crossentropy", False),
]


def _outputs(family, from_logits, rows=4, k=3, seed=0):
    f = np.random.default_rng(seed).normal(size=(rows, k))
    if from_logits or family == "mean_squared_error":
        return f.astype("float32")
    if family == "categorical_crossentropy":
        e = np.exp(f)
        return (e / e.sum(axis=1, keepdims=True)).astype("float32")
    return (1.0 / (1.0 + np.exp(-f))).astype("float32")


@pytest.mark.parametrize("family,from_logits", CASES)
def test_quadratic_form_is_the_loss_hessian(family, from_logits):
    f = _outputs(family, from_logits)
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(2, *f.shape)).astype("float32")
    got = np.asarray(adaptive.quadratic_form(f, u, v, family, from_logits=from_logits))
    expected = np.einsum("ri,rij,rj->r", u, _hessian(f.astype("float64"), family, from_logits), v)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family,from_logits", CASES)
def test_sampled_gradients_have_the_hessian_as_covariance(family, from_logits):
    f = _outputs(family, from_logits, rows=1)
    draws = 40_000
    r = np.asarray(
        sampling.sampled_gradient(
            np.repeat(f, draws, axis=0), family, from_logits=from_logits, seed=3
        )  # fmt: skip
    ).astype("float64")
    outer = np.einsum("ni,nj->nij", r, r)
    mean, error = outer.mean(axis=0), outer.std(axis=0) / np.sqrt(draws)
    expected = _hessian(f.astype("float64"), family, from_logits)[0]
    assert np.all(np.abs(mean - expected) <= 5 * error + 1e-6), (mean, expected, error)


def test_uniform_stream_is_uniform_and_a_function_of_the_seed():
    first, again, other = (np.asarray(sampling.uniform((50_000,), s)) for s in (5, 5, 6))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert 0.0 < first.min() and first.max() < 1.0
    histogram = np.histogram(first, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(histogram - 5000) < 5 * np.sqrt(5000))


def test_sampled_fisher_of_a_hidden_layer_is_its_gauss_newton_factor():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 4)).astype("float32")
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)]
    )
    optimizer = KFAC("adaptive", model=model, fisher="sampled")
    hidden = optimizer._kfac.blocks[0]
    position = [id(w) for w in model.trainable_variables].index(id(hidden.output_channel))
    batch = Batch(x, [])
    values = [keras.ops.convert_to_tensor(w.value) for w in model.trainable_variables]
    draws = [
        np.asarray(
            passes.channel_gradients(
                model, batch, values, [position],
                sampling.sampled_objective("categorical_crossentropy", from_logits=True, seed=s),
                quiet=optimizer._batch_work.recorder.silenced,
            )[0]
        )
        for s in range(300)
    ]  # fmt: skip
    mean = np.mean(draws, axis=0)
    error = np.std(draws, axis=0) / np.sqrt(len(draws))
    # Exact: G = mean_i J_i H_i J_iᵀ, J_i = ∂z/∂s = diag(1 − h²) W₂, H_i = diag(p) − ppᵀ.
    w1, b1, w2, b2 = (
        w.numpy().astype("float64") for layer in model.layers for w in (layer.kernel, layer.bias)
    )
    h = np.tanh(x @ w1 + b1)
    z = h @ w2 + b2
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    exact = np.mean(
        [
            ((1 - hi**2)[:, None] * w2) @ (np.diag(pi) - np.outer(pi, pi)) @ ((1 - hi**2)[:, None] * w2).T
            for hi, pi in zip(h, p, strict=True)
        ],
        axis=0,
    )  # fmt: skip
    assert np.all(np.abs(mean - exact) <= 5 * error + 1e-7), (mean, exact, error)


# -- inside fit --------------------------------------------------------------------------


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, np.tanh(x[:, :2] * 1.5 - x[:, 2:4]).astype("float32")


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
    )


def test_saves_loads_and_resumes_exactly(tmp_path):
    x, y = _data()
    model = _mlp()
    optimizer = KFAC(model=model, fisher="sampled", sample_every=2, refresh_every=3)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    path = tmp_path / "adaptive.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    config = loaded.optimizer.get_config()
    assert config["learning_rate"] == "adaptive" and config["momentum"] == "adaptive"
    assert (config["fisher"], config["sample_every"]) == ("sampled", 2)
    loaded.optimizer.register(loaded)
    assert loaded.optimizer.adaptive_state == optimizer.adaptive_state  # damping is state
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mirrored_replicas_match_one_device():
    # The sampled targets are numbered by their row in the global batch: the two
    # replicas draw what one device draws.
    x, y = _data(seed=8)
    single = _mlp(seed=9)
    single.compile(optimizer=KFAC(model=single, refresh_every=3, fisher="sampled"), loss="mse")
    single.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    strategy = mirrored_strategy()
    with strategy.scope():
        mirrored = _mlp(seed=9)
        optimizer = KFAC(model=mirrored, refresh_every=3, fisher="sampled")
        mirrored.compile(optimizer=optimizer, loss="mse")
    mirrored.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    for variable in [*mirrored.weights, *optimizer.variables]:
        first, *others = [c.numpy() for c in variable.value.values]
        for other in others:
            np.testing.assert_array_equal(first, other, err_msg=variable.path)
    for a, b in zip(single.get_weights(), mirrored.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        optimizer.adaptive_state["damping"], single.optimizer.adaptive_state["damping"], rtol=1e-4
    )


def test_a_wrapper_that_trains_the_model_is_refused():
    x, y = _data()
    model = _mlp()
    wrapper = SharpnessAwareMinimization(model)
    wrapper.compile(optimizer=KFAC(model=model), loss="mse")
    with pytest.raises(ValueError, match="compute_loss"):
        wrapper.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_a_loss_without_known_curvature_is_refused_at_the_first_step():
    x, y = _data()
    model = _mlp()
    model.compile(optimizer=KFAC(model=model), loss="huber")
    with pytest.raises(ValueError, match="huber"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"learning_rate": 0.1, "momentum": "adaptive"}, "momentum"),
        ({"kl_clip": 1e-3}, "kl_clip"),
        ({"max_update_norm": 1.0}, "max_update_norm"),
        ({"fisher": "true"}, "fisher"),
        ({"sample_every": 0}, "sample_every"),
        ({"loss": "huber"}, "loss"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KFAC(**kwargs)


JAX_SCRIPT = textwrap.dedent(
    """
    import keras, numpy as np
    from nnkit.optimizers import KFAC
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(40, 3)) * [1.0, 3.0, 0.3]).astype("float32")
    y = (x @ rng.normal(size=(3, 2)) + 0.5 * rng.normal(size=(40, 2))).astype("float32")
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer=KFAC("adaptive", model=model, damping=1e-8,
                                     damping_type="tikhonov", fisher="sampled"),
                      loss="mse", jit_compile=jit)
        layer = model.layers[0]
        w0 = np.concatenate([np.ravel(np.asarray(layer.kernel.value)), np.asarray(layer.bias.value)]).astype("float64")
        model.fit(x, y, batch_size=40, epochs=1, verbose=0)
        w1 = np.concatenate([np.ravel(np.asarray(layer.kernel.value)), np.asarray(layer.bias.value)]).astype("float64")
        d = w1 - w0
        r = x @ w0[:6].reshape(3, 2) + w0[6:] - y
        jd = x @ d[:6].reshape(3, 2) + d[6:]
        t_star = -np.mean(r * jd) / np.mean(jd * jd)
        assert abs(t_star - 1.0) < 1e-3, t_star
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        assert np.all(np.isfinite(np.asarray(layer.kernel.value)))
    print("ok")
    """
)


@pytest.mark.slow
def test_jax_backend_line_search_optimum_and_fit():
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", JAX_SCRIPT],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"
