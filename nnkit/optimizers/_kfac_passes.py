"""``KFAC``'s extra passes over the step's batch, in the compiled train step, per backend.

The model is run with ``model.stateless_call`` on values given for its
trainable variables (so nothing is written) and on the non-trainable values
the train step's forward pass started from (``_kfac_batch``), in training
mode. Three passes, each traced into the train step the optimizer's
``apply`` belongs to:

- ``linearize``: the outputs ``f(θ)`` and, for each tangent ``t`` (one
  array per trainable variable), the output tangent ``J t``: one
  forward-mode pass. JAX: ``jax.linearize`` (one forward pass, then one
  linear pass per tangent). TensorFlow: ``tf.autodiff.ForwardAccumulator``,
  one per tangent (a forward pass each). The registered layers run without
  their statistics taps (``_kfac_capture.untapped``): forward mode does not
  pass through a custom gradient.
- ``outputs``: ``f(θ)`` alone (the loss at a trial point), taps off.
- ``channel_gradients``: the gradient of a scalar function of the outputs
  with respect to the statistics channels, taps on: the channels' gradients
  are the statistics of that backward pass (the sampled Fisher). JAX:
  ``jax.grad``; TensorFlow: ``tf.GradientTape``.
"""

import inspect

import keras

from nnkit.optimizers import _kfac_capture as capture


def _call(model, batch, values):
    kwargs = {}
    if "training" in inspect.signature(model.call).parameters:
        kwargs["training"] = True
    outputs, _ = model.stateless_call(values, batch.non_trainable, batch.inputs, **kwargs)
    return outputs


def linearize(model, batch, values, tangents, *, quiet):
    """``(f(θ), [J t for t in tangents])``; ``values``/``t`` aligned with ``model.trainable_variables``."""
    with capture.untapped(), quiet():
        if keras.backend.backend() == "jax":
            import jax

            outputs, linear = jax.linearize(lambda v: _call(model, batch, v), list(values))
            return outputs, [linear(list(t)) for t in tangents]
        import tensorflow as tf

        values = [tf.convert_to_tensor(value) for value in values]
        products = []
        for tangent in tangents:
            with tf.autodiff.ForwardAccumulator(list(values), list(tangent)) as accumulator:
                outputs = _call(model, batch, list(values))
            products.append(
                accumulator.jvp(outputs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            )
        return outputs, products


def outputs(model, batch, values, *, quiet):
    """``f(θ)`` at ``values``, the taps off."""
    with capture.untapped(), quiet():
        return _call(model, batch, list(values))


def channel_gradients(model, batch, values, positions, objective, *, quiet):
    """The gradients of ``objective(f(θ))`` with respect to ``values[i]`` for ``i`` in ``positions``."""
    with quiet():
        if keras.backend.backend() == "jax":
            import jax

            def function(channels):
                full = list(values)
                for position, channel in zip(positions, channels, strict=True):
                    full[position] = channel
                return objective(_call(model, batch, full))

            return jax.grad(function)([values[i] for i in positions])
        import tensorflow as tf

        values = [tf.convert_to_tensor(value) for value in values]
        watched = [values[i] for i in positions]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(watched)
            value = objective(_call(model, batch, list(values)))
        return tape.gradient(value, watched, unconnected_gradients=tf.UnconnectedGradients.ZERO)
