"""Shampoo: the update rule against a numpy implementation, its reductions to the graft, its cadence."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.optimizers import Shampoo
from nnkit.testing import assert_round_trip
from tests.optimizers._reference import Quadratic, ShampooReference

# Small quadratics, a few steps; statistics from >= 2 gradients before the first root.
CASES = {
    "matrix": ((6, 4), dict(refresh_every=2, start_preconditioning_step=3, relative_damping=1e-4)),
    "blocks_rmsprop": (
        (6, 4),
        dict(
            graft="rmsprop",
            max_preconditioner_dim=4,
            sample_every=2,
            statistics_decay=0.9,
            refresh_every=2,
            start_preconditioning_step=3,
            relative_damping=1e-4,
        ),
    ),  # fmt: skip
    "tensor_sgd_exponent": (
        (2, 3, 4),
        dict(graft="sgd", exponent=0.5, refresh_every=3, start_preconditioning_step=2),
    ),
    "one_sided": (
        (9, 3),
        dict(
            max_preconditioner_dim=4,
            blocking=False,
            start_preconditioning_step=2,
            refresh_every=2,
            relative_damping=1e-4,
        ),
    ),  # fmt: skip
    "vector": ((5,), dict(refresh_every=3, start_preconditioning_step=2)),
}
STEPS = 8
LR = 0.05


def _trajectory(shape, kwargs, mode="eager", steps=STEPS):
    """Weights after each step: ``(nnkit's, numpy's)`` on the same quadratic."""
    quadratic = Quadratic(shape, seed=1)
    variable = keras.Variable(quadratic.start.astype("float32"))
    optimizer = Shampoo(LR, **kwargs)
    optimizer.build([variable])
    hessian = tf.constant(quadratic.hessian, "float32")
    optimum = tf.constant(np.ravel(quadratic.optimum), "float32")

    def step():
        flat = tf.reshape(variable.value, (-1,))
        gradient = tf.reshape(tf.linalg.matvec(hessian, flat - optimum), shape)
        optimizer.apply([gradient], [variable])

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    reference = ShampooReference(shape, LR, **kwargs)
    w, ours, theirs = quadratic.start, [], []
    for _ in range(steps):
        step()
        w = reference.step(w, quadratic.grad(w))
        ours.append(variable.numpy().astype("float64"))
        theirs.append(w)
    return np.array(ours), np.array(theirs), quadratic


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_the_numpy_rule(case):
    shape, kwargs = CASES[case]
    ours, theirs, quadratic = _trajectory(shape, kwargs)
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-5)
    assert np.max(np.abs(theirs[-1] - quadratic.start)) > 0.2  # the weights did move
    assert quadratic.value(theirs[-1]) < quadratic.value(quadratic.start)


@pytest.mark.parametrize("mode", ["graph", "xla"])
def test_matches_the_numpy_rule_compiled(mode):
    shape, kwargs = CASES["blocks_rmsprop"]
    ours, theirs, _ = _trajectory(shape, kwargs, mode=mode)
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-5)


def test_preconditioning_changes_the_direction():
    """The control: the numpy rule with preconditioning differs from its graft."""
    shape, kwargs = CASES["matrix"]
    ours, _, _ = _trajectory(shape, kwargs)
    graft_only, _, _ = _trajectory(shape, {**kwargs, "start_preconditioning_step": 10**6})
    assert np.max(np.abs(ours[-1] - graft_only[-1])) > 1e-2


def _run_keras(optimizer, shape=(6, 4), steps=12, bias=True):
    """Apply the quadratic's gradients to a kernel (and a bias) for ``steps`` steps."""
    quadratic = Quadratic(shape, seed=2)
    kernel = keras.Variable(quadratic.start.astype("float32"))
    vector = keras.Variable(np.linspace(-1, 1, shape[-1]).astype("float32"))
    variables = [kernel, vector] if bias else [kernel]
    for _ in range(steps):
        grads = [quadratic.grad(kernel.numpy().astype("float64")).astype("float32")]
        if bias:
            grads.append((2.0 * vector.numpy()).astype("float32"))
        optimizer.apply(grads, variables)
    return [w.numpy() for w in variables]


@pytest.mark.parametrize(
    "shampoo, keras_optimizer",
    [
        (dict(graft="adam"), lambda: keras.optimizers.Adam(0.05, 0.8, 0.9, epsilon=1e-6)),
        (
            dict(graft="rmsprop", beta_1=0.0),
            lambda: keras.optimizers.RMSprop(0.05, rho=0.9, epsilon=1e-6),
        ),
        (dict(graft="sgd", beta_1=0.0), lambda: keras.optimizers.SGD(0.05)),
    ],
    ids=["adam", "rmsprop", "sgd"],
)
def test_without_preconditioning_it_is_its_graft(shampoo, keras_optimizer):
    settings = {"beta_1": 0.8, "beta_2": 0.9, "epsilon": 1e-6, **shampoo}
    ours = _run_keras(Shampoo(0.05, start_preconditioning_step=10**6, **settings))
    theirs = _run_keras(keras_optimizer())
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_vectors_follow_the_graft_while_matrices_are_preconditioned():
    ours = _run_keras(Shampoo(0.05, refresh_every=2, start_preconditioning_step=2))
    adam = _run_keras(keras.optimizers.Adam(0.05))
    np.testing.assert_allclose(ours[1], adam[1], rtol=1e-6, atol=1e-7)  # the bias
    assert np.max(np.abs(ours[0] - adam[0])) > 1e-2  # the kernel


def test_roots_change_only_at_refresh_steps():
    kernel = keras.Variable(np.ones((4, 3), "float32"))
    optimizer = Shampoo(0.01, refresh_every=3, start_preconditioning_step=2)
    optimizer.build([kernel])
    roots = [w for w in optimizer.variables if "_root_" in w.path]
    statistics = [w for w in optimizer.variables if "_statistic_" in w.path]
    assert len(roots) == len(statistics) == 2
    rng = np.random.default_rng(0)
    changed_at = []
    for step in range(1, 10):
        before = [r.numpy().copy() for r in roots]
        optimizer.apply([rng.normal(size=(4, 3)).astype("float32")], [kernel])
        if any(not np.array_equal(b, r.numpy()) for b, r in zip(before, roots, strict=True)):
            changed_at.append(step)
    assert changed_at == [2, 5, 8]
    assert all(w.dtype == "float32" for w in optimizer.variables if "nnkit_optimizer" in w.path)


def test_config_round_trip():
    optimizer = Shampoo(
        0.02, graft="rmsprop", beta_1=0.5, beta_2=0.99, epsilon=1e-6, statistics_decay=0.99,
        relative_damping=1e-5, exponent=0.3, sample_every=2, refresh_every=7,
        start_preconditioning_step=3, max_preconditioner_dim=64, blocking=False,
        weight_decay=1e-4, clipnorm=1.0,
    )  # fmt: skip
    restored = assert_round_trip(optimizer)
    assert restored.get_config()["exponent"] == 0.3 and restored.clipnorm == 1.0


@pytest.mark.parametrize(
    "kwargs, error, received",
    [
        (dict(graft="adagrad"), ValueError, "graft='adagrad'"),
        (dict(beta_1=1.0), ValueError, "beta_1=1.0"),
        (dict(beta_2=True), TypeError, "beta_2=True"),
        (dict(epsilon=0.0), ValueError, "epsilon=0.0"),
        (dict(relative_damping=float("nan")), ValueError, "relative_damping=nan"),
        (dict(exponent=0.0), ValueError, "exponent=0.0"),
        (dict(exponent=2.0), ValueError, "exponent=2.0"),
        (dict(statistics_decay=1.5), ValueError, "statistics_decay=1.5"),
        (dict(sample_every=0), ValueError, "sample_every=0"),
        (dict(refresh_every=2.5), ValueError, "refresh_every=2.5"),
        (dict(start_preconditioning_step=0), ValueError, "start_preconditioning_step=0"),
        (dict(max_preconditioner_dim=0), ValueError, "max_preconditioner_dim=0"),
        (dict(blocking=1), TypeError, "blocking=1"),
        (dict(weight_decay=-1.0), ValueError, "weight_decay=-1.0"),
        (dict(learning_rate=0.0), ValueError, "learning_rate=0.0"),
        (dict(learning_rate=float("inf")), ValueError, "learning_rate=inf"),
    ],
)
def test_validation(kwargs, error, received):
    with pytest.raises(error, match=received.replace("(", r"\(")):
        Shampoo(**kwargs)
