"""Run functions on the gradients after the cross-replica all-reduce, inside the optimizer step.

Keras's TensorFlow optimizer (``keras/src/backend/tensorflow/optimizer.py``)
runs, in replica context and in this order: ``_clip_gradients`` (per replica),
``_all_reduce_sum_gradients`` (the all-reduce: afterwards every replica holds
the gradient of the global batch, because Keras scales the loss by
``1 / num_replicas``), then the variable update. A *transform* added here runs
right after the all-reduce, on every replica, on the aggregated
``[(gradient, variable), ...]`` list, and returns the list to apply.

It works by shadowing the optimizer *instance*'s ``_all_reduce_sum_gradients``
with an instance attribute that calls the class method and then the
transforms in order. Removing the last transform deletes the attribute, so
the optimizer is exactly as before. Without a strategy the default strategy
still calls ``_all_reduce_sum_gradients`` (its all-reduce is the identity), so
transforms run there too. Nothing here creates variables or is saved with
the model. TensorFlow backend only.

Used by ``nnkit.distribute.clip_after_aggregation``; other users (e.g. a
gradient monitor that wants the aggregated gradients) call
:func:`add_transform` on the same optimizer and compose with it.
"""

import types

import keras

_METHOD = "_all_reduce_sum_gradients"
#: Instance attribute holding the tuple of ``_Handle`` objects, in run order.
_TRANSFORMS = "_nnkit_aggregated_transforms"
#: Instance attribute holding an instance-level ``_all_reduce_sum_gradients``
#: that was there before the first transform (``None`` when there was none).
_PREVIOUS = "_nnkit_aggregated_previous"


class _Handle:
    """What :func:`add_transform` returns; pass it to :func:`remove_transform`."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __repr__(self):
        return f"<aggregated-gradient transform {getattr(self.fn, '__qualname__', self.fn)!r}>"


def target_optimizer(optimizer):
    """The optimizer whose step runs the all-reduce: the inner one of a ``LossScaleOptimizer``.

    Raises ``ValueError`` on a non-TensorFlow backend and ``TypeError`` for
    anything but a Keras optimizer.
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "Transforming gradients after the cross-replica all-reduce needs the TensorFlow "
            "backend (tf.distribute); on JAX use keras.distribution, whose gradients are "
            f"already global. Received: backend={keras.backend.backend()!r}"
        )
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            f"`optimizer` must be a keras.optimizers.Optimizer, not {type(optimizer).__name__}. "
            f"Received: optimizer={optimizer!r}"
        )
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def _all_reduce_then_transform(self, grads_and_vars):
    previous = getattr(self, _PREVIOUS)
    if previous is None:
        reduced = type(self)._all_reduce_sum_gradients(self, grads_and_vars)
    else:
        reduced = previous(grads_and_vars)
    reduced = list(reduced)
    for handle in getattr(self, _TRANSFORMS):
        result = list(handle.fn(reduced))
        if len(result) != len(reduced):
            raise ValueError(
                f"An aggregated-gradient transform must return one (gradient, variable) pair per "
                f"pair it receives: got {len(reduced)}, returned {len(result)}. "
                f"Received: transform={handle.fn!r}"
            )
        reduced = result
    return reduced


def add_transform(optimizer, fn, *, first=False):
    """Run ``fn`` on the aggregated gradients in every step of ``optimizer``; return a handle.

    ``fn(grads_and_vars) -> grads_and_vars`` receives the list of
    ``(gradient, variable)`` pairs after the cross-replica all-reduce (a
    gradient may be ``None``), in replica context inside the compiled train
    step, and must return a list of the same length. Transforms run in the
    order they were added; ``first=True`` puts ``fn`` before the others (e.g.
    a monitor that wants to see the gradients before clipping). A
    ``LossScaleOptimizer`` is handled through its inner optimizer. Call
    before the train function is traced (before ``fit``), or reset
    ``model.train_function = None`` afterwards.
    """
    optimizer = target_optimizer(optimizer)
    if not callable(fn):
        raise TypeError(
            f"`fn` must be callable (grads_and_vars -> grads_and_vars). Received: fn={fn!r}"
        )
    handle = _Handle(fn)
    current = vars(optimizer).get(_TRANSFORMS)
    if current is None:
        # object.__setattr__: plain Python state, kept out of Keras/TF tracking.
        object.__setattr__(optimizer, _PREVIOUS, vars(optimizer).get(_METHOD))
        object.__setattr__(
            optimizer, _METHOD, types.MethodType(_all_reduce_then_transform, optimizer)
        )
        current = ()
    object.__setattr__(optimizer, _TRANSFORMS, (handle, *current) if first else (*current, handle))
    return handle


def remove_transform(optimizer, handle):
    """Stop running the transform ``handle`` (from :func:`add_transform`) on ``optimizer``.

    Removing the last transform restores the optimizer's own
    ``_all_reduce_sum_gradients``. Raises ``ValueError`` if ``handle`` is not
    installed on ``optimizer``.
    """
    optimizer = target_optimizer(optimizer)
    current = vars(optimizer).get(_TRANSFORMS, ())
    if not any(h is handle for h in current):
        raise ValueError(
            "This transform is not installed on the optimizer (removed already, or added to "
            f"another optimizer). Received: handle={handle!r}, optimizer={optimizer.name!r}"
        )
    remaining = tuple(h for h in current if h is not handle)
    if remaining:
        object.__setattr__(optimizer, _TRANSFORMS, remaining)
        return
    previous = vars(optimizer)[_PREVIOUS]
    object.__delattr__(optimizer, _TRANSFORMS)
    object.__delattr__(optimizer, _PREVIOUS)
    if previous is None:
        object.__delattr__(optimizer, _METHOD)
    else:
        object.__setattr__(optimizer, _METHOD, previous)


def transforms(optimizer):
    """The functions installed on ``optimizer`` by :func:`add_transform`, in run order."""
    optimizer = target_optimizer(optimizer)
    return [h.fn for h in vars(optimizer).get(_TRANSFORMS, ())]
