"""The one guard for features that run on some Keras backends only.

Every nnkit feature that needs a backend (TensorFlow's ``tf.distribute``,
JAX's ``keras.distribution``, nested gradients) calls `require_backend`
before it does anything, so a wrong backend always gives the same exception
type (``ValueError``, like every other bad setting) and the same message
shape: what needs which backend, why or what to use instead, what was
received and how to switch.
"""

import keras

#: How the backends are spelled in messages.
_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch", "numpy": "NumPy"}


def _names(backends):
    names = [_NAMES.get(b, b) for b in backends]
    if len(names) == 1:
        return f"the {names[0]} backend"
    return f"the {', '.join(names[:-1])} and {names[-1]} backends"


def require_backend(feature, supported, *, reason=None):
    """Return the current backend's name; raise if it is not one of ``supported``.

    Args:
        feature: What needs the backend, as the message should name it
            (``"SharpnessAwareMinimization"``, ``"nnkit.meta"``).
        supported: The backends it runs on, a tuple of names in the order
            they are recommended (``("tensorflow", "jax")``).
        reason: One sentence (no final period) saying why, or what to use
            on the other backends; ``None`` for none. Defaults to ``None``.

    Returns:
        ``keras.backend.backend()``.

    Raises:
        ValueError: If the current backend is not in ``supported``. The
            message reads ``"<feature> runs on <backends> only: <reason>.
            Received: backend='torch'. Set KERAS_BACKEND=<first supported>
            before Keras is first imported."``
    """
    backend = keras.backend.backend()
    if backend in supported:
        return backend
    because = f": {reason}" if reason else ""
    raise ValueError(
        f"{feature} runs on {_names(supported)} only{because}. Received: backend={backend!r}. "
        f"Set KERAS_BACKEND={supported[0]} before Keras is first imported."
    )
