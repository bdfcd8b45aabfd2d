"""``mlp(...)``: a multilayer perceptron built from nnkit's dense and residual blocks."""

import keras

from nnkit import _validation as v
from nnkit.initializers import for_activation
from nnkit.layers import DenseBlock, ResidualBlock
from nnkit.layers import _common as c


def mlp(
    input_dim,
    widths,
    *,
    activation="relu",
    normalization=None,
    dropout=0.0,
    residual=False,
    drop_path=0.0,
    output_units=1,
    output_activation=None,
    kernel_regularizer=None,
    name=None,
):
    """Build an uncompiled functional multilayer perceptron.

    Use it for tabular data and as the model of the recipes and tuning
    sweeps: every hyperparameter is a plain value, so a tuner can sample
    them and the model saves and loads with ``safe_mode=True`` (after
    ``import nnkit.layers``, no ``custom_objects``).

    Formula: ``Input(input_dim) → B(widths[0]) → … → B(widths[-1]) →
    Dense(output_units, output_activation)``, where ``B`` is
    ``DenseBlock`` (``residual=False``) or the
    post-activation ``ResidualBlock`` (``residual=True``;
    a block whose input width differs from its own gets a projection
    shortcut). With ``drop_path = p > 0`` (stochastic depth, residual blocks
    only) block ``l = 1 … L`` skips its branch with probability
    ``p · l / L``: the rate decays linearly from the output towards the
    input (Huang et al.'s linear rule), the last block at ``p``. Kernels
    are initialized for their activation. Under a mixed
    precision policy the output layer computes in float32 (the Keras advice
    for numerically stable losses).

    Args:
        input_dim: Number of input features, an int ``>= 1``. Required.
        widths: Hidden widths, a non-empty list of ints ``>= 1``. Required.
        activation: Hidden activation name, or ``None``.
            Defaults to ``"relu"``.
        normalization: ``"batch"``, ``"layer"`` or ``None``.
            Defaults to ``None``.
        dropout: Dropout rate in ``[0, 1)`` inside every block.
            Defaults to ``0.0``.
        residual: Use residual blocks. Defaults to ``False``.
        drop_path: Drop-path rate ``p`` in ``[0, 1)`` of the last residual
            block (``p · l / L`` for block ``l`` of ``L``); needs
            ``residual=True``. Defaults to ``0.0``.
        output_units: Width of the final ``Dense`` layer, an int ``>= 1``, or
            ``None`` for no output layer (the last block is the output).
            Defaults to ``1``.
        output_activation: Activation name of the output layer (e.g.
            ``"softmax"``), or ``None`` for logits/regression.
            Defaults to ``None``.
        kernel_regularizer: Regularizer for every kernel, the output
            layer's included, or ``None``. Defaults to ``None``.
        name: Model name, or ``None`` for ``"mlp"``. Defaults to ``None``.

    Returns:
        An uncompiled ``keras.Model`` mapping ``(batch, input_dim)`` to
        ``(batch, output_units)`` (or ``(batch, widths[-1])``).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a number is out of range or a name is unknown, or
            ``drop_path > 0`` without ``residual=True``.

    Example:
    >>> from nnkit.models import mlp
    >>> model = mlp(8, [16, 16], residual=True, output_units=3, output_activation="softmax")
    >>> model.output_shape
    (None, 3)
    >>> [type(layer).__name__ for layer in model.layers]
    ['InputLayer', 'ResidualBlock', 'ResidualBlock', 'Dense']
    >>> model.count_params()  # (8·16+16 + 16·16+16 + 8·16) + 2·(16·16+16) + (16·3+3)
    1139
    """
    input_dim = v.check_positive_int("input_dim", input_dim)
    widths = v.check_int_list("widths", widths, minimum=1)
    residual = v.check_bool("residual", residual)
    drop_path = c.check_rate("drop_path", drop_path)
    if drop_path > 0 and not residual:
        raise ValueError(
            "`drop_path` drops the branch of a residual block, so it needs residual=True. "
            f"Received: drop_path={drop_path}, residual={residual}"
        )
    output_units = v.check_optional_int("output_units", output_units, minimum=1)
    output_activation = c.check_activation("output_activation", output_activation)
    name = "mlp" if name is None else v.check_str("name", name)
    block_args = {
        "activation": activation,
        "normalization": normalization,
        "dropout": dropout,
        "kernel_regularizer": kernel_regularizer,
    }

    inputs = keras.Input((input_dim,), name="features")
    x = inputs
    for i, width in enumerate(widths):
        if residual:
            rate = drop_path * (i + 1) / len(widths)
            x = ResidualBlock(width, **block_args, drop_path=rate, name=f"residual_block_{i}")(x)
        else:
            x = DenseBlock(width, **block_args, name=f"dense_block_{i}")(x)
    if output_units is not None:
        policy = keras.config.dtype_policy()
        x = keras.layers.Dense(
            output_units,
            activation=output_activation,
            kernel_initializer=for_activation(output_activation),
            kernel_regularizer=kernel_regularizer,
            dtype=policy.variable_dtype if policy.compute_dtype != policy.variable_dtype else None,
            name="output",
        )(x)
    return keras.Model(inputs, x, name=name)
