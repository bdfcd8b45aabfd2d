"""K-FAC's arithmetic in ``keras.ops``: the factor statistics, damped inverses, preconditioning.

Pure functions of tensors (float32 throughout), shared by the capture (the
statistics are computed in the backward pass of a registered layer) and the
optimizer (moving averages, inverses, the preconditioned direction). Shapes,
for a block whose kernel maps ``d_in`` inputs to ``d_out`` outputs (a
``Conv2D``: ``d_in = kh·kw·c_in`` values per patch), with a bias as the
homogeneous coordinate ``ã = [a, 1]``:

- ``A = E[ã ãᵀ]``: ``(d_in + 1, d_in + 1)`` (``d_in`` without a bias);
- ``G = E[g gᵀ]``: ``(d_out, d_out)``, ``g`` the gradient of one example's
  loss with respect to the layer's pre-activation;
- the block gradient ``∇ = [∇W; ∇b]``: ``(d_in + 1, d_out)``; the K-FAC
  direction is ``(A + π·√λ·I)⁻¹ ∇ (G + √λ/π·I)⁻¹`` (``"pi"``),
  ``(A + √λ·I)⁻¹ ∇ (G + √λ·I)⁻¹`` (``"tikhonov"``) or, with the
  eigendecompositions ``A = Q_A diag(α) Q_Aᵀ``, ``G = Q_G diag(γ) Q_Gᵀ``,
  ``Q_A [(Q_Aᵀ ∇ Q_G) / (α γᵀ + λ)] Q_Gᵀ`` (``"eigen"``: exactly
  ``(A⊗G + λ·I)⁻¹`` applied to ``∇``).
"""

from keras import ops

from nnkit.optimizers import _kronecker as kron

DAMPING_TYPES = ("pi", "tikhonov", "eigen")
#: ``output_fisher`` values: the empirical factor, or the Gauss-Newton (here
#: equal to the true Fisher) output factor of a Keras loss.
OUTPUT_FISHERS = (
    "empirical",
    "mean_squared_error",
    "categorical_crossentropy",
    "binary_crossentropy",
)
_EPSILON = 1e-12


def _rows(x):
    """``x`` as float32 rows ``(n, last dimension)``."""
    x = ops.cast(x, "float32")
    return ops.reshape(x, (-1, ops.shape(x)[-1]))


def _with_ones(rows):
    return ops.concatenate([rows, ops.ones((ops.shape(rows)[0], 1), "float32")], axis=1)


def covariance(rows, *, bias):
    """``E[ã ãᵀ]`` over ``rows`` (``ã = [a, 1]`` with ``bias``): the input factor's statistic."""
    if bias:
        rows = _with_ones(rows)
    count = ops.cast(ops.shape(rows)[0], "float32")
    return ops.matmul(ops.transpose(rows), rows) / count


def dense_input_statistic(inputs, *, bias):
    """``A``'s statistic for a ``Dense`` layer: its inputs, every leading position a row."""
    return covariance(_rows(inputs), bias=bias)


def conv_patches(inputs, kernel_size, *, strides, padding, dilation_rate, data_format):
    """The input patches a convolution kernel sees, ``(rows, k₁·…·k_r·c_in)``, in its kernel's order.

    For a 1-, 2- or 3-D convolution (``r = len(kernel_size)``): one
    convolution with the identity kernel, whose output channel
    ``(offset index)·c_in + c`` holds input channel ``c`` at that kernel
    offset (offsets in row-major order), which is
    ``kernel.reshape(k₁·…·k_r·c_in, c_out)``'s row order.
    """
    inputs = ops.cast(inputs, "float32")
    channels_axis = -1 if data_format == "channels_last" else 1
    channels = ops.shape(inputs)[channels_axis]
    size = channels
    for k in kernel_size:
        size *= k
    identity = ops.reshape(ops.eye(size, dtype="float32"), (*kernel_size, channels, size))
    patches = ops.conv(
        inputs,
        identity,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        data_format=data_format,
    )
    if data_format != "channels_last":
        patches = ops.moveaxis(patches, 1, -1)
    return ops.reshape(patches, (-1, size))


def token_frequencies(ids, vocabulary):
    """``diag(A)`` of an ``Embedding``: each token's share of the batch's positions, ``(vocabulary,)``.

    ``A = E[e_t e_tᵀ]`` over the positions, ``e_t`` the one-hot row of token
    ``t``: a diagonal matrix, kept as its diagonal ``count(t) / positions``.
    """
    ids = ops.reshape(ops.cast(ids, "int32"), (-1,))
    ones = ops.ones(ops.shape(ids), "float32")
    counts = ops.segment_sum(ones, ids, num_segments=vocabulary)
    return counts / ops.cast(ops.shape(ids)[0], "float32")


def scale_shift_statistic(normalized, upstream, *, axes, scale, center):
    """``diag(G)`` of a normalization's scale and shift: ``E[g²]`` of each per-example gradient.

    ``y = x̂·γ + β`` over the normalized ``axes`` (positive, never 0): one
    example's gradients are ``∇γ = Σ x̂ ⊙ g`` and ``∇β = Σ g`` over its other
    axes, ``g = B·upstream`` (the upstream gradient of a batch-mean loss is
    ``g / B``). Returns ``[E[∇γ²], E[∇β²]]`` flattened (the parts present).
    """
    upstream = ops.cast(upstream, "float32")
    batch = ops.shape(upstream)[0]
    rank = len(upstream.shape)
    others = [axis for axis in range(1, rank) if axis not in axes]
    parts = []
    if scale:
        parts.append(ops.cast(normalized, "float32") * upstream)
    if center:
        parts.append(upstream)
    per_example = [
        ops.reshape(ops.sum(p, axis=others) if others else p, (batch, -1)) for p in parts
    ]
    per_example = ops.concatenate(per_example, axis=1) * ops.cast(batch, "float32")
    return ops.mean(ops.square(per_example), axis=0)


def output_statistic(upstream):
    """``G``'s empirical statistic from the upstream gradient of the mean loss.

    The upstream gradient of a batch-mean loss is ``g / B`` for ``B``
    examples (``B`` = the leading dimension), so ``B · Σ_rows u uᵀ`` is
    ``(1/B) Σ g gᵀ``: ``E[g gᵀ]`` per example, summed over the positions of
    a sequence or an image (the convention of Grosse & Martens 2016).
    """
    batch = ops.cast(ops.shape(upstream)[0], "float32")
    rows = _rows(upstream)
    return ops.matmul(ops.transpose(rows), rows) * batch


def output_fisher_statistic(preactivation, loss):
    """``G`` of the output layer in closed form: ``E[H]``, ``H`` the loss's Hessian in the logits.

    For these losses the Gauss-Newton matrix equals the true Fisher, and
    neither needs labels or a second backward pass. ``preactivation``: the
    output layer's pre-activation (the logits).

    - ``"mean_squared_error"`` (``mean_k (y - s)²``): ``(2/k)·I``;
    - ``"categorical_crossentropy"`` (softmax): ``E[diag(p) - p pᵀ]``;
    - ``"binary_crossentropy"`` (sigmoid, mean over ``k``): ``E[diag(p(1-p))]/k``.
    """
    rows = _rows(preactivation)
    units = ops.shape(rows)[-1]
    count = ops.cast(ops.shape(rows)[0], "float32")
    if loss == "mean_squared_error":
        return ops.eye(units, dtype="float32") * (2.0 / units)
    if loss == "categorical_crossentropy":
        p = ops.softmax(rows, axis=-1)
        return ops.diag(ops.mean(p, axis=0)) - ops.matmul(ops.transpose(p), p) / count
    if loss == "binary_crossentropy":
        p = ops.sigmoid(rows)
        return ops.diag(ops.mean(p * (1.0 - p), axis=0)) / units
    raise ValueError(f"`loss` must be one of {OUTPUT_FISHERS[1:]}. Received: loss={loss!r}")


def _is_diagonal(factor):
    """A factor kept as its diagonal (rank 1) rather than as a matrix."""
    return len(factor.shape) == 1


def _mean_eigenvalue(factor):
    if _is_diagonal(factor):
        return ops.mean(factor)
    return ops.trace(factor) / ops.cast(ops.shape(factor)[0], "float32")


def _damped_inverse(factor, shift):
    """``(F + shift·I)⁻¹``: a vector for a diagonal factor, a matrix otherwise."""
    if _is_diagonal(factor):
        return 1.0 / (factor + shift)
    return ops.inv(factor + shift * ops.eye(ops.shape(factor)[0], dtype="float32"))


def _eigen(factor):
    """``[Q, eigenvalues ≥ 0]``; a diagonal factor is its own eigenvalues (``Q = I``, not stored)."""
    if _is_diagonal(factor):
        return [ops.maximum(factor, 0.0)]
    values, vectors = kron.eigh(factor)
    return [vectors, ops.maximum(values, 0.0)]


def curvature(a, g, *, damping, damping_type):
    """What preconditioning needs, from the (bias-corrected) factors ``a`` and ``g``.

    ``"pi"``/``"tikhonov"``: ``[(A + π√λ·I)⁻¹, (G + √λ/π·I)⁻¹]`` (``π = 1``
    for ``"tikhonov"``; ``π = √((tr A / dim A) / (tr G / dim G))``).
    ``"eigen"``: ``[Q_A, α, Q_G, γ]`` (eigenvalues clipped at 0; λ is
    added in ``precondition``), from the shared canonical eigendecomposition
    of ``_kronecker`` (descending, sign-fixed: every replica computes the same).
    A factor kept as its diagonal (rank 1: an ``Embedding``'s ``A``) stays
    one: its inverse is a vector and its eigen entry is ``[α]`` alone (``Q = I``).
    """
    if not _is_diagonal(a):
        a = kron.symmetric(a)
    if not _is_diagonal(g):
        g = kron.symmetric(g)
    if damping_type == "eigen":
        return _eigen(a) + _eigen(g)
    root = ops.sqrt(ops.cast(damping, "float32"))
    if damping_type == "pi":
        pi = ops.sqrt(
            ops.maximum(_mean_eigenvalue(a), _EPSILON) / ops.maximum(_mean_eigenvalue(g), _EPSILON)
        )
    else:
        pi = 1.0
    return [_damped_inverse(a, pi * root), _damped_inverse(g, root / pi)]


def curvature_shapes(input_dim, output_dim, damping_type, *, diagonal_input=False,
                     diagonal_output=False):  # fmt: skip
    """The shapes ``curvature`` returns for factors of these sizes (each diagonal or not)."""
    if damping_type == "eigen":
        a_part = [(input_dim,)] if diagonal_input else [(input_dim, input_dim), (input_dim,)]
        g_part = [(output_dim,)] if diagonal_output else [(output_dim, output_dim), (output_dim,)]
        return a_part + g_part
    return [
        (input_dim,) if diagonal_input else (input_dim, input_dim),
        (output_dim,) if diagonal_output else (output_dim, output_dim),
    ]


def _left(inverse, matrix):
    """``inverse @ matrix``, ``inverse`` a matrix or the diagonal of one."""
    if _is_diagonal(inverse):
        return inverse[:, None] * matrix
    return ops.matmul(inverse, matrix)


def _right(matrix, inverse):
    """``matrix @ inverse``, ``inverse`` a matrix or the diagonal of one."""
    if _is_diagonal(inverse):
        return matrix * inverse[None, :]
    return ops.matmul(matrix, inverse)


def precondition(gradient, state, *, damping, damping_type):
    """The K-FAC direction for one block's ``(d_in [+1], d_out)`` gradient matrix."""
    if damping_type == "eigen":
        # [Q_A, α] or [α] (diagonal A), then [Q_G, γ] or [γ] (diagonal G).
        a_part = state[:1] if _is_diagonal(state[0]) else state[:2]
        g_part = state[len(a_part) :]
        q_a, alpha = (None, a_part[0]) if len(a_part) == 1 else a_part
        q_g, gamma = (None, g_part[0]) if len(g_part) == 1 else g_part
        rotated = gradient if q_a is None else ops.matmul(ops.transpose(q_a), gradient)
        rotated = rotated if q_g is None else ops.matmul(rotated, q_g)
        scaled = rotated / (alpha[:, None] * gamma[None, :] + damping)
        scaled = scaled if q_a is None else ops.matmul(q_a, scaled)
        return scaled if q_g is None else ops.matmul(scaled, ops.transpose(q_g))
    a_inverse, g_inverse = state
    return _right(_left(a_inverse, gradient), g_inverse)


def rescale(directions, gradients, learning_rate, *, kl_clip, max_update_norm):
    """The factor ``ν ≤ 1`` that bounds the step ``-learning_rate · ν · Δ`` (1 when unbounded).

    KL clipping (Ba et al. 2017): ``ν = min(1, √(κ / (η² Σ ⟨Δ, ∇⟩)))``, so
    the step's squared Fisher norm (twice the KL divergence it causes, to
    second order) is at most ``κ``. Norm constraint:
    ``ν = min(1, c / (η ‖Δ‖))``.
    """
    eta = ops.cast(learning_rate, "float32")
    if kl_clip is not None:
        total = sum(
            ops.sum(ops.cast(d, "float32") * ops.cast(g, "float32"))
            for d, g in zip(directions, gradients, strict=True)
        )
        curvature_norm = ops.maximum(eta * eta * total, _EPSILON)
        return ops.minimum(1.0, ops.sqrt(kl_clip / curvature_norm))
    if max_update_norm is not None:
        norm = ops.sqrt(sum(ops.sum(ops.square(ops.cast(d, "float32"))) for d in directions))
        return ops.minimum(1.0, max_update_norm / ops.maximum(eta * norm, _EPSILON))
    return None
