"""Meta-gradients and updates against closed forms computed here with numpy.

A linear model ``f(x) = x·W + b`` with the MSE loss has, on a set ``(X, y)``
of ``n`` points and with ``X̃ = [X, 1]`` and ``θ = [W; b]``::

    L(θ) = mean((X̃θ − y)²),   ∇L(θ) = (2/n) X̃ᵀ(X̃θ − y),   ∇²L = (2/n) X̃ᵀX̃

so one MAML step gives the meta-gradient ``mean_t (I − α H_t) ∇Q_t(θ − α ∇S_t(θ))``
exactly. Each check runs eagerly (a tape, or ``jax.value_and_grad``) and
inside a compiled ``fit`` step with ``SGD(1.0)`` (the step is minus the
meta-gradient). The whole module also runs on the JAX backend
(``tests/meta/test_backends.py``).
"""

import keras
import numpy as np
import pytest

from nnkit.meta import ANIL, MAML, MetaSGD, Reptile
from tests.meta._helpers import host, linear_model, linear_tasks, meta_gradient

ALPHA = 0.2
RTOL, ATOL = 2e-5, 2e-6


def design(x):
    return np.hstack([x, np.ones((len(x), 1))])


def grad(theta, x, y):
    X = design(x)
    return 2.0 / len(x) * X.T @ (X @ theta - y)


def hessian(x):
    X = design(x)
    return 2.0 / len(x) * X.T @ X


def mse(theta, x, y):
    return float(np.mean((design(x) @ theta - y) ** 2))


def as64(inputs, y_query):
    return {k: a.astype("float64") for k, a in inputs.items()}, y_query.astype("float64")


def theta_of(net):
    kernel, bias = (host(w).astype("float64") for w in net.trainable_variables)
    return np.vstack([kernel, bias[None, :]])


def flat(grads, net):
    kernel, bias = (grads[id(w)] for w in net.trainable_variables)
    return np.vstack([kernel, bias[None, :]]).astype("float64")


def maml_gradient(theta, tasks, y_query, steps, second_order, rates=None):
    """Numpy meta-gradient of K-step MAML on the linear model (and the meta-loss)."""
    rates = np.full_like(theta, ALPHA) if rates is None else rates
    total, loss = np.zeros_like(theta), 0.0
    for xs, ys, xq, yq in zip(
        tasks["x_support"], tasks["y_support"], tasks["x_query"], y_query, strict=True
    ):
        adapted, jacobian = theta, np.eye(len(theta))
        for _ in range(steps):
            adapted = adapted - rates * grad(adapted, xs, ys)
            if second_order:
                jacobian = (np.eye(len(theta)) - rates * hessian(xs)) @ jacobian
        total += jacobian.T @ grad(adapted, xq, yq)
        loss += mse(adapted, xq, yq)
    return total / len(y_query), loss / len(y_query)


def one_fit_step(learner, tasks, y_query, learning_rate=1.0):
    """The change of every trainable variable after one ``fit`` step with plain SGD."""
    learner.compile(keras.optimizers.SGD(learning_rate), loss="mse")
    before = [host(w) for w in learner.trainable_variables]
    history = learner.fit(
        tasks, y_query, batch_size=len(y_query), epochs=1, shuffle=False, verbose=0
    )
    after = [host(w) for w in learner.trainable_variables]
    deltas = {
        id(w): a - b for w, a, b in zip(learner.trainable_variables, after, before, strict=True)
    }
    return deltas, history.history["loss"][0]


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_maml_meta_gradient(steps, first_order):
    tasks, y_query = linear_tasks()
    net = linear_model(2)
    learner = MAML(net, inner_learning_rate=ALPHA, inner_steps=steps, first_order=first_order)
    learner.compile("sgd", loss="mse")
    expected, expected_loss = maml_gradient(
        theta_of(net), *as64(tasks, y_query), steps, second_order=not first_order
    )
    other, _ = maml_gradient(theta_of(net), *as64(tasks, y_query), steps, first_order)
    assert np.abs(expected - other).max() > 100 * ATOL  # the H term matters on this fixture

    loss, grads = meta_gradient(learner, tasks, y_query)
    np.testing.assert_allclose(flat(grads, net), expected, rtol=RTOL, atol=ATOL)
    assert loss == pytest.approx(expected_loss, rel=1e-5)

    deltas, logged = one_fit_step(learner, tasks, y_query)
    np.testing.assert_allclose(-flat(deltas, net), expected, rtol=1e-4, atol=1e-5)
    assert logged == pytest.approx(expected_loss, rel=1e-5)


@pytest.mark.parametrize("rate_shape", ["element", "variable"])
def test_meta_sgd_gradients_of_weights_and_rates(rate_shape):
    tasks, y_query = linear_tasks()
    net = linear_model(2)
    learner = MetaSGD(net, inner_learning_rate=ALPHA, rate_shape=rate_shape)
    learner.compile("sgd", loss="mse")
    rng = np.random.default_rng(5)
    for rate in learner.inner_rates:  # different rates per element: diag(α) ≠ αI
        rate.assign(rng.uniform(0.05, 0.4, size=rate.shape).astype("float32"))
    kernel_rate, bias_rate = (host(r).astype("float64") for r in learner.inner_rates)
    rates = np.vstack(
        [np.broadcast_to(kernel_rate, (2, 1)), np.broadcast_to(bias_rate, (1,))[None, :]]
    )
    theta = theta_of(net)
    expected, _ = maml_gradient(theta, *as64(tasks, y_query), 1, True, rates=rates)
    # ∂/∂α = −mean_t ∇S_t(θ) ⊙ ∇Q_t(θ′_t)
    x64, y64 = as64(tasks, y_query)
    rate_grad = np.zeros_like(theta)
    for xs, ys, xq, yq in zip(x64["x_support"], x64["y_support"], x64["x_query"], y64, strict=True):
        g_s = grad(theta, xs, ys)
        rate_grad -= g_s * grad(theta - rates * g_s, xq, yq)
    rate_grad /= len(y64)

    _, grads = meta_gradient(learner, tasks, y_query)
    np.testing.assert_allclose(flat(grads, net), expected, rtol=RTOL, atol=ATOL)
    got_kernel, got_bias = (grads[id(r)] for r in learner.inner_rates)
    if rate_shape == "element":
        np.testing.assert_allclose(got_kernel, rate_grad[:2], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got_bias, rate_grad[2], rtol=RTOL, atol=ATOL)
    else:
        assert got_kernel.shape == got_bias.shape == ()
        np.testing.assert_allclose(got_kernel, rate_grad[:2].sum(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got_bias, rate_grad[2].sum(), rtol=RTOL, atol=ATOL)

    deltas, _ = one_fit_step(learner, tasks, y_query)
    np.testing.assert_allclose(-flat(deltas, net), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        -deltas[id(learner.inner_rates[1])], grads[id(learner.inner_rates[1])], rtol=1e-4, atol=1e-5
    )


def _anil_net(seed=0):
    rng = np.random.default_rng(seed)
    net = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(3, use_bias=False, name="body"),
         keras.layers.Dense(1, name="head")]
    )  # fmt: skip
    net.set_weights([rng.normal(size=s).astype("float32") for s in ((2, 3), (3, 1), (1,))])
    return net


def _anil_meta_loss(body, head, tasks, y_query):
    """Numpy meta-loss of one-step ANIL (second order is implied by differentiating it)."""
    total = 0.0
    for xs, ys, xq, yq in zip(
        tasks["x_support"], tasks["y_support"], tasks["x_query"], y_query, strict=True
    ):
        adapted = head - ALPHA * grad(head, xs @ body, ys)
        total += mse(adapted, xq @ body, yq)
    return total / len(y_query)


def test_anil_adapts_the_head_only_and_differentiates_through_it():
    tasks, y_query = linear_tasks()
    net = _anil_net()
    learner = ANIL(net, head="head", inner_learning_rate=ALPHA)
    learner.compile("sgd", loss="mse")
    body = host(net.get_layer("body").kernel).astype("float64")
    w, b = (host(x).astype("float64") for x in net.get_layer("head").trainable_variables)
    head = np.vstack([w, b[None, :]])
    x64, y64 = as64(tasks, y_query)
    # The head's meta-gradient: MAML's closed form on the features z = x·B.
    features = {
        "x_support": x64["x_support"] @ body,
        "y_support": x64["y_support"],
        "x_query": x64["x_query"] @ body,
    }
    head_expected, _ = maml_gradient(head, features, y64, 1, True)
    # The body's: central differences of the numpy meta-loss (float64).
    body_expected = np.zeros_like(body)
    eps = 1e-6
    for index in np.ndindex(body.shape):
        step = np.zeros_like(body)
        step[index] = eps
        body_expected[index] = (
            _anil_meta_loss(body + step, head, x64, y64)
            - _anil_meta_loss(body - step, head, x64, y64)
        ) / (2 * eps)

    _, grads = meta_gradient(learner, tasks, y_query)
    kernel, bias = (grads[id(x)] for x in net.get_layer("head").trainable_variables)
    np.testing.assert_allclose(
        np.vstack([kernel, bias[None, :]]), head_expected, rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        grads[id(net.get_layer("body").kernel)], body_expected, rtol=1e-4, atol=1e-5
    )

    adapted = learner.adapt(tasks["x_support"][0], tasks["y_support"][0])
    np.testing.assert_array_equal(
        host(adapted.get_layer("body").kernel), host(net.get_layer("body").kernel)
    )
    expected_head = head - ALPHA * grad(head, x64["x_support"][0] @ body, x64["y_support"][0])
    got = np.vstack(
        [host(adapted.get_layer("head").kernel), host(adapted.get_layer("head").bias)[None, :]]
    )
    np.testing.assert_allclose(got, expected_head, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 3])
def test_reptile_update_is_the_averaged_displacement(steps):
    tasks, y_query = linear_tasks()
    net = linear_model(2)
    learner = Reptile(net, inner_learning_rate=ALPHA, inner_steps=steps)
    theta = theta_of(net)
    x64, y64 = as64(tasks, y_query)
    displacement, query_loss = np.zeros_like(theta), 0.0
    for xs, ys, xq, yq in zip(x64["x_support"], x64["y_support"], x64["x_query"], y64, strict=True):
        adapted = theta
        for _ in range(steps):
            adapted = adapted - ALPHA * grad(adapted, xs, ys)
        displacement += adapted - theta
        query_loss += mse(adapted, xq, yq)
    displacement /= len(y64)
    query_loss /= len(y64)

    learner.compile("sgd", loss="mse")
    loss, grads = meta_gradient(learner, tasks, y_query)
    np.testing.assert_allclose(flat(grads, net), -displacement, rtol=RTOL, atol=ATOL)
    assert loss == pytest.approx(query_loss, rel=1e-5)  # the surrogate adds nothing

    epsilon = 0.5
    deltas, logged = one_fit_step(learner, tasks, y_query, learning_rate=epsilon)
    np.testing.assert_allclose(flat(deltas, net), epsilon * displacement, rtol=1e-4, atol=1e-6)
    assert logged == pytest.approx(query_loss, rel=1e-5)


def test_adapt_and_predict_adapted_follow_the_inner_steps():
    tasks, y_query = linear_tasks()
    net = linear_model(2)
    learner = MAML(net, inner_learning_rate=ALPHA)
    learner.compile("sgd", loss="mse")
    theta = theta_of(net)
    x64, _ = as64(tasks, y_query)
    for steps in (0, 1, 4):
        predictions = learner.predict_adapted(
            tasks["x_support"], tasks["y_support"], tasks["x_query"], steps=steps, batch_size=2
        )
        for t in range(len(y_query)):
            adapted = theta
            for _ in range(steps):
                adapted = adapted - ALPHA * grad(adapted, x64["x_support"][t], x64["y_support"][t])
            expected = design(x64["x_query"][t]) @ adapted
            np.testing.assert_allclose(predictions[t], expected, rtol=1e-5, atol=1e-5)
            model = learner.adapt(tasks["x_support"][t], tasks["y_support"][t], steps=steps)
            np.testing.assert_allclose(
                model.predict(tasks["x_query"][t], verbose=0), expected, rtol=1e-5, atol=1e-5
            )
    # The learner itself is unchanged.
    np.testing.assert_array_equal(theta_of(net), theta)
