"""Where the current step runs among ``tf.distribute`` replicas, for code that must know.

Used by ``nnkit.meta``: under ``MirroredStrategy`` each replica adapts its own
share of the tasks of a batch, so the state it writes back (batch-norm
statistics averaged over tasks) is averaged over the replicas too, and the
random streams of its tasks are numbered by their position in the global
batch, so the run draws what one device would. Off TensorFlow, outside a
strategy and with one replica, both functions change nothing.
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


def replica_id():
    """This replica's index in its sync group (a scalar tensor or ``0``)."""
    context = _replica_context()
    return 0 if context is None else context.replica_id_in_sync_group


def mean_over_replicas(values):
    """``values`` (a list of float tensors) averaged over the replicas in sync."""
    context = _replica_context()
    if context is None or not values:
        return list(values)
    import tensorflow as tf

    return list(context.all_reduce(tf.distribute.ReduceOp.MEAN, list(values)))
