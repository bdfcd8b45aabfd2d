"""Plain numpy (float64) implementations of Shampoo's and SOAP's update rules, for the tests.

Written from the papers' formulas and the rules stated in the docstrings of
``nnkit.optimizers.Shampoo`` and ``SOAP``, not from their code: one loop per
step over explicit blocks, ``np.linalg.eigh`` and ``np.linalg.qr`` as numpy
returns them. In particular no sign or order canonicalization: both updates
are invariant to the signs of the eigenvectors (SOAP's rotation appears once
forwards and once backwards; Shampoo's root is a matrix function), so the
implementation's canonical choice must not change the weights.

A quadratic ``f(w) = ½ (w − w*)ᵀ H (w − w*)`` over the flattened weights (its
Hessian ``H`` random, not Kronecker-structured) supplies the gradients.
"""

import math

import numpy as np


class Quadratic:
    """``f(w) = ½ (w − w*)ᵀ H (w − w*)`` for weights of ``shape``; ``grad(w)`` in that shape."""

    def __init__(self, shape, seed=0, condition=30.0):
        rng = np.random.default_rng(seed)
        n = math.prod(shape)
        q, _ = np.linalg.qr(rng.normal(size=(n, n)))
        self.hessian = (q * np.geomspace(1.0, condition, n)) @ q.T
        self.optimum = rng.normal(size=shape)
        self.start = rng.normal(size=shape)
        self.shape = tuple(shape)

    def grad(self, w):
        return (self.hessian @ (np.ravel(w) - np.ravel(self.optimum))).reshape(self.shape)

    def value(self, w):
        d = np.ravel(w) - np.ravel(self.optimum)
        return 0.5 * d @ self.hessian @ d


def _side(length, max_dim, blocking):
    """``(ranges, preconditioned)`` of one side of the matrix."""
    if length == 1:
        return [(0, 1)], False
    if length <= max_dim:
        return [(0, length)], True
    if blocking:
        return [(s, min(s + max_dim, length)) for s in range(0, length, max_dim)], True
    return [(0, length)], False


class _Blocks:
    """The matrix view of a variable (rows = product of all but the last dim) and its blocks."""

    def __init__(self, shape, max_dim, blocking):
        self.shape = tuple(shape)
        self.active = len(shape) >= 2
        if not self.active:
            return
        self.rows, self.cols = math.prod(shape[:-1]), shape[-1]
        self.row_ranges, self.left = _side(self.rows, max_dim, blocking)
        self.col_ranges, self.right = _side(self.cols, max_dim, blocking)
        self.active = self.left or self.right
        self.keys = [
            (i, j) for i in range(len(self.row_ranges)) for j in range(len(self.col_ranges))
        ]

    def get(self, array, key):
        (r0, r1), (c0, c1) = self.row_ranges[key[0]], self.col_ranges[key[1]]
        return array.reshape(self.rows, self.cols)[r0:r1, c0:c1]

    def empty(self):
        return np.zeros((self.rows, self.cols))

    def put(self, matrix, key, block):
        (r0, r1), (c0, c1) = self.row_ranges[key[0]], self.col_ranges[key[1]]
        matrix[r0:r1, c0:c1] = block


def inverse_root(statistic, exponent, damping):
    """``(S + damping·λ_max·I)^(−exponent)``, negative eigenvalues counted as 0."""
    values, vectors = np.linalg.eigh((statistic + statistic.T) / 2)
    top = values.max()
    if top <= 0:
        return np.eye(len(statistic))
    damped = np.maximum(values, 0.0) + damping * top
    return vectors @ np.diag(damped**-exponent) @ vectors.T


class ShampooReference:
    """Shampoo with a graft, as in the docstring of ``nnkit.optimizers.Shampoo``."""

    def __init__(
        self,
        shape,
        learning_rate,
        *,
        graft="adam",
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        statistics_decay=1.0,
        relative_damping=1e-6,
        exponent=None,
        sample_every=1,
        refresh_every=20,
        start_preconditioning_step=20,
        max_preconditioner_dim=1024,
        blocking=True,
    ):
        self.lr, self.graft = learning_rate, graft
        self.b1, self.b2, self.eps = beta_1, beta_2, epsilon
        self.decay, self.damping = statistics_decay, relative_damping
        self.s, self.f, self.t0 = sample_every, refresh_every, start_preconditioning_step
        self.m, self.v, self.t = np.zeros(shape), np.zeros(shape), 0
        self.blocks = _Blocks(shape, max_dim=max_preconditioner_dim, blocking=blocking)
        b = self.blocks
        if b.active:
            sides = int(b.left) + int(b.right)
            self.e = exponent if exponent is not None else 1.0 / (2 * sides)
            shapes = {k: b.get(np.zeros(shape), k).shape for k in b.keys}
            self.L = {k: np.zeros((r, r)) for k, (r, _) in shapes.items()} if b.left else {}
            self.R = {k: np.zeros((c, c)) for k, (_, c) in shapes.items()} if b.right else {}
            self.L_root = {k: np.eye(len(x)) for k, x in self.L.items()}
            self.R_root = {k: np.eye(len(x)) for k, x in self.R.items()}

    def step(self, w, g):
        self.t += 1
        t = self.t
        self.m = self.b1 * self.m + (1 - self.b1) * g
        m_hat = self.m / (1 - self.b1**t)
        if self.graft == "adam":
            self.v = self.b2 * self.v + (1 - self.b2) * g**2
            v_hat = self.v / (1 - self.b2**t)
            # Keras's ε: added to √v, not to √v̂.
            graft = m_hat / (np.sqrt(v_hat) + self.eps / math.sqrt(1 - self.b2**t))
        elif self.graft == "rmsprop":
            self.v = self.b2 * self.v + (1 - self.b2) * g**2
            graft = m_hat / np.sqrt(self.v + self.eps)
        else:
            graft = m_hat
        b = self.blocks
        if not b.active:
            return w - self.lr * graft
        update = b.empty()
        for key in b.keys:
            G = b.get(g, key)
            if (t - 1) % self.s == 0:
                if b.left:
                    self.L[key] = self.decay * self.L[key] + G @ G.T
                if b.right:
                    self.R[key] = self.decay * self.R[key] + G.T @ G
            if t >= self.t0 and (t - self.t0) % self.f == 0:
                if b.left:
                    self.L_root[key] = inverse_root(self.L[key], self.e, self.damping)
                if b.right:
                    self.R_root[key] = inverse_root(self.R[key], self.e, self.damping)
            D = b.get(graft, key)
            if t < self.t0:
                b.put(update, key, D)
                continue
            P = b.get(m_hat, key)
            if b.left:
                P = self.L_root[key] @ P
            if b.right:
                P = P @ self.R_root[key]
            b.put(update, key, np.linalg.norm(D) / np.linalg.norm(P) * P)
        return w - self.lr * update.reshape(w.shape)


def _eigenvectors_descending(statistic):
    values, vectors = np.linalg.eigh((statistic + statistic.T) / 2)
    return vectors[:, ::-1]


class SOAPReference:
    """SOAP as in the docstring of ``nnkit.optimizers.SOAP`` (Vyas et al., Algorithm 3)."""

    def __init__(
        self,
        shape,
        learning_rate,
        *,
        beta_1=0.95,
        beta_2=0.95,
        epsilon=1e-8,
        statistics_decay=0.95,
        sample_every=1,
        refresh_every=10,
        start_preconditioning_step=1,
        max_preconditioner_dim=1024,
        blocking=True,
        weight_decay=0.01,
    ):
        self.lr, self.wd = learning_rate, weight_decay or 0.0
        self.b1, self.b2, self.eps = beta_1, beta_2, epsilon
        self.decay = statistics_decay
        self.s, self.f, self.t0 = sample_every, refresh_every, start_preconditioning_step
        self.m, self.v, self.t = np.zeros(shape), np.zeros(shape), 0
        self.blocks = b = _Blocks(shape, max_dim=max_preconditioner_dim, blocking=blocking)
        if b.active:
            shapes = {k: b.get(np.zeros(shape), k).shape for k in b.keys}
            self.L = {k: np.zeros((r, r)) for k, (r, _) in shapes.items()} if b.left else {}
            self.R = {k: np.zeros((c, c)) for k, (_, c) in shapes.items()} if b.right else {}
            self.QL = {k: np.eye(len(x)) for k, x in self.L.items()}
            self.QR = {k: np.eye(len(x)) for k, x in self.R.items()}
            self.V = {k: np.zeros(s) for k, s in shapes.items()}

    @staticmethod
    def _power_qr(statistic, basis):
        estimates = np.einsum("ij,ij->j", basis, statistic @ basis)
        order = np.argsort(-estimates, kind="stable")
        q, _ = np.linalg.qr(statistic @ basis[:, order])
        return q, order

    def step(self, w, g):
        self.t += 1
        t = self.t
        w = w - self.lr * self.wd * w  # decoupled weight decay
        self.m = self.b1 * self.m + (1 - self.b1) * g
        b = self.blocks
        if not b.active:
            self.v = self.b2 * self.v + (1 - self.b2) * g**2
            m_hat, v_hat = self.m / (1 - self.b1**t), self.v / (1 - self.b2**t)
            return w - self.lr * m_hat / (np.sqrt(v_hat) + self.eps / math.sqrt(1 - self.b2**t))
        k = t - self.t0 if t > self.t0 else t  # steps since m and V were reset
        update = b.empty()
        restarted = self.m.reshape(b.rows, b.cols).copy()  # m after any restart at t₀
        for key in b.keys:
            G = b.get(g, key)
            if (t - 1) % self.s == 0:
                if b.left:
                    self.L[key] = self.decay * self.L[key] + G @ G.T
                if b.right:
                    self.R[key] = self.decay * self.R[key] + G.T @ G
            # Adam in the bases of the previous refresh ...
            QL = self.QL.get(key, np.eye(G.shape[0]))
            QR = self.QR.get(key, np.eye(G.shape[1]))
            rotated = QL.T @ G @ QR
            first = QL.T @ b.get(self.m, key) @ QR
            self.V[key] = self.b2 * self.V[key] + (1 - self.b2) * rotated**2
            m_hat, v_hat = first / (1 - self.b1**k), self.V[key] / (1 - self.b2**k)
            adam = m_hat / (np.sqrt(v_hat) + self.eps / math.sqrt(1 - self.b2**k))
            b.put(update, key, QL @ adam @ QR.T)
            # ... then the refresh due at this step, for the next one.
            if t == self.t0:
                if b.left:
                    self.QL[key] = _eigenvectors_descending(self.L[key])
                if b.right:
                    self.QR[key] = _eigenvectors_descending(self.R[key])
                self.V[key] = np.zeros_like(self.V[key])
                b.put(restarted, key, np.zeros_like(G))
            elif t > self.t0 and (t - self.t0) % self.f == 0:
                if b.left:
                    self.QL[key], order = self._power_qr(self.L[key], self.QL[key])
                    self.V[key] = self.V[key][order, :]
                if b.right:
                    self.QR[key], order = self._power_qr(self.R[key], self.QR[key])
                    self.V[key] = self.V[key][:, order]
        self.m = restarted.reshape(self.m.shape)
        return w - self.lr * update.reshape(w.shape)
