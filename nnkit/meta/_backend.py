"""What the meta-learners need from the backend that ``keras.ops`` does not offer.

``keras.ops`` has no gradient function: the inner loop differentiates the
support loss with a nested ``tf.GradientTape`` on TensorFlow (it watches the
adapted tensors, which are not variables) and with ``jax.value_and_grad`` on
JAX. Everything else (the forward pass through ``Layer.stateless_call``, the
per-task map through ``keras.ops.vectorized_map``) is backend-agnostic.

On TensorFlow, the outer tape of Keras's ``train_step`` records the ops the
inner tape runs to compute its gradient, so the meta-gradient includes the
second-order terms unless the inner gradient is stopped (first order). On
JAX, ``jax.value_and_grad`` nested inside the trainer's own
``jax.value_and_grad`` does the same.
"""

import keras

from nnkit._backend import require_backend

#: Backends the meta-learners run on.
SUPPORTED = ("tensorflow", "jax")


def check_supported():
    """Raise a clear error on a backend without nested differentiation support here."""
    return require_backend(
        "nnkit.meta",
        SUPPORTED,
        reason="the inner loop needs nested gradients (tf.GradientTape or jax.grad) and "
        "PyTorch's are not wired up",
    )


def value_and_grad(fn, params):
    """``(value, aux, grads)`` of ``value, aux = fn(params)`` with respect to ``params``.

    ``params`` is a list of tensors (not variables); the gradient is zero for
    a tensor ``value`` does not depend on. Nested inside an outer gradient
    computation, the outer one differentiates through this one.
    """
    if keras.backend.backend() == "jax":
        import jax

        (value, aux), grads = jax.value_and_grad(fn, has_aux=True)(list(params))
        return value, aux, list(grads)
    import tensorflow as tf

    params = list(params)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(params)  # the adapted tensors, not only the variables' first values
        value, aux = fn(params)
    grads = tape.gradient(value, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return value, aux, list(grads)


def compiled(fn):
    """``fn`` compiled for the backend: a ``tf.function`` or a ``jax.jit`` function.

    Every tensor ``fn`` reads must be an argument (JAX would bake a captured
    variable's value into the compiled function).
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, reduce_retracing=True)
