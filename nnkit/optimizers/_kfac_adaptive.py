"""The adaptive step of Martens & Grosse (2015, §6–7) in ``keras.ops``: pure functions.

``KFAC(learning_rate="adaptive")`` takes, each step, the update
``δ = α·Δ + μ·δ₀`` (``Δ = −F̆⁻¹∇`` the K-FAC direction, ``δ₀`` the previous
update) whose ``α`` and ``μ`` minimize the local quadratic model of the loss

    M(δ) = ½ δᵀ (C + λ·I) δ + ∇ᵀδ,

``C`` the exact Gauss-Newton matrix of the batch (for these losses also its
true Fisher). With ``v₁ = Δ``, ``v₂ = δ₀`` this is a 2×2 linear system::

    [v₁ᵀ(C+λ)v₁  v₁ᵀ(C+λ)v₂] [α]     [∇ᵀv₁]
    [v₂ᵀ(C+λ)v₁  v₂ᵀ(C+λ)v₂] [μ] = − [∇ᵀv₂]

whose entries need ``vᵢᵀ C vⱼ = E[(J vᵢ)ᵀ H (J vⱼ)]``: the output tangents
``J v`` of one forward-mode pass (``_kfac_passes.linearize``) and the
Hessian ``H`` of the loss with respect to the model's output, in closed form
(``quadratic_form``). With a fixed momentum only ``α`` is solved for; with
no previous update (the first step) ``μ = 0``. Where the model predicts no
decrease (``M(δ) ≥ 0``, or a non-finite solve) the step is skipped.

The damping ``λ`` (also the damping of the K-FAC factors) follows the
Levenberg–Marquardt rule every ``DAMPING_PERIOD`` steps, from the ratio of
the actual to the predicted reduction on the same batch,
``ρ = (h(θ + δ) − h(θ)) / M(δ)``: ``ρ > 3/4`` ⇒ ``λ ← ω·λ``; ``ρ < 1/4`` ⇒
``λ ← λ/ω``, with ``ω = (19/20)^DAMPING_PERIOD`` (Martens & Grosse's
constants), ``λ`` kept in ``[MIN_DAMPING, MAX_DAMPING]``.
"""

from keras import ops

#: The losses whose Gauss-Newton curvature the adaptive step and the sampled
#: Fisher know in closed form (their Keras names; sparse labels included).
FAMILIES = ("mean_squared_error", "categorical_crossentropy", "binary_crossentropy")
#: Steps between two Levenberg–Marquardt adjustments of the damping.
DAMPING_PERIOD = 5
#: The factor ``ω`` of one adjustment.
DAMPING_FACTOR = (19.0 / 20.0) ** DAMPING_PERIOD
MIN_DAMPING, MAX_DAMPING = 1e-8, 1e8
_EPSILON = 1e-12


def rows(x):
    """``x`` as float32 rows ``(positions, last dimension)``."""
    x = ops.cast(x, "float32")
    return ops.reshape(x, (-1, ops.shape(x)[-1]))


def row_weights(sample_weight, outputs):
    """Each output row's weight in Keras's mean loss (``None``: all 1)."""
    if sample_weight is None:
        return None
    batch = ops.shape(outputs)[0]
    per_example = ops.reshape(ops.cast(sample_weight, "float32"), (batch, -1))
    positions = ops.shape(rows(outputs))[0] // batch
    return ops.reshape(ops.broadcast_to(per_example, (batch, positions)), (-1,))


def quadratic_form(outputs, u, v, family, *, from_logits):
    """Per row, ``uᵀ H v``: ``H`` the Hessian of the row's loss in the model's output ``f``.

    Keras's losses, per row of ``k`` outputs (``p`` the probabilities):

    - ``mean_squared_error`` (``mean_k (f − y)²``): ``(2/k)·uᵀv``;
    - ``categorical_crossentropy``, logits: ``Σ p u v − (Σ p u)(Σ p v)``;
      probabilities (``f = p`` behind a softmax): ``Σ u v / p`` (the
      Gauss-Newton matrix of the logits seen through the softmax);
    - ``binary_crossentropy`` (mean over ``k``), logits: ``Σ p(1−p) u v / k``;
      probabilities: ``Σ u v / (p(1−p)) / k``.
    """
    f, u, v = rows(outputs), rows(u), rows(v)
    k = ops.cast(ops.shape(f)[-1], "float32")
    if family == "mean_squared_error":
        return ops.sum(u * v, axis=-1) * (2.0 / k)
    if family == "categorical_crossentropy":
        if from_logits:
            p = ops.softmax(f, axis=-1)
            return ops.sum(p * u * v, axis=-1) - ops.sum(p * u, axis=-1) * ops.sum(p * v, axis=-1)
        return ops.sum(u * v / ops.maximum(f, _EPSILON), axis=-1)
    if family == "binary_crossentropy":
        if from_logits:
            p = ops.sigmoid(f)
            return ops.sum(p * (1.0 - p) * u * v, axis=-1) / k
        return ops.sum(u * v / ops.maximum(f * (1.0 - f), _EPSILON), axis=-1) / k
    raise ValueError(f"`family` must be one of {FAMILIES}. Received: family={family!r}")


def curvature_products(outputs, tangents, family, *, from_logits, sample_weight=None):
    """``[v₁ᵀCv₁, v₁ᵀCv₂, v₂ᵀCv₂]`` from the output tangents ``[J v₁, J v₂]`` (batch means)."""
    weights = row_weights(sample_weight, outputs)
    first, second = tangents

    def mean(values):
        return ops.mean(values if weights is None else values * weights)

    return [
        mean(quadratic_form(outputs, a, b, family, from_logits=from_logits))
        for a, b in ((first, first), (first, second), (second, second))
    ]


def solve(curvature, norms, slopes, damping, *, momentum=None):
    """``(α, μ, M(δ))`` minimizing the quadratic model; ``(0, 0, 0)`` where it predicts no decrease.

    ``curvature = [v₁ᵀCv₁, v₁ᵀCv₂, v₂ᵀCv₂]``, ``norms`` the same with
    ``C = I``, ``slopes = [∇ᵀv₁, ∇ᵀv₂]``. ``momentum``: a fixed ``μ``, or
    ``None`` to solve for it.
    """
    c11, c12, c22 = curvature
    n11, n12, n22 = norms
    g1, g2 = slopes
    a11, a12, a22 = c11 + damping * n11, c12 + damping * n12, c22 + damping * n22
    if momentum is None:
        det = a11 * a22 - a12 * a12
        joint = ops.logical_and(n22 > 0.0, det > 1e-6 * ops.abs(a11 * a22))
        safe = ops.where(joint, det, 1.0)
        alpha = ops.where(joint, (a12 * g2 - a22 * g1) / safe, -g1 / a11)
        mu = ops.where(joint, (a12 * g1 - a11 * g2) / safe, 0.0)
    else:
        mu = ops.cast(momentum, "float32") * ops.cast(n22 > 0.0, "float32")
        alpha = -(g1 + mu * a12) / a11
    change = 0.5 * (alpha * alpha * a11 + 2.0 * alpha * mu * a12 + mu * mu * a22)
    change = change + alpha * g1 + mu * g2
    good = ops.logical_and(ops.isfinite(change), change < 0.0)
    zero = ops.zeros_like(change)
    return (
        ops.where(good, alpha, zero),
        ops.where(good, mu, zero),
        ops.where(good, change, zero),
    )


def scaled_change(alpha, mu, curvature, norms, slopes, damping, scale):
    """``M(scale·δ)`` for ``δ = α v₁ + μ v₂`` (``scale``: the learning-rate multiplier)."""
    c11, c12, c22 = curvature
    n11, n12, n22 = norms
    quad = alpha * alpha * (c11 + damping * n11) + 2.0 * alpha * mu * (c12 + damping * n12)
    quad = quad + mu * mu * (c22 + damping * n22)
    return 0.5 * scale * scale * quad + scale * (alpha * slopes[0] + mu * slopes[1])


def reduction_ratio(actual, predicted):
    """``ρ = actual / predicted`` (``-inf`` when nothing was predicted: damping goes up)."""
    valid = predicted < 0.0
    return ops.where(valid, actual / ops.where(valid, predicted, -1.0), float("-inf"))


def adapt_damping(damping, rho):
    """One Levenberg–Marquardt adjustment of ``λ`` from ``ρ`` (kept in bounds)."""
    damping = ops.where(rho > 0.75, damping * DAMPING_FACTOR, damping)
    damping = ops.where(rho < 0.25, damping / DAMPING_FACTOR, damping)
    return ops.clip(damping, MIN_DAMPING, MAX_DAMPING)
