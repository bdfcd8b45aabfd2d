"""In-graph norms of gradients, weights and updates, per group of variables.

Written with ``keras.ops`` only, so the functions run eagerly, inside
``tf.function`` (``jit_compile=True`` too) and on the JAX backend. Every sum
of squares is taken in float32, whatever the dtype of the inputs: a float16
gradient of norm 300 would overflow its own dtype when squared (65504 max).
"""

from typing import NamedTuple

from keras import ops

from nnkit import _validation as v
from nnkit.diagnostics.grouping import check_groups, group_variables


class GradientNorms(NamedTuple):
    """What ``gradient_norms`` measured in one step (tensors).

    Attributes:
        global_norm: float32 scalar, ``sqrt(Σ_i ‖g_i‖²)`` over every gradient.
        group_norms: float32 ``[G]``, ``sqrt(Σ_{i in group} ‖g_i‖²)``.
        nonfinite: int32 ``[G]``, the number of NaN/inf elements per group.
    """

    global_norm: object
    group_norms: object
    nonfinite: object


def _as_list(name, values):
    return v.check_sequence(name, values, "a list of tensors")


def _dense_values(tensor):
    # tf.IndexedSlices (sparse gradient of an embedding): the norm of its
    # values, as tf.clip_by_global_norm and Keras's clipnorm compute it.
    if hasattr(tensor, "indices") and hasattr(tensor, "dense_shape"):
        return tensor.values
    return tensor


def _square_sum(tensor):
    return ops.sum(ops.square(ops.cast(_dense_values(tensor), "float32")))


def nonfinite_marker(tensor):
    """``0`` when every element of ``tensor`` is finite, NaN otherwise; never overflows.

    ``Σ x·0``: an element that is NaN or ±inf makes its product NaN, and a
    finite one adds 0, however large it is (a sum of squares overflows float32
    for elements above ~1.8e19 and would mark a finite gradient as inf).
    """
    x = ops.cast(_dense_values(tensor), "float32")
    return ops.sum(x * ops.zeros((), "float32"))


def _norm(tensor):
    """``‖x‖₂`` in float32 without underflow: ``m · ‖x / m‖`` with ``m = max|x|``.

    Squaring in float32 flushes elements below ``~1e-19`` to zero, so a deep
    network's vanishing gradient would read as no gradient at all. A NaN or
    inf element (``m`` not finite) gives the plain, non-finite, norm.
    """
    x = ops.cast(_dense_values(tensor), "float32")
    if x.shape is not None and 0 in tuple(x.shape):
        return ops.zeros((), "float32")
    m = ops.max(ops.abs(x))
    scalable = ops.logical_and(ops.isfinite(m), ops.greater(m, 0.0))
    scale = ops.where(scalable, m, 1.0)
    return scale * ops.sqrt(ops.sum(ops.square(x / scale)))


def _combine(norms):
    """``sqrt(Σ nᵢ²)`` of float32 scalars, scaled by the largest as in ``_norm``."""
    if not norms:
        return ops.zeros((), "float32")
    return _norm(ops.stack(norms))


def _per_group_norm(norms, groups):
    """``[G]`` group norms from per-variable norms (``None`` skipped), without underflow."""
    buckets = [[] for _ in groups.names]
    for k, value in zip(groups.index, norms, strict=True):
        if value is not None:
            buckets[k].append(value)
    if not buckets:
        return ops.zeros((0,), "float32")
    return ops.stack([_combine(b) for b in buckets])


def _per_group(values, groups, dtype):
    """Sum scalar ``values`` (``None`` skipped) into a ``[G]`` tensor."""
    buckets = [[] for _ in groups.names]
    for k, value in zip(groups.index, values, strict=True):
        if value is not None:
            buckets[k].append(value)
    zero = ops.zeros((), dtype)
    sums = [ops.sum(ops.stack(b)) if b else zero for b in buckets]
    return ops.stack(sums) if sums else ops.zeros((0,), dtype)


def _resolve(groups, variables, count, where):
    if groups is None:
        groups = group_variables(variables)
    return check_groups(groups, count, where)


def gradient_norms(grads, variables, *, groups=None):
    """Global and per-group gradient norms, and non-finite counts, in one pass.

    Use it inside the training step on the gradients the optimizer receives
    (before or after clipping) to see how large each layer's gradient is and
    where NaN/inf appear. It is a pure function of its inputs: schedule and
    log it from a callback, or call it in a custom loop.

    Formula: with ``g_i`` the gradient of variable ``i`` (cast to float32),
    ``global_norm = sqrt(Σ_i ‖g_i‖²)``, ``group_norms[k] = sqrt(Σ_{i∈k} ‖g_i‖²)``
    (so ``global_norm² = Σ_k group_norms[k]²``), and ``nonfinite[k]`` counts
    the elements of the group that are NaN or ±inf. A ``None`` gradient (a
    variable the loss does not reach) counts as zero. A ``tf.IndexedSlices``
    gradient contributes the norm of its values, as in ``tf.clip_by_global_norm``.
    A NaN or inf element makes the norms NaN or inf; the counts stay exact.
    Each norm is computed as ``m · ‖x / m‖`` with ``m = max|x|``, so a
    vanishing gradient of ``1e-25`` per element reads as that, not as ``0``
    (plain float32 squares flush below ``~1e-19``).

    Args:
        grads: List of gradient tensors (or ``None``), one per variable.
            Required.
        variables: The matching variables; only their paths are read, and
            only when ``groups`` is ``None``. Required.
        groups: A ``VariableGroups`` from ``group_variables``; ``None`` groups
            ``variables`` by layer. Pass it precomputed inside a compiled step.
            Defaults to ``None``.

    Returns:
        A ``GradientNorms(global_norm, group_norms, nonfinite)``: a float32
        scalar, a float32 ``[G]`` tensor and an int32 ``[G]`` tensor.

    Raises:
        TypeError: If ``grads`` is not a list or ``groups`` is not a
            ``VariableGroups``.
        ValueError: If ``grads``, ``variables`` and ``groups`` differ in length.

    Example:
    >>> import numpy as np
    >>> from nnkit.diagnostics import gradient_norms
    >>> grads = [np.full((2, 2), 1.5), np.array([np.nan, 2.0]), np.array([2.0])]
    >>> norms = gradient_norms(grads, ["a/kernel", "a/bias", "b/kernel"])
    >>> float(norms.global_norm), np.asarray(norms.group_norms).tolist()
    (nan, [nan, 2.0])
    >>> np.asarray(norms.nonfinite).tolist()
    [1, 0]
    """
    grads = _as_list("grads", grads)
    variables = _as_list("variables", variables)
    if len(grads) != len(variables):
        raise ValueError(
            "`grads` and `variables` must have the same length. "
            f"Received: len(grads)={len(grads)}, len(variables)={len(variables)}"
        )
    groups = _resolve(groups, variables, len(grads), "`grads`")
    norms = [None if g is None else _norm(g) for g in grads]
    counts = [
        None
        if g is None
        else ops.sum(ops.cast(ops.logical_not(ops.isfinite(_dense_values(g))), "int32"))
        for g in grads
    ]
    group_norms = _per_group_norm(norms, groups)
    global_norm = _norm(group_norms) if groups.size else ops.zeros((), "float32")
    return GradientNorms(global_norm, group_norms, _per_group(counts, groups, "int32"))


def weight_norms(variables, *, groups=None):
    """The norm of each group's weights, ``sqrt(Σ_{i∈k} ‖w_i‖²)``, in float32.

    Use it next to ``gradient_norms`` to put a gradient's size in proportion
    to the weights it changes, or to watch weights grow without bound.

    Args:
        variables: List of variables or tensors. Required.
        groups: A ``VariableGroups``; ``None`` groups ``variables`` by layer
            (they must then carry paths). Defaults to ``None``.

    Returns:
        A float32 ``[G]`` tensor.

    Raises:
        TypeError: If ``variables`` is not a list or ``groups`` is not a
            ``VariableGroups``.
        ValueError: If ``groups`` does not cover ``variables``.

    Example:
    >>> import numpy as np
    >>> from nnkit.diagnostics import group_variables, weight_norms
    >>> groups = group_variables(["a/kernel", "a/bias", "b/kernel"])
    >>> weights = [np.full((2, 2), 1.5), np.array([0.0, 4.0]), np.array([-2.0])]
    >>> np.asarray(weight_norms(weights, groups=groups)).tolist()
    [5.0, 2.0]
    """
    variables = _as_list("variables", variables)
    groups = _resolve(groups, variables, len(variables), "`variables`")
    return ops.sqrt(_per_group([_square_sum(w) for w in variables], groups, "float32"))


def update_ratios(before, after, *, groups=None, epsilon=1e-12):
    """The relative size of one update per group, ``‖after − before‖ / ‖before‖``.

    Use it to check the learning rate layer by layer: a ratio near ``1e-3``
    per step is the usual rule of thumb; far above it the rate is too high,
    far below it training barely moves the weights. Take ``before`` as a copy
    of the weights just before ``optimizer.apply`` and ``after`` just after:
    in a compiled step snapshot with ``keras.ops.copy(v)``; a variable (or
    ``keras.ops.convert_to_tensor(v)``, which returns the variable itself) is
    read where it is used, after the update, and gives ratios of 0.

    Formula: ``r_k = sqrt(Σ_{i∈k} ‖a_i − b_i‖²) / max(sqrt(Σ_{i∈k} ‖b_i‖²), ε)``.
    The ``ε`` keeps a group of all-zero weights finite: an unchanged zero
    group gives ``0``, a changed one gives ``‖Δw‖ / ε`` (very large, as the
    relative change of a zero tensor is).

    Args:
        before: List of weight tensors before the update. Required.
        after: List of weight tensors after the update, same shapes. Required.
        groups: A ``VariableGroups``; ``None`` groups ``before`` by layer
            (it must then hold variables with paths). Defaults to ``None``.
        epsilon: Floor of the denominator, a float ``> 0``. Defaults to
            ``1e-12``.

    Returns:
        A float32 ``[G]`` tensor.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If the lists differ in length or ``epsilon <= 0``.

    Example:
    >>> import numpy as np
    >>> from nnkit.diagnostics import group_variables, update_ratios
    >>> groups = group_variables(["a/kernel", "b/kernel"])
    >>> before = [np.array([3.0, 4.0]), np.array([0.0])]
    >>> after = [np.array([3.0, 4.005]), np.array([0.0])]
    >>> np.round(np.asarray(update_ratios(before, after, groups=groups)), 6).tolist()
    [0.001, 0.0]

    References:
        Karpathy, "CS231n: Neural Networks Part 3, Learning" (ratio of
        updates to weights, ~1e-3).
    """
    before = _as_list("before", before)
    after = _as_list("after", after)
    epsilon = v.check_positive_number("epsilon", epsilon)
    if len(before) != len(after):
        raise ValueError(
            "`before` and `after` must have the same length. "
            f"Received: len(before)={len(before)}, len(after)={len(after)}"
        )
    groups = _resolve(groups, before, len(before), "`before`")
    deltas = [
        ops.sum(ops.square(ops.cast(a, "float32") - ops.cast(b, "float32")))
        for b, a in zip(before, after, strict=True)
    ]
    delta = ops.sqrt(_per_group(deltas, groups, "float32"))
    weight = ops.sqrt(_per_group([_square_sum(b) for b in before], groups, "float32"))
    return delta / ops.maximum(weight, epsilon)


def first_nonfinite_group(nonfinite):
    """The lowest group index with a non-finite count ``> 0``, or ``-1``.

    Use it on ``GradientNorms.nonfinite`` to name where NaN/inf appeared
    first in forward order. It runs in-graph (``keras.ops``) or on numpy
    arrays. Backpropagation runs from the last layer to the first, so a NaN
    born in a late layer usually reaches the earlier ones in the same step:
    the lowest index is where it is visible first in the model's order, not
    necessarily where it was produced.

    Args:
        nonfinite: A ``[G]`` tensor or array of counts. Required.

    Returns:
        An int32 scalar tensor: the index, or ``-1`` when every count is 0.

    Raises:
        ValueError: If ``nonfinite`` is not one-dimensional.

    Example:
    >>> from nnkit.diagnostics import first_nonfinite_group
    >>> int(first_nonfinite_group([0, 0, 3, 1])), int(first_nonfinite_group([0, 0]))
    (2, -1)
    """
    received = v.check_data("nonfinite", nonfinite)
    if isinstance(nonfinite, dict):
        raise TypeError(
            f"`nonfinite` must be a 1-D array of counts. Received: nonfinite={nonfinite!r}"
        )
    nonfinite = ops.convert_to_tensor(nonfinite)
    if len(nonfinite.shape) != 1:
        raise ValueError(
            "`nonfinite` must be one-dimensional (one count per group), not of shape "
            f"{tuple(nonfinite.shape)}. Received: nonfinite={received!r}"
        )
    size = nonfinite.shape[0]
    if size == 0:
        return ops.convert_to_tensor(-1, "int32")
    positions = ops.arange(size, dtype="int32")
    first = ops.min(ops.where(ops.greater(nonfinite, 0), positions, size))
    return ops.where(ops.equal(first, size), -1, first)
