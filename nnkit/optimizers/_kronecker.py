"""Kronecker-factor machinery shared by ``Shampoo`` and ``SOAP``: layout, statistics, roots, bases.

A variable of shape ``(d_1, …, d_k)`` with ``k >= 2`` is preconditioned as the
matrix ``G`` of shape ``(d_1 ⋯ d_{k-1}, d_k)`` (a ``Dense`` kernel as it is, a
``Conv2D`` kernel ``(h, w, c_in, c_out)`` as ``(h·w·c_in, c_out)``). Its two
*sides* (rows and columns) each get a factor:

    L ← β·L + G Gᵀ        (rows × rows)
    R ← β·R + Gᵀ G        (columns × columns)

A side longer than ``max_preconditioner_dim`` is cut into blocks of at most
that length when ``blocking`` is on (each block ``G_ij`` then has its own
``L_ij`` and ``R_ij``, as in Distributed Shampoo), and is left
unpreconditioned (an identity factor) when it is off. A side of length 1 is
never preconditioned (its factor is a scalar), and no block has length 1
(see ``_splits``). A variable with no
preconditioned side, and every 0-D or 1-D variable, has no layout: the
optimizer falls back to its first-order rule for it.

Everything here is a pure function of float32 tensors written in
``keras.ops`` (TensorFlow and JAX). Eigen- and QR-decompositions are
*canonicalized* so that every replica of a ``MirroredStrategy`` (and every
backend) computes the same thing from the same statistics: eigenvalues in
descending order, each eigenvector's largest entry positive, and QR factors
with a non-negative diagonal in ``R`` (the unique QR of a full-rank matrix).
"""

import dataclasses
import math

from keras import ops


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one variable is preconditioned: its matrix shape, its blocks and sides."""

    shape: tuple  # the variable's shape
    rows: int
    cols: int
    row_splits: tuple  # ((start, stop), ...) along the rows
    col_splits: tuple
    left: bool  # whether the rows are preconditioned (L factors exist)
    right: bool  # whether the columns are preconditioned (R factors exist)

    @property
    def blocks(self):
        """``[(i, j)]``: the index of every block, row-major."""
        return [(i, j) for i in range(len(self.row_splits)) for j in range(len(self.col_splits))]

    @property
    def sides(self):
        """Number of preconditioned sides (1 or 2)."""
        return int(self.left) + int(self.right)

    def block_shape(self, i, j):
        (r0, r1), (c0, c1) = self.row_splits[i], self.col_splits[j]
        return r1 - r0, c1 - c0


def _splits(length, max_dim, blocking):
    """``(splits, preconditioned)`` of one side.

    No block has length 1: its factor would be a scalar (as for a side of
    length 1), and TensorFlow's graph optimizer breaks the ``1 × 1``
    eigendecomposition outside XLA (a raw ``InvalidArgumentError`` in
    ``fit``). Where cutting into blocks of ``max_dim`` leaves a last block
    of length 1, the last two blocks become ``max_dim − 1`` and ``2`` long
    (``max_dim >= 3``) or the lone row joins the block before it, 3 long
    (``max_dim == 2``); with ``max_dim == 1`` a longer side is not
    preconditioned.
    """
    if length == 1:
        return ((0, 1),), False
    if length <= max_dim:
        return ((0, length),), True
    if blocking and max_dim > 1:
        starts = list(range(0, length, max_dim))
        if length - starts[-1] == 1:
            if max_dim >= 3:
                starts[-1] -= 1
            else:
                starts.pop()
        stops = starts[1:] + [length]
        return tuple(zip(starts, stops, strict=True)), True
    return ((0, length),), False


def layout(shape, max_dim, blocking):
    """The ``Layout`` of a variable of ``shape``, or ``None`` (first-order fallback)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        return None
    rows, cols = math.prod(shape[:-1]), shape[-1]
    row_splits, left = _splits(rows, max_dim, blocking)
    col_splits, right = _splits(cols, max_dim, blocking)
    if not (left or right):
        return None
    return Layout(shape, rows, cols, row_splits, col_splits, left, right)


def split(value, plan):
    """``{(i, j): block}`` of a tensor of the variable's shape, as matrices."""
    matrix = ops.reshape(value, (plan.rows, plan.cols))
    if len(plan.blocks) == 1:
        return {(0, 0): matrix}
    blocks = {}
    for i, j in plan.blocks:
        (r0, r1), (c0, c1) = plan.row_splits[i], plan.col_splits[j]
        blocks[i, j] = matrix[r0:r1, c0:c1]
    return blocks


def merge(blocks, plan):
    """The inverse of ``split``: a tensor of the variable's shape."""
    if len(plan.blocks) == 1:
        matrix = blocks[0, 0]
    else:
        rows = [
            ops.concatenate([blocks[i, j] for j in range(len(plan.col_splits))], axis=1)
            for i in range(len(plan.row_splits))
        ]
        matrix = ops.concatenate(rows, axis=0)
    return ops.reshape(matrix, plan.shape)


def accumulate(statistic, block, side, decay):
    """``β·S + G Gᵀ`` (``side="left"``) or ``β·S + Gᵀ G`` (``side="right"``)."""
    if side == "left":
        outer = ops.matmul(block, ops.transpose(block))
    else:
        outer = ops.matmul(ops.transpose(block), block)
    return decay * statistic + outer


def symmetric(matrix):
    """``(M + Mᵀ) / 2``: a matrix made exactly symmetric before a decomposition."""
    return 0.5 * (matrix + ops.transpose(matrix))


def _positive_pivots(vectors):
    """Flip each column so that its entry of largest magnitude is positive."""
    pivots = ops.argmax(ops.abs(vectors), axis=0)
    leading = ops.take_along_axis(vectors, ops.expand_dims(pivots, 0), axis=0)
    return vectors * ops.where(leading < 0, -1.0, 1.0)


def eigh(matrix):
    """``(λ, Q)`` of a symmetric matrix, canonicalized: λ descending, each column's pivot > 0."""
    values, vectors = ops.eigh(symmetric(matrix))
    values, vectors = ops.flip(values, axis=0), ops.flip(vectors, axis=1)
    return values, _positive_pivots(vectors)


def inverse_root(statistic, exponent, damping):
    """``(S + ε·λ_max·I)^(−exponent)`` through an eigendecomposition.

    Negative eigenvalues (rounding) count as 0; ``ε = damping`` is relative
    to the largest eigenvalue ``λ_max``, so the result does not depend on
    the scale of ``S``. A zero statistic (no gradient yet) gives ``I``.
    """
    values, vectors = eigh(statistic)
    top = ops.max(values)
    damped = ops.maximum(values, 0.0) + damping * top
    damped = ops.where(top > 0, damped, ops.ones_like(damped))
    powers = ops.exp(-exponent * ops.log(damped))
    root = ops.matmul(vectors * ops.expand_dims(powers, 0), ops.transpose(vectors))
    identity = ops.eye(ops.shape(statistic)[0], dtype=statistic.dtype)
    return ops.where(top > 0, symmetric(root), identity)


def initial_basis(statistic):
    """The eigenvectors of ``S`` (columns), canonicalized as in ``eigh``."""
    return eigh(statistic)[1]


def refreshed_basis(statistic, basis):
    """One power iteration and a QR step from ``basis`` towards the eigenvectors of ``S``.

    SOAP's refresh: the columns of ``Q`` are sorted by their estimated
    eigenvalues ``diag(Qᵀ S Q)`` (descending), then ``Q ← qr(S Q)`` with the
    signs fixed so that ``R`` has a non-negative diagonal (so ``Q`` stays
    aligned with the previous basis). Returns ``(Q, order)``: ``order`` is
    the permutation applied to the old columns, which the caller applies to
    whatever it keeps per basis direction (SOAP's second moment).
    """
    estimates = ops.sum(basis * ops.matmul(statistic, basis), axis=0)
    order = ops.argsort(-estimates)
    ordered = ops.take(basis, order, axis=1)
    q, r = ops.qr(ops.matmul(statistic, ordered))
    signs = ops.where(ops.diagonal(r) < 0, -1.0, 1.0)
    return q * ops.expand_dims(signs, 0), order
