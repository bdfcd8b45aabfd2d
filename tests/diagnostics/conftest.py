import keras
import pytest
import tensorflow as tf


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


@pytest.fixture(params=["eager", "graph", "xla"])
def run(request):
    """``run(fn, *args)``: call ``fn`` eagerly, in a tf.function, and under XLA."""
    if request.param == "eager":
        return lambda fn, *args: fn(*args)
    return lambda fn, *args: tf.function(fn, jit_compile=request.param == "xla")(*args)
