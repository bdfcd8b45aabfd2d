"""SOAP: the update rule against a numpy implementation, its reduction to AdamW, its cadence."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.optimizers import SOAP
from nnkit.testing import assert_round_trip
from tests.optimizers._reference import Quadratic, SOAPReference

# With t₀ = 1 the first basis comes from one gradient: a square matrix keeps both
# factors full rank (a null space has no unique eigenvectors to compare).
CASES = {
    "square_from_step_1": ((4, 4), dict(refresh_every=2, start_preconditioning_step=1)),
    "matrix": ((6, 4), dict(refresh_every=2, start_preconditioning_step=3)),
    "blocks": (
        (6, 4),
        dict(
            max_preconditioner_dim=4,
            sample_every=2,
            refresh_every=2,
            start_preconditioning_step=5,
            statistics_decay=0.9,
            weight_decay=0.1,
        ),
    ),  # fmt: skip
    "tensor_one_sided": (
        (2, 3, 4),
        dict(
            max_preconditioner_dim=4,
            blocking=False,
            refresh_every=3,
            start_preconditioning_step=3,
            beta_1=0.9,
            beta_2=0.99,
        ),
    ),  # fmt: skip
    "vector": ((5,), dict()),
}
STEPS = 10
LR = 0.05
# float32 against float64: Adam's per-coordinate normalization turns a rotated
# coordinate whose gradient is near zero into an O(1) ratio, so its rounding
# shows in the weights at 1e-5 (seen: at most 7e-5 within 14 steps). A wrong rule
# (no permutation of V, a bias correction off by one step) moves them by > 1e-3.
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def _trajectory(shape, kwargs, mode="eager", steps=STEPS):
    quadratic = Quadratic(shape, seed=1)
    variable = keras.Variable(quadratic.start.astype("float32"))
    optimizer = SOAP(LR, **kwargs)
    optimizer.build([variable])
    hessian = tf.constant(quadratic.hessian, "float32")
    optimum = tf.constant(np.ravel(quadratic.optimum), "float32")

    def step():
        flat = tf.reshape(variable.value, (-1,))
        gradient = tf.reshape(tf.linalg.matvec(hessian, flat - optimum), shape)
        optimizer.apply([gradient], [variable])

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    reference = SOAPReference(shape, LR, **kwargs)
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
    np.testing.assert_allclose(ours, theirs, **TOLERANCE)
    assert np.max(np.abs(theirs[-1] - quadratic.start)) > 0.2
    assert quadratic.value(theirs[-1]) < quadratic.value(quadratic.start)


@pytest.mark.parametrize("mode", ["graph", "xla"])
def test_matches_the_numpy_rule_compiled(mode):
    shape, kwargs = CASES["blocks"]
    ours, theirs, _ = _trajectory(shape, kwargs, mode=mode)
    np.testing.assert_allclose(ours, theirs, **TOLERANCE)


def test_a_refresh_that_reorders_the_basis_permutes_the_second_moment():
    """Scripted gradients whose dominant row moves every step: the eigenvalue order changes
    at every refresh, so ``V`` must follow its basis directions (the reference without the
    permutation ends up 2 to 3 away)."""
    rng = np.random.default_rng(3)
    settings = dict(statistics_decay=0.3, refresh_every=1, weight_decay=0.0)
    variable = keras.Variable(np.zeros((3, 2), "float32"))
    optimizer = SOAP(0.1, **settings)
    reference = SOAPReference((3, 2), 0.1, **settings)
    w = np.zeros((3, 2))
    for t in range(8):
        g = 0.1 * rng.normal(size=(3, 2))
        g[t % 3] += [3.0, -2.0]
        optimizer.apply([g.astype("float32")], [variable])
        w = reference.step(w, g)
        np.testing.assert_allclose(variable.numpy(), w, rtol=1e-5, atol=1e-5)


def test_the_rotation_changes_the_direction():
    shape, kwargs = CASES["matrix"]
    ours, _, _ = _trajectory(shape, kwargs)
    adamw, _, _ = _trajectory(shape, {**kwargs, "start_preconditioning_step": 10**6})
    assert np.max(np.abs(ours[-1] - adamw[-1])) > 1e-2


def _run_keras(optimizer, shape=(6, 4), steps=12):
    quadratic = Quadratic(shape, seed=2)
    kernel = keras.Variable(quadratic.start.astype("float32"))
    vector = keras.Variable(np.linspace(-1, 1, shape[-1]).astype("float32"))
    for _ in range(steps):
        grads = [
            quadratic.grad(kernel.numpy().astype("float64")).astype("float32"),
            (2.0 * vector.numpy()).astype("float32"),
        ]
        optimizer.apply(grads, [kernel, vector])
    return kernel.numpy(), vector.numpy()


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_without_preconditioning_it_is_adamw(weight_decay):
    settings = dict(beta_1=0.9, beta_2=0.95, epsilon=1e-7, weight_decay=weight_decay)
    ours = _run_keras(SOAP(0.05, start_preconditioning_step=10**6, **settings))
    theirs = _run_keras(keras.optimizers.AdamW(0.05, **settings))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_vectors_follow_adamw_while_matrices_are_rotated():
    ours = _run_keras(SOAP(0.05, weight_decay=0.01))
    adamw = _run_keras(
        keras.optimizers.AdamW(0.05, beta_1=0.95, beta_2=0.95, epsilon=1e-8, weight_decay=0.01)
    )
    np.testing.assert_allclose(ours[1], adamw[1], rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(ours[0] - adamw[0])) > 1e-2


def test_bases_are_orthogonal_and_change_only_at_refresh_steps():
    kernel = keras.Variable(np.ones((5, 3), "float32"))
    optimizer = SOAP(0.01, refresh_every=3, start_preconditioning_step=2)
    optimizer.build([kernel])
    bases = [w for w in optimizer.variables if "_basis_" in w.path]
    assert len(bases) == 2
    rng = np.random.default_rng(0)
    changed_at = []
    for step in range(1, 10):
        before = [b.numpy().copy() for b in bases]
        optimizer.apply([rng.normal(size=(5, 3)).astype("float32")], [kernel])
        if any(not np.array_equal(b, q.numpy()) for b, q in zip(before, bases, strict=True)):
            changed_at.append(step)
    assert changed_at == [2, 5, 8]
    for basis in bases:
        q = basis.numpy()
        np.testing.assert_allclose(q.T @ q, np.eye(len(q)), atol=1e-5)


def test_config_round_trip():
    optimizer = SOAP(
        0.01, beta_1=0.9, beta_2=0.99, epsilon=1e-7, statistics_decay=0.9, sample_every=3,
        refresh_every=5, start_preconditioning_step=4, max_preconditioner_dim=32,
        blocking=False, weight_decay=None, global_clipnorm=1.0,
    )  # fmt: skip
    restored = assert_round_trip(optimizer)
    assert restored.weight_decay is None and restored.global_clipnorm == 1.0


@pytest.mark.parametrize(
    "kwargs, error, received",
    [
        (dict(beta_1=-0.1), ValueError, "beta_1=-0.1"),
        (dict(beta_2="0.9"), TypeError, "beta_2='0.9'"),
        (dict(epsilon=-1.0), ValueError, "epsilon=-1.0"),
        (dict(statistics_decay=float("nan")), ValueError, "statistics_decay=nan"),
        (dict(refresh_every=0), ValueError, "refresh_every=0"),
        (dict(start_preconditioning_step=True), TypeError, "start_preconditioning_step=True"),
        (dict(weight_decay=float("inf")), ValueError, "weight_decay=inf"),
    ],
)
def test_validation(kwargs, error, received):
    with pytest.raises(error, match=received):
        SOAP(**kwargs)
