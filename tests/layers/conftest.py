import keras
import numpy as np
import pytest
import tensorflow as tf


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _eager(layer, x, training):
    return np.asarray(layer(x, training=training))


def _graph(layer, x, training):
    return tf.function(lambda t: layer(t, training=training))(tf.constant(x)).numpy()


def _xla(layer, x, training):
    fn = tf.function(lambda t: layer(t, training=training), jit_compile=True)
    return fn(tf.constant(x)).numpy()


@pytest.fixture(params=["eager", "graph", "xla"])
def apply(request):
    """``apply(layer, x, training)`` eagerly, in a tf.function, and under XLA."""
    return {"eager": _eager, "graph": _graph, "xla": _xla}[request.param]
