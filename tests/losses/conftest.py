"""Fixtures for the loss tests: evaluate eagerly, in a tf.function and under XLA."""

import numpy as np
import pytest
import tensorflow as tf


def _to_numpy(outputs):
    return tf.nest.map_structure(np.asarray, outputs)


def _eager(fn, *arrays):
    return _to_numpy(fn(*[a for a in arrays if a is not None]))


def _compiled(jit_compile):
    def run(fn, *arrays):
        compiled = tf.function(fn, jit_compile=jit_compile, autograph=False)
        return _to_numpy(compiled(*[tf.constant(a) for a in arrays if a is not None]))

    return run


@pytest.fixture(params=["eager", "graph", "xla"])
def evaluate(request):
    """``evaluate(fn, *arrays)``: ``fn`` (a loss, or any function of tensors) on the arrays
    that are not ``None``, eagerly, in a ``tf.function`` or under XLA (``jit_compile=True``).
    """
    return {"eager": _eager, "graph": _compiled(False), "xla": _compiled(True)}[request.param]


@pytest.fixture(autouse=True)
def full_float32_matmul():
    """Ampere and later GPUs run float32 matmuls in TF32 (about 1e-3 relative error) by default.

    The pairwise distances of ``TripletLoss`` are matmuls; the closed forms here need float32.
    A no-op on CPUs; the previous setting is restored after each test.
    """
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(before)
