"""Monte-Carlo dropout: dropout kept on at inference, and the predictive mean and spread."""

import keras
import numpy as np
from keras import ops

from nnkit import _validation as v
from nnkit._arrays import to_numpy
from nnkit._keras import layers as keras_layers
from nnkit.layers import _common as c


@keras.saving.register_keras_serializable(package="nnkit")
class MCDropout(keras.layers.Dropout):
    """Dropout that stays on at inference, for Monte-Carlo uncertainty estimates.

    Use it in place of ``keras.layers.Dropout`` when you want ``predict`` to
    sample a different thinned network on every pass, then average several
    passes with ``mc_predict``: the spread of the passes is an estimate
    of the model's (epistemic) uncertainty. Other layers keep their inference
    behaviour (batch normalization still uses its moving statistics), which
    is why this is a layer and not ``model(x, training=True)``. For ordinary
    regularization use ``keras.layers.Dropout``, which is off at inference.

    Formula: inverted dropout, in training and at inference alike:
    ``y = m ⊙ x / (1 - rate)`` with ``m_i ~ Bernoulli(1 - rate)``, so that
    ``E[y] = x``. The ``training`` argument is ignored.

    Args:
        rate: Fraction of the units to drop, in ``[0, 1)``. Required.
        noise_shape: Shape of the mask, broadcast against the input (as in
            ``keras.layers.Dropout``), or ``None`` for one draw per element.
            Defaults to ``None``.
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
    >>> from nnkit.layers import MCDropout
    >>> layer = MCDropout(0.5, seed=1)
    >>> y = np.asarray(layer(np.ones((1, 1000), "float32"), training=False))
    >>> sorted(set(y.ravel().tolist()))  # dropped, or kept and scaled by 1/(1 - 0.5)
    [0.0, 2.0]

    References:
        Gal & Ghahramani, "Dropout as a Bayesian Approximation: Representing
        Model Uncertainty in Deep Learning", ICML 2016.
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        rate = c.check_rate("rate", rate)
        seed = v.check_optional_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
        if noise_shape is not None:
            if not isinstance(noise_shape, (list, tuple)):
                raise TypeError(
                    "`noise_shape` must be None or a tuple of ints and Nones (one per input "
                    f"axis). Received: noise_shape={noise_shape!r}"
                )
            noise_shape = tuple(
                None if d is None else v.check_positive_int(f"noise_shape[{i}]", d)
                for i, d in enumerate(noise_shape)
            )
        super().__init__(rate, noise_shape=noise_shape, seed=seed, **kwargs)

    def call(self, inputs, training=None):
        return super().call(inputs, training=True)

    def get_config(self):
        config = super().get_config()
        if config["noise_shape"] is not None:  # a tuple; configs hold plain JSON lists
            config["noise_shape"] = list(config["noise_shape"])
        return config


class _MonteCarloPasses(keras.Model):
    """Runs ``model`` ``passes`` times on each batch (tiled) and reduces to mean, std."""

    def __init__(self, model, passes):
        super().__init__(autocast=False, name="mc_predict")
        self.model = model
        self.passes = passes

    def call(self, inputs):
        tiled = keras.tree.map_structure(
            lambda x: ops.tile(x, [self.passes] + [1] * (len(x.shape) - 1)), inputs
        )
        outputs = self.model(tiled, training=False)
        return (
            keras.tree.map_structure(lambda y: ops.mean(self._by_pass(y), axis=0), outputs),
            keras.tree.map_structure(lambda y: ops.std(self._by_pass(y), axis=0), outputs),
        )

    def _by_pass(self, y):
        # Rows [k·b, (k+1)·b) of the tiled batch are pass k; moments in >= float32.
        if keras.backend.standardize_dtype(y.dtype) in ("float16", "bfloat16"):
            y = ops.cast(y, "float32")
        return ops.reshape(y, (self.passes, -1, *ops.shape(y)[1:]))


def _mc_dropout_layers(model):
    return [layer for layer in keras_layers.walk(model) if isinstance(layer, MCDropout)]


def mc_predict(model, x, *, passes=30, batch_size=None, seed=None):
    """Predictive mean and standard deviation over ``passes`` Monte-Carlo dropout passes.

    Use it on a model containing ``MCDropout`` layers to get, for every
    input row, the average prediction and its spread across thinned networks
    (Gal & Ghahramani's MC dropout). Each batch of ``x`` is tiled ``passes``
    times and run through the model in one compiled step (one ``predict``
    call in all), which is much cheaper than ``passes`` separate ``predict``
    calls; each step therefore processes ``passes × batch_size`` rows, so
    lower ``batch_size`` if that does not fit in memory. The model runs in
    inference mode: only ``MCDropout`` is random, batch normalization uses its
    moving statistics. Moments are computed in at least float32.

    Formula: with ``y_k`` the output of pass ``k``,
    ``mean = (1/N) Σ_k y_k`` and ``std = sqrt((1/N) Σ_k (y_k - mean)²)``
    (divides by ``N``, as in Gal's predictive variance without its
    observation-noise term ``τ⁻¹``).

    Args:
        model: A Keras model containing at least one ``MCDropout`` layer.
        x: Inputs, anything ``model.predict`` accepts (arrays, dicts of
            arrays, a batched ``tf.data.Dataset``).
        passes: Number of stochastic passes ``N``, an int ``>= 2``.
            Defaults to ``30``.
        batch_size: Input rows per step, as in ``predict``: an int
            ``>= 1`` or ``None``. Defaults to ``None`` (Keras's default, 32).
        seed: An int ``>= 0``: re-seeds the ``MCDropout`` layers for this
            call only (same seed, same result; their generators are restored
            afterwards). ``None`` uses and advances the layers' own
            generators, so every call draws new masks. Defaults to ``None``.

    Returns:
        A tuple ``(mean, std)`` of NumPy arrays shaped like the model's
        output (nested like it for multi-output models).

    Raises:
        TypeError: If ``model`` is not a Keras model, or ``passes``,
            ``batch_size`` or ``seed`` is not an int.
        ValueError: If ``model`` has no ``MCDropout`` layer (every pass would
            be the same) or one whose ``noise_shape`` fixes the batch axis
            (the tiled passes would share a mask), ``passes < 2``,
            ``batch_size < 1`` or ``seed < 0``.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.layers import MCDropout, mc_predict
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((3,)), MCDropout(0.2), keras.layers.Dense(1)])
    >>> mean, std = mc_predict(model, np.ones((5, 3), "float32"), passes=20, seed=1)
    >>> mean.shape, std.shape, bool((std > 0).all())
    ((5, 1), (5, 1), True)
    """
    v.check_instance("model", model, keras.Model, "a keras.Model")
    v.check_batches("x", x)
    passes = v.check_int("passes", passes, minimum=2)
    batch_size = v.check_optional_int("batch_size", batch_size, minimum=1)
    seed = v.check_optional_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
    layers = _mc_dropout_layers(model)
    if not layers:
        raise ValueError(
            "`model` has no MCDropout layer, so every Monte-Carlo pass would give the same "
            "prediction. Replace keras.layers.Dropout with nnkit.layers.MCDropout. "
            f"Received: model={model.name!r}"
        )
    for layer in layers:
        if layer.noise_shape is not None and layer.noise_shape[0] is not None:
            raise ValueError(
                f"MCDropout layer {layer.name!r} fixes the batch axis of its mask, but "
                "mc_predict runs the passes as one tiled batch, so they would share a mask. "
                f"Use None for the batch axis. Received: noise_shape={layer.noise_shape!r}"
            )
    generators = [layer.seed_generator for layer in layers if layer.rate > 0]
    if seed is not None:
        saved = [to_numpy(g.state) for g in generators]
        seeds = np.random.SeedSequence(seed).generate_state(len(generators))
        for generator, layer_seed in zip(generators, seeds, strict=True):
            generator.state.assign(np.array([layer_seed, 0], dtype=generator.state.dtype))
    try:
        mean, std = _MonteCarloPasses(model, passes).predict(x, batch_size=batch_size, verbose=0)
    finally:
        if seed is not None:
            for generator, state in zip(generators, saved, strict=True):
                generator.state.assign(state)
    return mean, std
