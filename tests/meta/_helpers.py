"""Shared helpers of the ``nnkit.meta`` tests: eager meta-gradients on either backend, fixtures."""

import keras
import numpy as np
from keras import ops

from nnkit._arrays import to_numpy


def meta_gradient(learner, inputs, y_query):
    """``(loss, {id(variable): gradient})`` of the learner's training loss, computed eagerly.

    The loss is what ``fit`` minimizes: the compiled loss of the query
    predictions plus ``learner.losses`` (Reptile's surrogate, regularizers).
    TensorFlow: a ``GradientTape`` around the call; JAX: ``jax.value_and_grad``
    through ``learner.stateless_call``.
    """
    loss_fn = keras.losses.get(learner.loss)
    variables = learner.trainable_variables
    if keras.backend.backend() == "jax":
        import jax

        trainable = [w.value for w in variables]
        non_trainable = [w.value for w in learner.non_trainable_variables]

        def total(values):
            y_pred, _, losses = learner.stateless_call(
                values, non_trainable, inputs, training=True, return_losses=True
            )
            value = ops.mean(loss_fn(y_query, y_pred))
            for extra in losses:
                value = value + extra
            return value

        value, grads = jax.jit(jax.value_and_grad(total))(trainable)
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            y_pred = learner(inputs, training=True)
            value = ops.mean(loss_fn(y_query, y_pred))
            for extra in learner.losses:
                value = value + extra
        grads = tape.gradient(value, variables)
    return float(to_numpy(value)), {
        id(w): to_numpy(g) for w, g in zip(variables, grads, strict=True)
    }


def host(variable):
    """A variable's value as a numpy array."""
    return to_numpy(variable)


def linear_model(features, seed=0, outputs=1):
    """``Dense(outputs)`` on ``features`` inputs with weights drawn from ``seed`` (numpy)."""
    rng = np.random.default_rng(seed)
    net = keras.Sequential([keras.Input((features,)), keras.layers.Dense(outputs)])
    net.set_weights(
        [rng.normal(size=(features, outputs)).astype("float32"),
         rng.normal(size=(outputs,)).astype("float32")]
    )  # fmt: skip
    return net


def linear_tasks(tasks=3, shots=4, queries=5, features=2, seed=1):
    """``(inputs, y_query)`` of random linear regression tasks (float32)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(tasks, features, 1))
    xs = rng.normal(size=(tasks, shots, features))
    xq = rng.normal(size=(tasks, queries, features))
    ys = xs @ w + rng.normal(scale=0.3, size=(tasks, shots, 1))
    yq = xq @ w + rng.normal(scale=0.3, size=(tasks, queries, 1))
    inputs = {"x_support": xs, "y_support": ys, "x_query": xq}
    return {k: a.astype("float32") for k, a in inputs.items()}, yq.astype("float32")
