"""A KFAC-registered layer computes what the unregistered Keras layer computes.

Registration shadows a factored layer's ``call`` with the same computation
plus an identity tap (``nnkit/optimizers/_kfac_layers.py``); the probes
``dense-call``, ``conv-call``, ``einsum-call`` and ``embedding-call`` in
``tests/_keras/test_probes.py`` check the Keras side of that. Here: per supported layer configuration, the registered
layer's output equals the unregistered layer's, eagerly and in a compiled
function, with ``training`` True and False.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.optimizers import KFAC

LAYERS = {
    "dense": (lambda: keras.layers.Dense(3, activation="tanh"), (5,)),
    "dense-no-bias": (lambda: keras.layers.Dense(3, use_bias=False), (5,)),
    "dense-sequence": (lambda: keras.layers.Dense(4, activation="relu"), (3, 5)),
    "conv2d-valid": (lambda: keras.layers.Conv2D(4, 3, activation="relu"), (6, 6, 2)),
    "conv2d-same-strided": (
        lambda: keras.layers.Conv2D(3, (3, 2), strides=2, padding="same", use_bias=False),
        (7, 6, 2),
    ),
    "conv2d-dilated": (lambda: keras.layers.Conv2D(2, 2, dilation_rate=2), (6, 6, 3)),
    "conv1d-causal": (
        lambda: keras.layers.Conv1D(3, 3, dilation_rate=2, padding="causal", activation="relu"),
        (8, 2),
    ),
    "conv1d-same-strided": (lambda: keras.layers.Conv1D(2, 2, strides=2, padding="same"), (7, 3)),
    "conv3d": (lambda: keras.layers.Conv3D(2, (2, 3, 2), activation="tanh"), (3, 4, 3, 2)),
    "einsum-heads": (
        lambda: keras.layers.EinsumDense("abc,cde->abde", (3, 2, 2), bias_axes="de"),
        (3, 5),
    ),
    "layer-norm": (lambda: keras.layers.LayerNormalization(), (3, 5)),
    "layer-norm-two-axes": (lambda: keras.layers.LayerNormalization(axis=[-2, -1]), (3, 5)),
    "einsum-transposed": (
        lambda: keras.layers.EinsumDense("abc,dc->abd", (3, 4), activation="tanh"),
        (3, 5),
    ),
}


def _pair(key):
    """The same layer twice, in one model each: one to register, one left as Keras made it."""
    make, shape = LAYERS[key]
    models = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        models.append(keras.Sequential([keras.Input(shape), make()]))
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    return *models, x


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("key", sorted(LAYERS))
def test_registered_layer_output_equals_keras(key, compiled):
    registered, plain, x = _pair(key)
    optimizer = KFAC(model=registered)
    assert optimizer.registered_layers == [registered.layers[0].path]
    for training in (True, False):
        if compiled:
            got = tf.function(lambda t, training=training: registered(t, training=training))(x)
            expected = tf.function(lambda t, training=training: plain(t, training=training))(x)
        else:
            got, expected = registered(x, training=training), plain(x, training=training)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    optimizer.unregister()
    np.testing.assert_array_equal(registered(x), plain(x))


@pytest.mark.parametrize("key", sorted(LAYERS))
def test_registered_layer_gradient_equals_keras(key):
    # The tap is the identity in the backward pass too: the same input and kernel gradients.
    registered, plain, x = _pair(key)
    KFAC(model=registered)
    grads = []
    for model in (registered, plain):
        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(tf.square(model(inputs, training=True)))
        grads.append(tape.gradient(loss, [inputs, model.layers[0].trainable_weights[0]]))
    for got, expected in zip(*grads, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
