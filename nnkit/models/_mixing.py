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
