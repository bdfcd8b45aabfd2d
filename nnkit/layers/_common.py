"""Argument checks and sublayer factories shared by the nnkit blocks (not public)."""

import keras

from nnkit import _validation as v
from nnkit.initializers import for_activation

#: Values of the ``normalization`` argument (``None`` means no normalization).
NORMALIZATIONS = ("batch", "layer")


def check_activation(name, value):
    """``None`` (identity) or the name of a Keras activation, e.g. ``"relu"``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` must be the name of a Keras activation (a string such as 'relu') "
            f"or None, not {type(value).__name__}. Received: {name}={value!r}"
        )
    try:
        keras.activations.get(value)
    except ValueError:
        raise ValueError(
            f"`{name}` must be the name of a Keras activation such as 'relu', 'tanh', "
            f"'selu' or 'softmax', or None. Received: {name}={value!r}"
        ) from None
    return value


def check_normalization(value):
    """``None``, ``"batch"`` or ``"layer"``."""
    return v.check_one_of("normalization", value, NORMALIZATIONS, allow_none=True)


def check_rate(name, value):
    """A dropout rate in ``[0, 1)``: 1 would drop everything and scale by 1/0."""
    return v.check_number(name, value, minimum=0.0, maximum=1.0, max_inclusive=False)


def get_initializer(name, value):
    """``keras.initializers.get`` with an error that names the argument."""
    try:
        return keras.initializers.get(value)
    except (ValueError, TypeError):
        raise ValueError(
            f"`{name}` must be a Keras initializer, its name (e.g. 'he_normal') or its "
            f"config, or None. Received: {name}={value!r}"
        ) from None


def get_regularizer(name, value):
    """``keras.regularizers.get`` with an error that names the argument."""
    try:
        return keras.regularizers.get(value)
    except (ValueError, TypeError):
        raise ValueError(
            f"`{name}` must be a Keras regularizer, its name (e.g. 'l2') or its config, "
            f"or None. Received: {name}={value!r}"
        ) from None


def kernel_initializer_for(kernel_initializer, activation):
    """The given initializer, or (``None``) the one that suits ``activation``."""
    if kernel_initializer is None:
        return for_activation(activation)
    return kernel_initializer


def fresh_initializer(initializer):
    """A copy of ``initializer`` for one more weight.

    An unseeded Keras initializer draws its seed once, when it is created,
    and returns the same values on every call: two same-shaped kernels that
    share one instance would start equal. A copy made from the config draws
    a new seed (an int seed given by the user stays as given).
    """
    return type(initializer).from_config(initializer.get_config())


def serialize_optional(serialize, value):
    """``serialize(value)``, or ``None`` for ``None`` (configs stay plain JSON)."""
    return None if value is None else serialize(value)


def make_dense(units, *, use_bias, kernel_initializer, kernel_regularizer, dtype, name):
    """A linear ``Dense`` sublayer (the block applies the activation itself)."""
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        kernel_regularizer=kernel_regularizer,
        dtype=dtype,
        name=name,
    )


def make_normalization(kind, *, dtype, name, gamma_initializer="ones"):
    """``BatchNormalization`` or ``LayerNormalization`` over the last axis, or ``None``."""
    if kind is None:
        return None
    cls = keras.layers.BatchNormalization if kind == "batch" else keras.layers.LayerNormalization
    return cls(axis=-1, gamma_initializer=gamma_initializer, dtype=dtype, name=name)


def check_input_shape(layer, input_shape):
    """The static width of the last axis; blocks need it to create their kernels."""
    if len(input_shape) < 2 or input_shape[-1] is None:
        raise ValueError(
            f"{type(layer).__name__} needs inputs of rank >= 2 whose last axis has a known "
            f"size. Received: input_shape={tuple(input_shape)!r}"
        )
    return int(input_shape[-1])


def kernel_config(layer):
    """The ``kernel_initializer``/``kernel_regularizer`` entries of a block's config.

    An initializer chosen from the activation is saved as ``None``, so the
    reloaded block makes the same choice again.
    """
    return {
        "kernel_initializer": (
            keras.initializers.serialize(layer.kernel_initializer)
            if layer._kernel_initializer_given
            else None
        ),
        "kernel_regularizer": serialize_optional(
            keras.regularizers.serialize, layer.kernel_regularizer
        ),
    }
