"""The one place K-FAC touches ``tf.distribute``: replica count and cross-replica sums.

Under a ``tf.distribute`` strategy Keras runs the train step once per
replica, on that replica's part of the global batch, and scales the loss by
``1 / replicas`` so that the replicas' gradients *sum* to the gradient of the
global batch's mean loss. K-FAC all-reduces in the optimizer step, in replica
context: the gradients (summed) and the factor statistics (averaged; the
output factor's empirical statistic then needs the factor ``replicas²``, see
``KFAC``). Off TensorFlow, and on TensorFlow without a strategy, there is one
replica and both functions are the identity: JAX's ``keras.distribution``
shards one global batch, whose gradients are already global.
"""

import keras


def _replica_context():
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.distribute.get_replica_context()


def replicas():
    """How many replicas run this train step in sync (1 without a strategy, and off TensorFlow)."""
    context = _replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def all_reduce(values, op):
    """``values`` (a list of tensors) summed (``op="sum"``) or averaged (``"mean"``) over replicas."""
    context = _replica_context()
    if context is None or context.num_replicas_in_sync == 1 or not values:
        return list(values)
    return list(context.all_reduce(op.upper(), list(values)))
