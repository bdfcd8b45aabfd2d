"""Convert a model's batch normalization layers to synchronized ones (statistics over all replicas)."""

import keras

from nnkit._backend import require_backend
from nnkit._keras.layers import batch_norm_layers


def synchronize_batch_norm(model):
    """Make every ``BatchNormalization`` layer of ``model`` use the statistics of the global batch.

    Under ``MirroredStrategy`` a ``keras.layers.BatchNormalization`` normalizes
    each replica's part of the batch with that part's mean and variance, and
    its moving statistics (variables with ``aggregation="none"``) are updated
    per replica: they drift apart, and the values read after training (and
    saved) are those of the first replica, computed on ``1/N`` of each batch.
    Keras 3's ``synchronized=True`` all-reduces the sums, squared sums and
    counts, so every replica uses and records the global-batch statistics,
    the same as one device on the same global batch (and stays in sync).

    This sets ``synchronized = True`` on every such layer, nested ones
    included (sub-models, layers inside custom layers). The attribute is read
    when the train step is traced, so no rebuild is needed and the weights
    are kept; the model's cached ``train_function`` is dropped so the next
    ``fit`` traces the synchronized version. The attribute is in the layer's
    ``get_config``, so ``model.save()`` keeps it; note that Keras refuses to
    load ``synchronized=True`` on a non-TensorFlow backend. Without a
    strategy (or with one replica) synchronized layers compute the same
    statistics as before, at the cost of a few all-reduces per step.

    Args:
        model: A ``keras.Model`` or any ``keras.layers.Layer`` (TensorFlow
            backend).

    Returns:
        The ``path`` of each layer converted (its ``name`` while it has no
        path, before it is built), in the model's layer order; layers that
        were already synchronized are not listed.

    Raises:
        ValueError: If the backend is not TensorFlow.
        TypeError: If ``model`` is not a Keras layer or model.

    Example:
    >>> import keras
    >>> from nnkit.distribute import synchronize_batch_norm
    >>> inner = keras.Sequential([keras.layers.Dense(4), keras.layers.BatchNormalization(name="bn")])
    >>> model = keras.Sequential([keras.Input((3,)), inner, keras.layers.BatchNormalization()])
    >>> len(synchronize_batch_norm(model)), inner.get_layer("bn").synchronized
    (2, True)
    >>> synchronize_batch_norm(model)  # nothing left to convert
    []
    """
    require_backend(
        "synchronize_batch_norm",
        ("tensorflow",),
        reason="synchronized batch normalization is a tf.distribute feature; on JAX, "
        "keras.distribution.DataParallel already computes statistics over the global batch",
    )
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"`model` must be a keras.Model or keras.layers.Layer, not {type(model).__name__}. "
            f"Received: model={model!r}"
        )
    converted = []
    for layer in batch_norm_layers(model):
        if not layer.synchronized:
            layer.synchronized = True
            converted.append(layer.path or layer.name)
    if converted and isinstance(model, keras.Model):
        # The traced train step captured `synchronized=False`; trace again at the next fit.
        model.train_function = None
    return converted
