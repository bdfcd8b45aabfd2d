"""Run functions on the gradients after the cross-replica all-reduce, inside the optimizer step.

Assumption (probe in ``tests/_keras/test_probes.py``):

- ``all-reduce-tap``: Keras's TensorFlow optimizer
  (``keras/src/backend/tensorflow/optimizer.py``) runs, in replica context
  and in this order: ``_clip_gradients`` (per replica), then
  ``self._all_reduce_sum_gradients(grads_and_vars)`` (looked up on the
  instance; afterwards every replica holds the gradient of the global batch,
  because Keras scales the loss by ``1 / num_replicas``), then the variable
  update with the pairs it returned. Without a strategy the default strategy
  still calls it (its all-reduce is the identity).

A *transform* added here runs right after the all-reduce, on every replica,
on the aggregated ``[(gradient, variable), ...]`` list, and returns the list
to apply. Each transform is a patch of ``_all_reduce_sum_gradients`` through
``nnkit._keras.shadow``, so transforms of different owners compose in the
order of ``shadow.ORDER`` (a later owner is nearer the all-reduce and sees
its result first: the gradient monitor measures before
``clip_after_aggregation`` clips). Removing the last transform restores the
optimizer exactly. Nothing here creates variables or is saved with the model.
TensorFlow backend only.
"""

import keras

from nnkit._backend import require_backend
from nnkit._keras import shadow

METHOD = "_all_reduce_sum_gradients"


def target_optimizer(optimizer):
    """The optimizer whose step runs the all-reduce: the inner one of a ``LossScaleOptimizer``.

    Raises ``ValueError`` on a non-TensorFlow backend and ``TypeError`` for
    anything but a Keras optimizer.
    """
    require_backend(
        "Transforming gradients after the cross-replica all-reduce",
        ("tensorflow",),
        reason="the all-reduce is tf.distribute's; on JAX use keras.distribution, whose "
        "gradients are already global",
    )
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            f"`optimizer` must be a keras.optimizers.Optimizer, not {type(optimizer).__name__}. "
            f"Received: optimizer={optimizer!r}"
        )
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def add_transform(optimizer, fn, *, owner):
    """Run ``fn`` on the aggregated gradients in every step of ``optimizer``; return a patch.

    ``fn(grads_and_vars) -> grads_and_vars`` receives the list of
    ``(gradient, variable)`` pairs after the cross-replica all-reduce (a
    gradient may be ``None``), in replica context inside the compiled train
    step, and must return a list of the same length. ``owner`` (one of
    ``nnkit._keras.shadow.ORDER``) places it among other transforms. A
    ``LossScaleOptimizer`` is handled through its inner optimizer. Call
    before the train function is traced (before ``fit``), or retrace after.
    """
    optimizer = target_optimizer(optimizer)
    if not callable(fn):
        raise TypeError(
            f"`fn` must be callable (grads_and_vars -> grads_and_vars). Received: fn={fn!r}"
        )

    def transform(call_next, grads_and_vars):
        reduced = list(call_next(grads_and_vars))
        result = list(fn(reduced))
        if len(result) != len(reduced):
            raise ValueError(
                "An aggregated-gradient transform must return one (gradient, variable) pair per "
                f"pair it receives: got {len(reduced)}, returned {len(result)}. "
                f"Received: transform={fn!r}"
            )
        return result

    return shadow.shadow(optimizer, METHOD, transform, owner=owner)


def remove_transform(patch):
    """Stop running the transform ``patch`` (from ``add_transform``). Idempotent."""
    shadow.unshadow(patch)


def owners(optimizer):
    """The owners of the transforms on ``optimizer``, outermost first."""
    return shadow.owners(target_optimizer(optimizer), METHOD)


def find(optimizer, *, owner):
    """The transform patch of ``owner`` on ``optimizer`` (``None`` when there is none)."""
    return shadow.find(target_optimizer(optimizer), METHOD, owner)
