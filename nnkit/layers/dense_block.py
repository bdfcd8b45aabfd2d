"""Dense → normalization → activation → dropout, initialized for its activation."""

import keras

from nnkit import _validation as v
from nnkit.layers import _common as c


@keras.saving.register_keras_serializable(package="nnkit")
class DenseBlock(keras.layers.Layer):
    """A fully connected layer followed by optional normalization, an activation and dropout.

    Use it as the hidden layer of a multilayer perceptron when you want the
    usual "Dense, BatchNorm, ReLU, Dropout" stack as one layer with one
    config, and the kernel initialized to keep the signal variance constant
    through the chosen activation (He for the ReLU family, Glorot for
    tanh/sigmoid/softmax/linear, LeCun for SELU; see
    ``nnkit.initializers.for_activation``). For a single affine map with no
    extras, ``keras.layers.Dense`` is enough.

    Formula: ``y = dropout(φ(N(x W + b)))`` where ``N`` is batch or layer
    normalization (or the identity), ``φ`` is the activation, and dropout is
    inverted dropout, active only when ``training=True``. The dense bias ``b``
    is dropped when ``normalization="batch"``: batch normalization subtracts
    the per-feature mean, so a constant ``b`` cancels exactly and its own
    ``β`` takes the bias's role. Layer normalization does not cancel it (it
    centres across features, per example), so the bias is kept there.

    Args:
        units: Output width, an int ``>= 1``. Required.
        activation: Name of a Keras activation (``"relu"``, ``"gelu"``,
            ``"tanh"``, ``"selu"``, ...) or ``None`` for the identity.
            Defaults to ``"relu"``.
        normalization: ``"batch"`` (``keras.layers.BatchNormalization``,
            moving statistics at inference), ``"layer"``
            (``keras.layers.LayerNormalization``) or ``None``.
            Defaults to ``None``.
        dropout: Dropout rate in ``[0, 1)``, applied after the activation
            during training only; ``0`` adds no dropout layer.
            Defaults to ``0.0``.
        kernel_initializer: A Keras initializer (instance, name or config);
            ``None`` picks the one that suits ``activation``.
            Defaults to ``None``.
        kernel_regularizer: A Keras regularizer (instance, name or config)
            for the kernel, or ``None``. Defaults to ``None``.
        **kwargs: Base layer arguments (``name``, ``dtype``, ``trainable``).

    Raises:
        TypeError: If an argument has the wrong type (bools are rejected
            where a number is expected).
        ValueError: If ``units`` is not positive, ``dropout`` is outside
            ``[0, 1)``, NaN or inf, ``activation``/``normalization`` is not a
            known name, or the input's last axis has no static size.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.layers import DenseBlock
    >>> block = DenseBlock(4, activation="relu", normalization="batch", dropout=0.1)
    >>> tuple(block(np.ones((2, 3), "float32")).shape)
    (2, 4)
    >>> type(block.dense_layer.kernel_initializer).__name__, block.dense_layer.use_bias
    ('HeNormal', False)

    References:
        Ioffe & Szegedy, "Batch Normalization", 2015; Ba et al., "Layer
        Normalization", 2016; Srivastava et al., "Dropout", JMLR 2014;
        He et al., "Delving Deep into Rectifiers", 2015.
    """

    def __init__(
        self,
        units,
        *,
        activation="relu",
        normalization=None,
        dropout=0.0,
        kernel_initializer=None,
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = v.check_positive_int("units", units)
        self.activation = c.check_activation("activation", activation)
        self.normalization = c.check_normalization(normalization)
        self.dropout = c.check_rate("dropout", dropout)
        self._kernel_initializer_given = kernel_initializer is not None
        self.kernel_initializer = c.get_initializer(
            "kernel_initializer", c.kernel_initializer_for(kernel_initializer, self.activation)
        )
        self.kernel_regularizer = c.get_regularizer("kernel_regularizer", kernel_regularizer)
        self._activation_fn = keras.activations.get(self.activation)

        self.dense_layer = c.make_dense(
            self.units,
            use_bias=self.normalization != "batch",
            kernel_initializer=self.kernel_initializer,
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy,
            name="dense",
        )
        self.norm_layer = c.make_normalization(
            self.normalization, dtype=self.dtype_policy, name="norm"
        )
        self.dropout_layer = (
            keras.layers.Dropout(self.dropout, dtype=self.dtype_policy, name="dropout")
            if self.dropout > 0
            else None
        )

    def build(self, input_shape):
        width = c.check_input_shape(self, input_shape)
        self.input_spec = keras.InputSpec(min_ndim=2, axes={-1: width})
        self.dense_layer.build(input_shape)
        if self.norm_layer is not None:
            self.norm_layer.build(self.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        x = self.dense_layer(inputs)
        if self.norm_layer is not None:
            x = self.norm_layer(x, training=training)
        x = self._activation_fn(x)
        if self.dropout_layer is not None:
            x = self.dropout_layer(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": self.activation,
                "normalization": self.normalization,
                "dropout": self.dropout,
                **c.kernel_config(self),
            }
        )
        return config
