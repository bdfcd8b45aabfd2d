"""The Kronecker-factor machinery shared by Shampoo and SOAP, against numpy closed forms."""

import numpy as np
import pytest
import tensorflow as tf

from nnkit.optimizers import _kronecker as kron


def _spd(n, seed, spectrum=None):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    values = np.geomspace(10.0, 0.1, n) if spectrum is None else np.asarray(spectrum, float)
    return (q * values) @ q.T, q, values


@pytest.mark.parametrize(
    "shape, max_dim, blocking, expected",
    [
        ((5,), 8, True, None),  # 1-D: the first-order fallback
        ((), 8, True, None),
        ((6, 4), 8, True, ((6, 4), ((0, 6),), ((0, 4),), True, True)),
        ((2, 3, 4), 8, True, ((6, 4), ((0, 6),), ((0, 4),), True, True)),  # leading dims merged
        ((10, 4), 4, True, ((10, 4), ((0, 4), (4, 8), (8, 10)), ((0, 4),), True, True)),
        ((10, 4), 4, False, ((10, 4), ((0, 10),), ((0, 4),), False, True)),  # one-sided
        ((10, 9), 4, False, None),  # no side small enough, no blocking: fallback
        ((7, 1), 8, True, ((7, 1), ((0, 7),), ((0, 1),), True, False)),  # a side of 1
        ((1, 1), 8, True, None),
        # No block of length 1 (issue 22: TensorFlow's graph optimizer broke its 1 × 1 eigh).
        ((9, 4), 4, True, ((9, 4), ((0, 4), (4, 7), (7, 9)), ((0, 4),), True, True)),
        ((2, 3), 2, True, ((2, 3), ((0, 2),), ((0, 3),), True, True)),  # the lone column joins
        ((5, 2), 1, True, None),  # max_preconditioner_dim=1: no side can be preconditioned
    ],
)
def test_layout(shape, max_dim, blocking, expected):
    plan = kron.layout(shape, max_dim, blocking)
    if expected is None:
        assert plan is None
        return
    (rows, cols), row_splits, col_splits, left, right = expected
    assert (plan.rows, plan.cols) == (rows, cols)
    assert plan.row_splits == row_splits and plan.col_splits == col_splits
    assert (plan.left, plan.right) == (left, right)
    assert plan.sides == int(left) + int(right)


def test_split_and_merge_are_inverse():
    plan = kron.layout((2, 5, 7), 3, True)  # a 10 × 7 matrix in 4 × 3 blocks
    x = np.arange(70, dtype="float32").reshape(2, 5, 7)
    blocks = kron.split(x, plan)
    assert sorted(blocks) == plan.blocks and len(blocks) == 12
    # No block of length 1: rows cut 3, 3, 2, 2 and columns 3, 2, 2 (issue 22).
    assert plan.row_splits == ((0, 3), (3, 6), (6, 8), (8, 10))
    assert plan.col_splits == ((0, 3), (3, 5), (5, 7))
    np.testing.assert_array_equal(np.asarray(blocks[1, 2]), x.reshape(10, 7)[3:6, 5:7])
    np.testing.assert_array_equal(np.asarray(kron.merge(blocks, plan)), x)


def test_accumulate():
    rng = np.random.default_rng(0)
    s, g = rng.normal(size=(3, 3)).astype("float32"), rng.normal(size=(3, 2)).astype("float32")
    np.testing.assert_allclose(kron.accumulate(s, g, "left", 0.5), 0.5 * s + g @ g.T, rtol=1e-6)
    r = rng.normal(size=(2, 2)).astype("float32")
    np.testing.assert_allclose(kron.accumulate(r, g, "right", 1.0), r + g.T @ g, rtol=1e-6)


def _run(fn, mode):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=mode == "xla")


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_inverse_root_matches_the_closed_form(mode):
    """Q diag((λ + ε·λ_max)^(−e)) Qᵀ, for a matrix with known eigenpairs."""
    s, q, values = _spd(6, seed=1)
    exponent, damping = 0.25, 1e-3
    expected = (q * (values + damping * values.max()) ** -exponent) @ q.T
    got = _run(lambda x: kron.inverse_root(x, exponent, damping), mode)(s.astype("float32"))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-4, atol=2e-5)
    # Scale-free: the damping is relative to the largest eigenvalue.
    scaled = _run(lambda x: kron.inverse_root(x, exponent, damping), mode)((1e3 * s).astype("f4"))
    np.testing.assert_allclose(np.asarray(scaled), expected * 1e3**-exponent, rtol=2e-4, atol=2e-6)


def test_inverse_root_clips_negative_eigenvalues_and_is_identity_for_zero():
    s, q, _ = _spd(4, seed=2, spectrum=[4.0, 1.0, 0.0, -1e-3])
    got = np.asarray(kron.inverse_root(s.astype("float32"), 0.5, 0.01))
    damped = np.array([4.0, 1.0, 0.0, 0.0]) + 0.04
    np.testing.assert_allclose(got, (q * damped**-0.5) @ q.T, rtol=1e-3, atol=1e-4)
    zero = np.asarray(kron.inverse_root(np.zeros((3, 3), "float32"), 0.25, 1e-6))
    np.testing.assert_array_equal(zero, np.eye(3))


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_eigh_is_canonical(mode):
    """Descending eigenvalues, each eigenvector's largest entry positive, whatever numpy returns."""
    s, _, values = _spd(5, seed=3)
    got_values, got_vectors = _run(kron.eigh, mode)(s.astype("float32"))
    got_values, got_vectors = np.asarray(got_values), np.asarray(got_vectors)
    np.testing.assert_allclose(got_values, values, rtol=1e-5)
    _, reference = np.linalg.eigh(s)
    reference = reference[:, ::-1]
    pivots = np.argmax(np.abs(reference), axis=0)
    reference = reference * np.sign(reference[pivots, np.arange(5)])
    np.testing.assert_allclose(got_vectors, reference, atol=1e-5)
    assert np.all(got_vectors[np.argmax(np.abs(got_vectors), axis=0), np.arange(5)] > 0)


def test_refreshed_basis_sorts_converges_and_keeps_signs():
    s, q, values = _spd(4, seed=4, spectrum=[8.0, 4.0, 2.0, 1.0])
    # A basis close to the eigenvectors, in the wrong order, one column flipped.
    rng = np.random.default_rng(5)
    start, _ = np.linalg.qr(q[:, [2, 0, 3, 1]] * [1, -1, 1, 1] + 0.05 * rng.normal(size=(4, 4)))
    start = start * np.sign(np.diag(start.T @ q[:, [2, 0, 3, 1]] * [1, -1, 1, 1]))
    basis, order = kron.refreshed_basis(s.astype("float32"), start.astype("float32"))
    # π sorts the estimated eigenvalues diag(Qᵀ S Q) in descending order.
    assert list(np.asarray(order)) == list(np.argsort(-np.diag(start.T @ s @ start)))
    assert list(np.asarray(order)) == [1, 3, 0, 2]
    # One step of the power iteration, QR with a non-negative diagonal of R.
    expected, r = np.linalg.qr(s @ start[:, [1, 3, 0, 2]])
    expected = expected * np.sign(np.diag(r))
    np.testing.assert_allclose(np.asarray(basis), expected, atol=1e-5)
    # Repeated refreshes converge to the eigenvectors, each aligned with the start.
    for _ in range(40):
        basis, order = kron.refreshed_basis(s.astype("float32"), basis)
    aligned = q * np.sign(np.sum(q * np.asarray(basis), axis=0))
    np.testing.assert_allclose(np.asarray(basis), aligned, atol=1e-3)
    np.testing.assert_allclose(
        np.diag(np.asarray(basis).T @ s @ np.asarray(basis)), values, rtol=1e-4
    )
