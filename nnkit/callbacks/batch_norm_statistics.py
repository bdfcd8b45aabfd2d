"""Recompute a model's batch-normalization statistics from data (after weight averaging)."""

import keras
import numpy as np

from nnkit import _validation as v
from nnkit._keras.layers import batch_norm_layers


def _inputs(element):
    """The inputs of one batch: ``x`` of an ``(x, y)`` or ``(x, y, w)`` tuple, else the element."""
    if isinstance(element, tuple) and len(element) in (2, 3):
        return keras.utils.unpack_x_y_sample_weight(element)[0]
    return element


def _batches(x, batch_size):
    """Batches of ``x``: slices of arrays (or of a structure of arrays), or what ``x`` yields."""
    leaves = keras.tree.flatten(x) if isinstance(x, (dict, list, np.ndarray)) else None
    if leaves and all(isinstance(t, np.ndarray) for t in leaves):
        rows = len(leaves[0])
        for start in range(0, rows, batch_size):
            yield keras.tree.map_structure(lambda t, s=start: t[s : s + batch_size], x)
        return
    for element in x:
        yield _inputs(element)


def recompute_batch_norm(model, x, *, batch_size=32, steps=None):
    """Replace every batch-norm layer's moving statistics by their average over ``x``.

    Use it after changing a model's weights without training them, as
    stochastic weight averaging does (``StochasticWeightAveraging`` calls
    it at the end of training when given ``batch_norm_data``): the moving
    mean and variance a batch-norm layer kept belong to the weights it was
    trained with, not to the averaged ones. The model runs forward in
    training mode on every batch (as ``torch.optim.swa_utils.update_bn``
    does, so dropout is active as in training); no weight is changed.

    Formula: with ``μ_k``, ``σ²_k`` the batch mean and (biased) variance of
    a layer's input on batch ``k = 1 … K``, each layer's moving statistics
    become the cumulative averages ``(1/K) Σ_k μ_k`` and ``(1/K) Σ_k σ²_k``
    (its momentum is set to ``(k − 1)/k`` for batch ``k``, and restored
    afterwards).

    Args:
        model: A Keras model (or layer). Required.
        x: The inputs: an array or a structure of arrays (cut into batches
            of ``batch_size``), or an iterable of batches such as a batched
            ``tf.data.Dataset`` (elements ``x`` or ``(x, y[, w])``).
            Required.
        batch_size: Rows per batch when ``x`` holds arrays, an int
            ``>= 1``. Keyword-only. Defaults to ``32``.
        steps: Use at most this many batches, an int ``>= 1``, or ``None``
            for all. Keyword-only. Defaults to ``None``.

    Returns:
        The number of batches used (``0`` when the model has no batch
        normalization: nothing is run).

    Raises:
        TypeError: If ``model`` is not a Keras model, ``x`` is not arrays or
            a dataset, or ``batch_size`` or ``steps`` is not an int.
        ValueError: If ``batch_size`` or ``steps`` is ``< 1``, or ``x``
            yields no batch.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.callbacks import recompute_batch_norm
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
    >>> x = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0], [7.0, 14.0]], "float32")
    >>> recompute_batch_norm(model, x, batch_size=2)
    2
    >>> np.asarray(model.layers[0].moving_mean).tolist()  # mean of the 2 batch means
    [4.0, 8.0]
    """
    v.check_instance("model", model, keras.Model, "a keras.Model")
    v.check_batches("x", x)
    batch_size = v.check_positive_int("batch_size", batch_size)
    steps = v.check_optional_int("steps", steps, minimum=1)
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    count = 0
    try:
        for batch in _batches(x, batch_size):
            if steps is not None and count == steps:
                break
            count += 1
            for layer in layers:
                layer.momentum = (count - 1) / count
            model(batch, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    if count == 0:
        raise ValueError("`x` yielded no batch, so no statistics could be computed.")
    return count
