"""Keras's ``gradient_accumulation_steps`` made to work under a ``tf.distribute`` strategy.

Keras 3 accumulates in ``BaseOptimizer._backend_apply_gradients``: an
``ops.cond`` on "is this an update step" whose update branch aggregates the
replicas' gradients and updates the mirrored variables, both cross-replica
synchronisations (``merge_call``). TensorFlow refuses a synchronisation
inside a ``cond`` in replica context ("`merge_call` called while defining a
new graph or a tf.function"), so every ``fit`` under ``MirroredStrategy``
with accumulation fails at its first step (keras-team/keras#16633 asked
since tf.keras).

The replacement (TensorFlow backend, only under a strategy, only in replica
context; elsewhere Keras's own code runs) moves both synchronisations out of
the ``cond``: each micro-batch's gradients are all-reduced first (through
``optimizer._all_reduce_sum_gradients``, the method nnkit's gradient monitor
measures), then one ``merge_call`` enters the cross-replica context, where
the ``cond`` chooses between adding the (now identical) aggregated gradients
to the mirrored accumulators and the update: ``(g + acc) / N``, Keras's
clipping, weight decay and ``update_step`` on every device's copy, then the
accumulators reset. Keras's arithmetic is unchanged (the sum over replicas
commutes with the sum over micro-batches), so the update equals one device's
on the ``N``-times larger batch.

Assumptions (each has a probe in ``tests/_keras/test_probes.py``):

- ``accumulation-apply``: ``optimizer.apply`` calls
  ``optimizer._backend_apply_gradients(grads, trainable_variables)`` (looked
  up on the instance) between the gradient filtering and the iteration
  increment, and it accumulates into
  ``optimizer._accumulated_gradients[optimizer._get_variable_index(v)]``.
- ``accumulation-distributed-update``: on TensorFlow,
  ``optimizer._distributed_tf_update_step(distribution, grads_and_vars,
  learning_rate)`` runs ``update_step`` on every device's copy of each
  variable in cross-replica context; ``keras.src.optimizers.base_optimizer.
  BaseOptimizer._apply_weight_decay`` (the backend-neutral one) decays the
  mirrored variables there (the TensorFlow override needs a replica context).
"""

import keras

from nnkit._keras import shadow

#: The owner of the patch (``nnkit._keras.shadow.ORDER``).
OWNER = "gradient_accumulation"


def _distributed_apply(optimizer):
    import tensorflow as tf
    from keras.src.optimizers import base_optimizer

    def wrapper(call_next, grads, trainable_variables):
        steps = optimizer.gradient_accumulation_steps
        context = tf.distribute.get_replica_context()
        if not steps or not tf.distribute.has_strategy() or context is None:
            return call_next(grads, trainable_variables)
        # The backend variables, as Keras's own update step hands them to the all-reduce.
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        pairs = optimizer._all_reduce_sum_gradients(list(zip(grads, variables, strict=True)))
        reduced = [g for g, _ in pairs]

        def cross_replica(distribution, reduced):
            local = [distribution.experimental_local_results(g)[0] for g in reduced]
            accumulators = [
                optimizer._accumulated_gradients[optimizer._get_variable_index(v)]
                for v in trainable_variables
            ]
            is_update = (optimizer._iterations + 1) % steps == 0

            def update():
                total = [(g + a) / steps for g, a in zip(local, accumulators, strict=True)]
                total = optimizer._clip_gradients(total)
                # Keras's backend-neutral weight decay: the TensorFlow override
                # enters a merge_call, which needs a replica context.
                base_optimizer.BaseOptimizer._apply_weight_decay(optimizer, trainable_variables)
                optimizer._distributed_tf_update_step(
                    distribution, list(zip(total, variables, strict=True)), optimizer.learning_rate
                )
                for a in accumulators:
                    a.assign(tf.zeros(a.shape, a.dtype))
                return tf.constant(True)

            def accumulate():
                for g, a in zip(local, accumulators, strict=True):
                    a.assign(a + g)
                return tf.constant(False)

            tf.cond(is_update, update, accumulate)

        context.merge_call(cross_replica, args=(reduced,))

    return wrapper


def patch(optimizer):
    """Install the distributed accumulation on ``optimizer`` (once); return the patch."""
    found = shadow.find(optimizer, "_backend_apply_gradients", OWNER)
    if found is not None:
        return found
    return shadow.shadow(
        optimizer, "_backend_apply_gradients", _distributed_apply(optimizer), owner=OWNER
    )


def is_patched(optimizer):
    """Whether ``patch`` is in effect on ``optimizer``."""
    return shadow.is_shadowed(optimizer, "_backend_apply_gradients", OWNER)


def unpatch(optimizer):
    """Undo ``patch`` (nothing when it is not in effect)."""
    found = shadow.find(optimizer, "_backend_apply_gradients", OWNER)
    if found is not None:
        shadow.unshadow(found)
