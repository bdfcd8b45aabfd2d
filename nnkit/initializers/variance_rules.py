"""The variance-scaling initializer that matches an activation (He, Glorot or LeCun)."""

import keras

from nnkit import _validation as v

# Activation name -> rule (leaky_relu is rescaled for its slope in for_activation).
# See the docstring for which rows are derived and which are convention.
_HE = (
    "celu", "elu", "gelu", "hard_silu", "hard_swish", "leaky_relu", "mish", "relu", "relu6",
    "silu", "swish",
)  # fmt: skip
_GLOROT = ("hard_sigmoid", "hard_tanh", "linear", "sigmoid", "softmax", "softsign", "tanh")
_LECUN = ("selu",)

_RULES = {
    **{name: keras.initializers.HeNormal for name in _HE},
    **{name: keras.initializers.GlorotUniform for name in _GLOROT},
    **{name: keras.initializers.LecunNormal for name in _LECUN},
}
KNOWN_ACTIVATIONS = tuple(sorted(_RULES))

_LEAKY_SLOPE = 0.2  # keras.activations.leaky_relu's default negative_slope


def _unknown(activation):
    known = ", ".join(repr(name) for name in KNOWN_ACTIVATIONS)
    return ValueError(
        "`activation` has no standard variance-preserving initializer. Expected None, one "
        f"of {known}, the matching `keras.activations` function or an activation layer; "
        "for anything else pass a `kernel_initializer` explicitly. "
        f"Received: activation={activation!r}"
    )


def _from_layer(layer):
    """``(name, negative_slope)`` for an activation layer."""
    if isinstance(layer, keras.layers.Activation):
        return _resolve(layer.activation)
    if isinstance(layer, keras.layers.ReLU):
        slope = float(layer.negative_slope)
        return ("leaky_relu", slope) if slope else ("relu", None)
    if isinstance(layer, keras.layers.LeakyReLU):
        return "leaky_relu", float(layer.negative_slope)
    if isinstance(layer, keras.layers.PReLU):
        # PReLU starts as a ReLU (alpha = 0); He et al. derived their rule for it.
        return "relu", None
    if isinstance(layer, keras.layers.ELU):
        return "elu", None
    if isinstance(layer, keras.layers.Softmax):
        return "softmax", None
    raise _unknown(layer)


def _resolve(activation):
    """``(name, negative_slope)``; the slope is set for leaky ReLU only."""
    if activation is None:
        return "linear", None
    if isinstance(activation, str):
        if activation not in _RULES:
            raise _unknown(activation)
        return activation, (_LEAKY_SLOPE if activation == "leaky_relu" else None)
    if isinstance(activation, keras.layers.Layer):
        return _from_layer(activation)
    if callable(activation):
        name = getattr(activation, "__name__", None)
        # Only Keras's own functions: a user function that happens to be
        # called "relu" may compute anything.
        if name in _RULES and keras.activations.get(name) is activation:
            return _resolve(name)
        raise _unknown(activation)
    raise TypeError(
        "`activation` must be None, a string, a `keras.activations` function or an "
        f"activation layer, not {type(activation).__name__}. Received: activation={activation!r}"
    )


def for_activation(activation, *, seed=None):
    """Return the Keras initializer that keeps the signal's variance constant for an activation.

    Use it for the kernel of a layer followed by ``activation`` when you build
    deep networks without normalization, or whenever you want the standard
    choice written down instead of remembered: He for the ReLU family,
    Glorot for tanh, sigmoid, softmax and linear layers, LeCun for SELU.

    Formula (``Var(W)`` of the returned initializer):

    | activation | initializer | ``Var(W)`` |
    | --- | --- | --- |
    | relu, relu6, elu, celu, gelu, silu/swish, hard_silu, mish | ``HeNormal`` | ``2 / fan_in`` |
    | leaky_relu (slope ``a``) | ``VarianceScaling`` | ``2 / ((1 + a²) · fan_in)`` |
    | linear/None, tanh, sigmoid, hard_sigmoid, hard_tanh, softsign, softmax | ``GlorotUniform`` | ``2 / (fan_in + fan_out)`` |
    | selu | ``LecunNormal`` | ``1 / fan_in`` |

    With pre-activations ``z_{l+1} = W a_l`` and ``a_l = f(z_l)``,
    ``Var(z_{l+1}) = fan_in · Var(W) · E[f(z_l)²]``. For ReLU
    ``E[f(z)²] = Var(z)/2``, so ``Var(W) = 2/fan_in`` keeps ``Var(z)`` the
    same at every depth; a leaky ReLU passes ``(1 + a²)/2`` of it, hence its
    row (``a`` is the layer's ``negative_slope``, 0.2 for the string, as in
    ``keras.activations.leaky_relu``). For functions with ``f(z) ≈ z`` near 0
    (linear, tanh) the same argument gives ``1/fan_in``; Glorot averages it
    with the backward pass's ``1/fan_out``. SELU's fixed point (mean 0,
    variance 1) is derived for ``1/fan_in``. These cases are exact (tanh in
    its linear regime). The smooth ReLU-like functions (ELU, GELU, SiLU,
    Mish) use the He rule by convention, not by derivation: GELU and SiLU
    damp small signals, so a deep plain stack still loses variance, slowly;
    and tanh with Glorot decays like ``1/depth`` instead of exponentially.
    For those, add normalization or residual connections, or use ``lsuv`` to
    measure the variance instead of assuming it.

    Args:
        activation: The activation that follows the layer: ``None`` (linear),
            a name from the table, the matching ``keras.activations``
            function, or a ``keras.layers.Activation``, ``ReLU``,
            ``LeakyReLU``, ``PReLU`` (starts as a ReLU), ``ELU`` or
            ``Softmax`` layer. Required.
        seed: Seed passed to the initializer, an int or ``None`` (draws from
            Keras's global seed, see ``keras.utils.set_random_seed``).
            Defaults to ``None``.

    Returns:
        A new ``keras.initializers.HeNormal``, ``VarianceScaling``,
        ``GlorotUniform`` or ``LecunNormal`` instance.

    Raises:
        ValueError: If ``activation`` has no row in the table (the message
            lists the known names).
        TypeError: If ``activation`` is not a string, function, layer or
            ``None``, or ``seed`` is not an int or ``None``.

    Example:
    >>> import keras
    >>> from nnkit.initializers import for_activation
    >>> type(for_activation("relu")).__name__
    'HeNormal'
    >>> type(for_activation(keras.activations.tanh)).__name__
    'GlorotUniform'
    >>> layer = keras.layers.Dense(8, "selu", kernel_initializer=for_activation("selu", seed=1))
    >>> type(layer.kernel_initializer).__name__
    'LecunNormal'
    >>> round(for_activation("leaky_relu").scale, 4)  # 2 / (1 + 0.2²)
    1.9231

    References:
        Glorot & Bengio, "Understanding the difficulty of training deep
        feedforward neural networks", AISTATS 2010; He et al., "Delving Deep
        into Rectifiers", ICCV 2015; Klambauer et al., "Self-Normalizing
        Neural Networks", NeurIPS 2017.
    """
    name, slope = _resolve(activation)
    seed = v.check_optional_int("seed", seed, limit=v.SEED_LIMIT)
    if name == "leaky_relu":
        # He et al.'s rule for a negative slope a: Var(W) = 2 / ((1 + a²) · fan_in).
        return keras.initializers.VarianceScaling(
            scale=2.0 / (1.0 + slope**2), mode="fan_in", distribution="truncated_normal", seed=seed
        )
    return _RULES[name](seed=seed)
