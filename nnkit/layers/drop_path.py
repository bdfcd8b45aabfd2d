"""Drop-path (stochastic depth): drop a whole residual branch, per sample, in training."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.layers import _common as c


def drop_path(inputs, rate, seed_generator):
    """``inputs`` with whole samples zeroed with probability ``rate``, the rest scaled by 1/keep."""
    keep = 1.0 - rate
    shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
    draw = keras.random.uniform(shape, seed=seed_generator)
    mask = ops.cast(ops.less(draw, keep), inputs.dtype)
    return inputs * (mask / ops.cast(keep, inputs.dtype))


@keras.saving.register_keras_serializable(package="nnkit")
class DropPath(keras.layers.Layer):
    """Drop the whole input of each sample with probability ``rate`` (stochastic depth).

    Use it on the residual branch ``F`` of a residual unit, ``x + DropPath(F(x))``:
    in training each sample of the batch skips the branch (keeps only the
    shortcut) with probability ``rate``, so a deep network trains as an
    ensemble of shallower ones; at inference the layer is the identity.
    ``nnkit.layers.ResidualBlock(drop_path=...)`` uses it, and
    ``nnkit.models.mlp(drop_path=...)`` decays the rate linearly over depth.
    Unlike ``keras.layers.Dropout``, which drops single units, it draws one
    Bernoulli number per sample and applies it to all of that sample's
    features.

    Formula, in training, with ``b_i ~ Bernoulli(1 − rate)`` per sample ``i``::

        y_i = b_i · x_i / (1 − rate)

    so ``E[y_i] = x_i`` (the survival-probability rescaling, applied at
    training time: "inverted" stochastic depth), and ``y = x`` at inference.

    Args:
        rate: Probability of dropping a sample's input, in ``[0, 1)``.
            Required.
        seed: An int ``>= 0`` seeding this layer's random generator, or
            ``None`` for one drawn from the global seed.
            Defaults to ``None``.
        **kwargs: Base layer arguments (``name``, ``dtype``).

    Raises:
        TypeError: If ``rate`` or ``seed`` is not a number (bools are
            rejected).
        ValueError: If ``rate`` is outside ``[0, 1)``, NaN or inf, or
            ``seed`` is negative or fractional.

    Example:
    >>> import numpy as np
    >>> from nnkit.layers import DropPath
    >>> layer = DropPath(0.5, seed=1)
    >>> y = np.asarray(layer(np.ones((1000, 4), "float32"), training=True))
    >>> sorted(set(y.ravel().tolist()))  # a sample is dropped whole, or kept and scaled by 2
    [0.0, 2.0]
    >>> bool((y == y[:, :1]).all())  # one draw per sample
    True
    >>> bool((np.asarray(layer(np.ones((3, 4), "float32"))) == 1).all())  # inference: identity
    True

    References:
        Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016;
        Larsson et al., "FractalNet: Ultra-Deep Neural Networks without
        Residuals", ICLR 2017 (drop-path).
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = c.check_rate("rate", rate)
        self.seed = v.check_optional_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
        self.supports_masking = True
        self.seed_generator = keras.random.SeedGenerator(self.seed) if self.rate > 0 else None
        self.built = True

    def call(self, inputs, training=None):
        if not training or self.seed_generator is None:
            return inputs
        return drop_path(inputs, self.rate, self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
