"""Where the current step runs among ``tf.distribute`` replicas, for code that must know.

The one place nnkit's training-time code asks ``tf.distribute`` about
replicas. Under a strategy Keras runs the train step once per replica, on
that replica's part of the global batch, and scales the loss by
``1 / replicas`` so that the replicas' gradients *sum* to the gradient of the
global batch's mean loss. Code that reduces across replicas in the step
uses these functions, in replica context:

- ``nnkit.optimizers.KFAC`` all-reduces its gradients (summed) and factor
  statistics (averaged) in the optimizer step;
- ``nnkit.meta``: each replica adapts its own share of the tasks of a batch,
  so the state it writes back (batch-norm statistics averaged over tasks) is
  averaged over the replicas too, and the random streams of its tasks are
  numbered by their position in the global batch, so the run draws what one
  device would.

Off TensorFlow, outside a strategy, in cross-replica context and with one
replica, every function here changes nothing (one replica, index 0, the
identity): JAX's ``keras.distribution`` shards one global batch, whose
gradients are already global.
"""

import keras


def _replica_context():
    """The ``tf.distribute`` replica context with more than one replica, or ``None``."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def replicas():
    """How many replicas run this train step in sync (1 without a strategy, and off TensorFlow)."""
    context = _replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def replica_id():
    """This replica's index in its sync group (a scalar tensor or ``0``)."""
    context = _replica_context()
    return 0 if context is None else context.replica_id_in_sync_group


def all_reduce(values, op):
    """``values`` (a list of tensors) summed (``op="sum"``) or averaged (``"mean"``) over replicas."""
    context = _replica_context()
    if context is None or not values:
        return list(values)
    return list(context.all_reduce(op.upper(), list(values)))


def mean_over_replicas(values):
    """``values`` (a list of float tensors) averaged over the replicas in sync."""
    return all_reduce(values, "mean")
