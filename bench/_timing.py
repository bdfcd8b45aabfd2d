"""Helpers shared by the ``bench/`` scripts: threads, load average, environment.

Kept to what every script needs the same way; each script keeps its own
method (what it times, how it pairs configurations) in its docstring.
"""

import os
import platform

import keras


def set_threads(threads):
    """Set TensorFlow's intra-op and inter-op threads (``0``: TensorFlow's default)."""
    if threads and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def load_average():
    """The 1-minute load average (other processes make timings noisy), or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def tensorflow_version():
    """TensorFlow's version on the TensorFlow backend, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.__version__


def environment(load_before, load_after):
    """The ``environment`` entry of a script's JSON figures."""
    return {
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "tensorflow": tensorflow_version(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
