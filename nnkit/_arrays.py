"""Reading a tensor or a ``keras.Variable`` on the host, quietly on every backend.

``keras.ops.convert_to_numpy`` calls ``np.array`` on a TensorFlow tensor,
whose ``__array__`` does not take numpy 2's ``copy`` argument, so every call
warns (``DeprecationWarning``). TensorFlow tensors and variables have a
``numpy()`` method that does not; JAX arrays convert with ``np.asarray``.
"""

import contextlib
import warnings

import keras
import numpy as np


def to_numpy(value):
    """``value`` (a tensor, a ``keras.Variable``, a number or an array) as a numpy array."""
    if isinstance(value, keras.Variable):
        value = value.value
    numpy = getattr(value, "numpy", None)
    if callable(numpy):
        return np.asarray(numpy())
    return np.asarray(value)


#: The numpy-2 warning TensorFlow tensors raise when numpy converts them.
NUMPY2_COPY_WARNING = "__array__ implementation doesn't accept a copy keyword"


@contextlib.contextmanager
def quiet_keras_numpy2():
    """Hide the numpy-2 ``copy`` warning Keras's own code raises (e.g. in ``save_weights``).

    Keras converts TensorFlow tensors with ``np.array`` inside its saving
    code; with numpy 2 every call warns. The warning is about Keras, not
    about the caller, so nnkit hides it around the Keras calls it makes on
    every epoch, and only there.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NUMPY2_COPY_WARNING, category=DeprecationWarning)
        yield
