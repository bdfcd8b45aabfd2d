"""A residual unit for MLPs: ``x + F(x)``, post- or pre-activation, optionally zero-initialized."""

import keras

from nnkit import _validation as v
from nnkit.layers import _common as c
from nnkit.layers.drop_path import DropPath


@keras.saving.register_keras_serializable(package="nnkit")
class ResidualBlock(keras.layers.Layer):
    """A two-layer residual unit ``x + F(x)`` for multilayer perceptrons.

    Use it to train deep MLPs: the identity shortcut keeps gradients flowing
    through many layers. When the input width differs from ``units``, the
    shortcut is a learned linear projection. With ``zero_init_residual=True``
    the branch ``F`` starts at exactly zero, so a deep stack starts as
    (nearly) the identity map and learns the residuals from there. With
    ``drop_path > 0`` (stochastic depth) the whole branch is skipped for a
    random subset of the samples in training (see `DropPath`).

    Formula, with ``N1``/``N2`` the normalizations (or identities), ``φ`` the
    activation, ``D`` dropout (training only), ``S`` drop-path (training
    only; the identity at inference and when ``drop_path=0``) and ``P`` the
    shortcut (the identity, or a bias-free ``Dense`` when widths differ):

    - post-activation (``pre_activation=False``, He et al. 2016a):
      ``y = φ(P(x) + S(N2(W2 · D(φ(N1(W1 x))))))``;
    - pre-activation (``pre_activation=True``, He et al. 2016b):
      ``y = P(x) + S(W2 · D(φ(N2(W1 · φ(N1(x))))))``, with no activation after
      the sum, so the shortcut is a clean identity path.

    ``S`` keeps a sample's branch with probability ``1 − drop_path`` and
    then divides it by ``1 − drop_path``, so the branch's expectation, and
    the block's at inference, is unchanged.

    A dense layer directly followed by batch normalization has no bias (the
    normalization cancels it); the projection never has one (the branch
    already ends in a bias, ``b2`` or ``β``, and the two would add up).
    ``zero_init_residual`` zeroes the last scale of the branch (``N2``'s
    ``γ``, post-activation with normalization) or else its last kernel
    ``W2``: at initialization ``F(x) = 0``, so ``y = φ(P(x))``
    post-activation and ``y = P(x)`` pre-activation.

    Args:
        units: Output width, an int ``>= 1``. Required.
        activation: Name of a Keras activation or ``None``.
            Defaults to ``"relu"``.
        normalization: ``"batch"``, ``"layer"`` or ``None``.
            Defaults to ``None``.
        dropout: Rate in ``[0, 1)`` of the dropout before ``W2`` (as in
            wide ResNets); training only. Defaults to ``0.0``.
        drop_path: Probability in ``[0, 1)`` of skipping the branch, per
            sample, in training (stochastic depth); ``0`` adds no layer.
            Defaults to ``0.0``.
        pre_activation: Use the pre-activation ordering. Defaults to ``False``.
        zero_init_residual: Start the branch at zero. Defaults to ``False``.
        kernel_initializer: Initializer for every kernel; ``None`` picks the
            one that suits ``activation`` for ``W1``/``W2`` and the linear
            one (Glorot) for the projection. Defaults to ``None``.
        kernel_regularizer: Regularizer for every kernel, or ``None``.
            Defaults to ``None``.
        **kwargs: Base layer arguments (``name``, ``dtype``, ``trainable``).

    Raises:
        TypeError: If an argument has the wrong type (e.g. a flag that is
            not a bool, a bool where a number is expected).
        ValueError: If ``units`` is not positive, ``dropout`` or
            ``drop_path`` is outside ``[0, 1)``, NaN or inf, a name is
            unknown, or the input's last axis has no static size.

    Example:
    >>> import numpy as np
    >>> from nnkit.layers import ResidualBlock
    >>> block = ResidualBlock(4, pre_activation=True, zero_init_residual=True)
    >>> x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    >>> bool(np.allclose(block(x), x))  # starts as the identity
    True
    >>> tuple(ResidualBlock(8)(x).shape)  # widths differ: projection shortcut
    (2, 8)

    References:
        He et al., "Deep Residual Learning for Image Recognition", 2016a;
        He et al., "Identity Mappings in Deep Residual Networks", 2016b;
        Goyal et al., "Accurate, Large Minibatch SGD" (zero-init γ), 2017;
        Zagoruyko & Komodakis, "Wide Residual Networks", 2016;
        Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016.
    """

    def __init__(
        self,
        units,
        *,
        activation="relu",
        normalization=None,
        dropout=0.0,
        drop_path=0.0,
        pre_activation=False,
        zero_init_residual=False,
        kernel_initializer=None,
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = v.check_positive_int("units", units)
        self.activation = c.check_activation("activation", activation)
        self.normalization = c.check_normalization(normalization)
        self.dropout = c.check_rate("dropout", dropout)
        self.drop_path = c.check_rate("drop_path", drop_path)
        self.pre_activation = v.check_bool("pre_activation", pre_activation)
        self.zero_init_residual = v.check_bool("zero_init_residual", zero_init_residual)
        self._kernel_initializer_given = kernel_initializer is not None
        self.kernel_initializer = c.get_initializer(
            "kernel_initializer", c.kernel_initializer_for(kernel_initializer, self.activation)
        )
        self._projection_initializer = c.get_initializer(
            "kernel_initializer", c.kernel_initializer_for(kernel_initializer, None)
        )
        self.kernel_regularizer = c.get_regularizer("kernel_regularizer", kernel_regularizer)
        self._activation_fn = keras.activations.get(self.activation)

        batch_norm = self.normalization == "batch"
        # What F ends with gets zeroed: N2's scale (post-activation with a
        # normalization), else the last kernel W2.
        zero_scale = (
            self.zero_init_residual and not self.pre_activation and self.normalization is not None
        )
        zero_kernel = self.zero_init_residual and not zero_scale

        self.norm_1 = c.make_normalization(
            self.normalization, dtype=self.dtype_policy, name="norm_1"
        )
        self.dense_1 = self._dense(use_bias=not batch_norm, zeros=False, name="dense_1")
        self.norm_2 = c.make_normalization(
            self.normalization,
            dtype=self.dtype_policy,
            name="norm_2",
            gamma_initializer="zeros" if zero_scale else "ones",
        )
        self.dropout_layer = (
            keras.layers.Dropout(self.dropout, dtype=self.dtype_policy, name="dropout")
            if self.dropout > 0
            else None
        )
        self.dense_2 = self._dense(
            use_bias=self.pre_activation or not batch_norm, zeros=zero_kernel, name="dense_2"
        )
        self.drop_path_layer = (
            DropPath(self.drop_path, dtype=self.dtype_policy, name="drop_path")
            if self.drop_path > 0
            else None
        )
        self.projection = None  # created in build() if the input width differs from units

    def _dense(self, *, use_bias, zeros, name):
        return c.make_dense(
            self.units,
            use_bias=use_bias,
            kernel_initializer="zeros" if zeros else c.fresh_initializer(self.kernel_initializer),
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, input_shape):
        width = c.check_input_shape(self, input_shape)
        self.input_spec = keras.InputSpec(min_ndim=2, axes={-1: width})
        output_shape = self.compute_output_shape(input_shape)
        if width != self.units:
            self.projection = c.make_dense(
                self.units,
                use_bias=False,
                kernel_initializer=c.fresh_initializer(self._projection_initializer),
                kernel_regularizer=self.kernel_regularizer,
                dtype=self.dtype_policy,
                name="projection",
            )
            self.projection.build(input_shape)
        if self.norm_1 is not None:
            self.norm_1.build(input_shape if self.pre_activation else output_shape)
            self.norm_2.build(output_shape)
        self.dense_1.build(input_shape)
        self.dense_2.build(output_shape)

    def _norm(self, layer, x, training):
        return x if layer is None else layer(x, training=training)

    def _drop(self, x, training):
        return x if self.dropout_layer is None else self.dropout_layer(x, training=training)

    def _skip(self, branch, training):
        if self.drop_path_layer is None:
            return branch
        return self.drop_path_layer(branch, training=training)

    def call(self, inputs, training=None):
        act = self._activation_fn
        shortcut = inputs if self.projection is None else self.projection(inputs)
        if self.pre_activation:
            h = self.dense_1(act(self._norm(self.norm_1, inputs, training)))
            h = self._drop(act(self._norm(self.norm_2, h, training)), training)
            return shortcut + self._skip(self.dense_2(h), training)
        h = self._drop(act(self._norm(self.norm_1, self.dense_1(inputs), training)), training)
        branch = self._norm(self.norm_2, self.dense_2(h), training)
        return act(shortcut + self._skip(branch, training))

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
                "drop_path": self.drop_path,
                "pre_activation": self.pre_activation,
                "zero_init_residual": self.zero_init_residual,
                **c.kernel_config(self),
            }
        )
        return config
