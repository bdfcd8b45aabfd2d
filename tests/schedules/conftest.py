import numpy as np
import pytest
import tensorflow as tf


def _eager(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def _graph(schedule, steps):
    fn = tf.function(lambda t: schedule(t))
    return np.array([float(fn(tf.constant(s, tf.int64))) for s in steps])


def _xla(schedule, steps):
    fn = tf.function(lambda t: schedule(t), jit_compile=True)
    return fn(tf.constant(list(steps), tf.int64)).numpy()


@pytest.fixture(params=["eager", "graph", "xla"])
def evaluate(request):
    """Evaluate a schedule at integer steps eagerly, in a tf.function, and under XLA."""
    return {"eager": _eager, "graph": _graph, "xla": _xla}[request.param]
