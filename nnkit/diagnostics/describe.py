"""What each layer of a Keras model is made of, for tying a diagnosis to its cause."""

import keras

#: Layers that normalize their input (their presence changes the advice).
_NORMALIZATION_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.UnitNormalization,
)


def _name_of(obj):
    """A readable name for an activation or initializer (string, function or object)."""
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, keras.layers.Layer):
        return type(obj).__name__
    return getattr(obj, "__name__", None) or type(obj).__name__


def _entry(layer):
    normalization = getattr(layer, "normalization", None)  # nnkit blocks: None/"batch"/"layer"
    return {
        "class": type(layer).__name__,
        "activation": _name_of(getattr(layer, "activation", None)),
        "normalization": isinstance(layer, _NORMALIZATION_LAYERS) or isinstance(normalization, str),
        "initializer": _name_of(getattr(layer, "kernel_initializer", None)),
    }


def _walk(layers, info):
    last = None  # the entry an Activation layer that follows applies to
    for layer in layers:
        children = getattr(layer, "layers", None)
        if isinstance(children, list) and isinstance(layer, keras.Model):
            _walk(children, info)
            last = None
            continue
        if isinstance(layer, keras.layers.Activation):
            if last is not None and last["activation"] in (None, "linear"):
                last["activation"] = _name_of(layer.activation)
            continue
        if not layer.weights or layer.path is None:
            continue
        entry = _entry(layer)
        info[layer.path] = entry
        if not entry["normalization"] or entry["activation"] is not None:
            last = entry


def describe_layers(model):
    """Per-layer facts about a built Keras model that ``diagnose`` uses to explain flags.

    Use it to pass ``layer_info`` to ``diagnose``, so a vanishing flag in a
    deep sigmoid stack suggests ReLU with He initialization, batch
    normalization or residual connections, rather than generic advice.
    Nested models are walked; an ``Activation`` layer right after a linear
    layer is counted as that layer's activation; layers without weights are
    left out.

    Args:
        model: A built ``keras.Model`` (``Sequential``, functional or
            subclassed with ``.layers``). Required.

    Returns:
        A dict from layer path (the prefix of its variables' paths, e.g.
        ``"sequential/dense"``) to ``{"class": str, "activation": str or None,
        "normalization": bool, "initializer": str or None}``, in model order.

    Raises:
        TypeError: If ``model`` is not a ``keras.Model``.
        ValueError: If ``model`` is not built.

    Example:
    >>> import keras
    >>> from nnkit.diagnostics import describe_layers
    >>> model = keras.Sequential(
    ...     [keras.Input((3,)), keras.layers.Dense(4, "tanh", name="hidden"),
    ...      keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1, name="out")],
    ...     name="net")
    >>> for path, info in describe_layers(model).items():
    ...     print(path, info["activation"], info["normalization"], info["initializer"])
    net/hidden tanh False GlorotUniform
    net/bn None True None
    net/out linear False GlorotUniform
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model, not {type(model).__name__}. Received: model={model!r}"
        )
    if not model.built:
        raise ValueError(
            "`model` must be built (call it on data or give it an Input) before its layers "
            f"can be described. Received: model={model.name!r} (not built)"
        )
    info = {}
    _walk(model.layers, info)
    return info
