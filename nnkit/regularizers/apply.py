"""Add a regularizer to the kernels of an existing, built model."""

import fnmatch

import keras

from nnkit import _validation as v
from nnkit._keras import layers as keras_layers
from nnkit._parameters import is_statistics_channel

# Layer attribute -> names of the weights it regularizes. Biases, the
# gamma/beta of normalization layers and activity regularizers are never
# touched: decaying them is rarely wanted and never the default.
_KERNEL_ATTRIBUTES = {
    "kernel_regularizer": ("kernel",),
    "depthwise_regularizer": ("depthwise_kernel", "kernel"),  # DepthwiseConv names it "kernel"
    "pointwise_regularizer": ("pointwise_kernel",),
    "embeddings_regularizer": ("embeddings",),
    "recurrent_regularizer": ("recurrent_kernel",),
}
_KERNEL_NAMES = frozenset(name for names in _KERNEL_ATTRIBUTES.values() for name in names)


def _check_patterns(name, patterns):
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, (list, tuple)):
        raise TypeError(
            f"`{name}` must be None, a string or a list of strings, not "
            f"{type(patterns).__name__}. Received: {name}={patterns!r}"
        )
    return [v.check_str(f"{name}[{i}]", p) for i, p in enumerate(patterns)]


def _units(model, prefix=""):
    """``(path, layer)`` for every layer the model's config stores, nested models opened."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            yield from _units(layer, f"{path}/")
        else:
            yield path, layer


def _matches(path, patterns):
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _holders(layer, attribute):
    """The layer and its sublayers that store ``attribute`` as a settable attribute.

    LSTM/GRU expose ``kernel_regularizer`` as a read-only property that reads
    their cell's; setting the cell's is what their config then saves.
    """
    own = not isinstance(getattr(type(layer), attribute, None), property)
    subs = [sub for sub in keras_layers.walk(layer, include_self=False) if attribute in vars(sub)]
    return ([layer] if own else []) + subs


def _plan(path, layer):
    """``[(attribute, [variables])]`` for one layer, or raise if a kernel would be missed."""
    kernels = [w for w in layer.weights if w.name in _KERNEL_NAMES and not is_statistics_channel(w)]
    plan, covered = [], set()
    for attribute, names in _KERNEL_ATTRIBUTES.items():
        if not hasattr(layer, attribute):
            continue
        if attribute == "depthwise_regularizer" and hasattr(layer, "kernel_regularizer"):
            names = ("depthwise_kernel",)
        variables = [w for w in kernels if w.name in names and id(w) not in covered]
        if not variables:
            continue
        if attribute not in layer.get_config() or not _holders(layer, attribute):
            raise ValueError(
                f"Layer {path!r} ({type(layer).__name__}) has a `{attribute}` that its "
                "get_config() does not save, so the regularizer would be lost on "
                f"model.save(). Exclude it with exclude=[{path!r}]."
            )
        covered.update(id(w) for w in variables)
        plan.append((attribute, variables))
    missed = [w.path for w in kernels if id(w) not in covered]
    if missed:
        raise ValueError(
            f"Layer {path!r} ({type(layer).__name__}) holds kernels {missed} but no "
            "`kernel_regularizer`-style argument that would apply and save a regularizer "
            f"for them. Exclude it with exclude=[{path!r}], or build it with the regularizer."
        )
    return plan


def apply_regularization(model, regularizer, *, include=None, exclude=None, overwrite=False):
    """Add a regularizer to every kernel of a built model, in place.

    Use it to regularize a model whose code you do not want to edit (a
    model zoo, a hyperparameter sweep over λ): the result is the same as
    having passed ``kernel_regularizer=regularizer`` (and
    ``depthwise_/pointwise_/embeddings_/recurrent_regularizer``) to each
    matching layer when the model was built. The penalties then appear in
    ``model.losses`` and in the loss that ``fit``/``evaluate`` report, and
    the regularizer is part of each layer's config, so it survives
    ``model.save()`` / ``keras.saving.load_model`` for Functional and
    Sequential models. A subclassed model saves only what its own
    ``get_config()`` returns: call this again after loading it.

    Formula: total loss ``= data loss + Σ_{W ∈ kernels} regularizer(W)``.
    Kernels are the weights named ``kernel``, ``depthwise_kernel``,
    ``pointwise_kernel``, ``embeddings`` and ``recurrent_kernel`` of
    ``Dense``, ``EinsumDense``, convolution, ``Embedding`` and RNN layers.
    Biases, normalization scales/offsets and activity regularizers are
    never changed.

    If the model has already been trained or evaluated, its compiled
    train/test functions were traced without the new penalty; they are
    rebuilt here so that the next ``fit``/``evaluate`` includes it. A
    ``tf.function`` of your own that closes over the model must be retraced.

    Args:
        model: A built ``keras.Model``, changed in place. Required.
        regularizer: A ``keras.regularizers.Regularizer`` instance (nnkit's
            ``L1``, ``L2``, ``WeightDecay`` or any registered one), shared by
            every matching kernel. Required.
        include: Glob pattern(s) (``fnmatch``, case-sensitive; ``*`` also
            matches ``/``) on the layer path: the layer's name, prefixed by
            the names of the nested models that hold it, e.g. ``"dense_1"``
            or ``"encoder/*"``. Only matching layers are regularized;
            ``None`` means every layer. Defaults to ``None``.
        exclude: Glob pattern(s) on the layer path of layers to leave alone,
            applied after ``include``. Defaults to ``None``.
        overwrite: Replace a regularizer a matching kernel already has;
            ``False`` raises instead, so that nothing is replaced silently.
            Defaults to ``False``.

    Returns:
        The ``path`` of every variable that received the regularizer (as in
        ``[w.path for w in model.weights]``), in model order.

    Raises:
        TypeError: If ``model`` is not a ``keras.Model``, ``regularizer`` is
            not a ``keras.regularizers.Regularizer`` or a pattern is not a
            string.
        ValueError: If the model is not built; a pattern matches no layer;
            nothing matches; a matching kernel already has a regularizer and
            ``overwrite`` is False; or a matching layer holds kernels whose
            regularizer its config cannot save (for example
            ``MultiHeadAttention``: exclude it). Nothing is changed then.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.regularizers import WeightDecay, apply_regularization
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="hidden"),
    ...                           keras.layers.BatchNormalization(), keras.layers.Dense(1, name="out")],
    ...                          name="net")
    >>> apply_regularization(model, WeightDecay(1e-4), exclude="out")
    ['net/hidden/kernel']
    >>> len(model.losses)
    1

    References:
        Keras, "Layer weight regularizers" (``kernel_regularizer``);
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
        ICLR 2019 (for when to prefer the optimizer's ``weight_decay``).
    """
    v.check_instance("model", model, keras.Model, "a keras.Model")
    v.check_instance("regularizer", regularizer, keras.regularizers.Regularizer,
                     "a keras.regularizers.Regularizer instance")  # fmt: skip
    include = _check_patterns("include", include)
    exclude = _check_patterns("exclude", exclude)
    overwrite = v.check_bool("overwrite", overwrite)
    if not model.built:
        raise ValueError(
            "`model` must be built (its kernels do not exist yet): give it a `keras.Input`, "
            f"call `model.build(input_shape)`, or call it on a batch. Received: model={model.name!r}"
        )

    units = list(_units(model))
    paths = [path for path, _ in units]
    for name, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns or ():
            if not any(fnmatch.fnmatchcase(path, pattern) for path in paths):
                raise ValueError(
                    f"`{name}` pattern {pattern!r} matches no layer. Layer paths: {paths}. "
                    f"Received: {name}={patterns!r}"
                )
    selected = [
        (path, layer)
        for path, layer in units
        if (include is None or _matches(path, include))
        and not (exclude and _matches(path, exclude))
    ]
    plans = [(path, layer, _plan(path, layer)) for path, layer in selected]
    plans = [(path, layer, plan) for path, layer, plan in plans if plan]
    if not plans:
        raise ValueError(
            f"No kernel to regularize in the selected layers {[p for p, _ in selected]}. "
            f"Received: include={include!r}, exclude={exclude!r}"
        )
    existing = [
        w.path
        for _, layer, plan in plans
        for attribute, variables in plan
        for w in variables
        if w.regularizer is not None or getattr(layer, attribute) is not None
    ]
    if existing and not overwrite:
        raise ValueError(
            f"Kernels {existing} already have a regularizer. Pass overwrite=True to replace "
            "it, or exclude those layers. Received: overwrite=False"
        )

    applied = []
    for _, layer, plan in plans:
        for attribute, variables in plan:
            for holder in _holders(layer, attribute):
                keras_layers.set_regularizer(holder, attribute, regularizer)
            for variable in variables:
                variable.regularizer = regularizer
                applied.append(variable.path)

    # Compiled train/test steps were traced with the old `model.losses`.
    if getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)
    if getattr(model, "test_function", None) is not None:
        model.make_test_function(force=True)
    return applied
