"""Training under ``tf.distribute`` (and Keras's JAX-backend distribution): choosing a
strategy, checking a model is ready for it, and the data-parallel conventions.

All of nnkit's ``tf.distribute``-specific code lives in this subpackage.
"""

# -- strategy selection and data-parallel helpers --

# -- readiness check, clipping after aggregation, synchronized batch norm --

# -- model parallelism (JAX backend) --

__all__ = []
