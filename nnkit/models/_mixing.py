"""Batch mixing, as pure functions of the batch and the draws (``MixUp`` draws them).

``mixup_inputs`` interpolates every input with its partner row;
``cutmix_inputs`` pastes a box of the partner row into each row. Both work
for inputs of any rank ``>= 2``: CutMix cuts along every axis between the
batch axis and the last (channel) axis, or along the only feature axis of
rank-2 (tabular) inputs.
"""

import keras
from keras import ops

from nnkit.models._wrapper import map_rows

MODES = ("mixup", "cutmix")

#: Proposals per gamma draw in `beta`. Marsaglia and Tsang's proposal is
#: accepted with probability > 0.95 for a shape >= 1, so all 16 are rejected
#: with probability < 0.05^16 ≈ 1.5e-21 (the last proposal is then used).
PROPOSALS = 16


def _log_gamma_draws(shape, alpha, seed_generator):
    """``log G`` for ``G ~ Gamma(alpha, 1)``, elementwise over ``shape`` (Marsaglia–Tsang).

    Written with a fixed number of vectorized proposals (no loop, no
    ``random.gamma``), so it compiles under XLA on every backend, where
    TensorFlow's gamma kernel does not. For ``alpha < 1`` it draws
    ``Gamma(alpha + 1)`` and multiplies by ``U^(1/alpha)``, in log space.
    """
    boosted = alpha < 1.0
    a = alpha + 1.0 if boosted else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    proposal_shape = (PROPOSALS, *shape)
    z = keras.random.normal(proposal_shape, seed=seed_generator)
    u = keras.random.uniform(proposal_shape, minval=1e-12, maxval=1.0, seed=seed_generator)
    v = ops.power(1.0 + c * z, 3)
    positive = ops.greater(v, 0.0)
    safe_v = ops.where(positive, v, 1.0)
    accepted = ops.logical_and(
        positive, ops.less(ops.log(u), 0.5 * z * z + d - d * safe_v + d * ops.log(safe_v))
    )
    # The first accepted proposal (the last one if none is accepted).
    last = ops.reshape(ops.arange(PROPOSALS) == PROPOSALS - 1, (PROPOSALS,) + (1,) * len(shape))
    accepted = ops.logical_or(accepted, last)
    first = ops.argmax(ops.cast(accepted, "int32"), axis=0)
    chosen = ops.take_along_axis(safe_v, ops.expand_dims(first, 0), axis=0)[0]
    log_g = ops.log(d * chosen)
    if boosted:
        w = keras.random.uniform(shape, minval=1e-12, maxval=1.0, seed=seed_generator)
        log_g = log_g + ops.log(w) / alpha
    return log_g


def beta(shape, alpha, seed_generator):
    """``λ ~ Beta(alpha, alpha)`` elementwise over ``shape``: ``G1 / (G1 + G2)``, in log space."""
    log_g = _log_gamma_draws((2, *shape), alpha, seed_generator)
    return ops.sigmoid(log_g[0] - log_g[1])


def gather_rows(value, permutation):
    """``value[permutation]`` along the batch axis, for every per-row array in ``value``."""
    return map_rows(lambda t: ops.take(t, permutation, axis=0), value)


def mixup_inputs(x, weight, permutation):
    """``weight · x + (1 − weight) · x[permutation]`` for every input in ``x``."""

    def mix(t):
        w = ops.cast(weight, t.dtype)
        return w * t + (1.0 - w) * ops.take(t, permutation, axis=0)

    return keras.tree.map_structure(mix, x)


def cut_axes(rank):
    """The axes CutMix cuts: ``1 … rank − 2`` (spatial), or ``[1]`` for rank-2 inputs."""
    return [1] if rank == 2 else list(range(1, rank - 1))


def cutmix_inputs(x, weight, permutation, centers):
    """``(mixed, kept)``: each row of ``x`` with a box taken from its partner row.

    The box spans ``⌊L_a · (1 − weight)^(1/k)⌋`` positions (clipped at the
    edges) around ``centers[a]`` along each of the ``k`` cut axes ``a`` of
    length ``L_a``; ``kept = 1 − box volume / input volume`` is the weight of
    the row's own targets.
    """
    axes = cut_axes(len(x.shape))
    fraction = ops.power(1.0 - ops.cast(weight, "float32"), 1.0 / len(axes))
    mask, box_area = None, 1.0
    for axis, center in zip(axes, centers, strict=True):
        length = x.shape[axis]
        span = ops.cast(ops.floor(length * fraction), "int32")
        center = ops.cast(center, "int32")
        lo = ops.clip(center - span // 2, 0, length)
        hi = ops.clip(center + span // 2, 0, length)
        index = ops.arange(length, dtype="int32")
        inside = ops.logical_and(ops.greater_equal(index, lo), ops.less(index, hi))
        shape = [1] * len(x.shape)
        shape[axis] = length
        inside = ops.reshape(inside, shape)
        mask = inside if mask is None else ops.logical_and(mask, inside)
        box_area = box_area * ops.cast(hi - lo, "float32") / float(length)
    mixed = ops.where(mask, ops.take(x, permutation, axis=0), x)
    return mixed, 1.0 - box_area
