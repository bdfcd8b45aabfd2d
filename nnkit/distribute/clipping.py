"""Gradient clipping applied after the cross-replica all-reduce, as on one device."""

from nnkit import _validation as v
from nnkit._keras import all_reduce
from nnkit._keras import optimizer as keras_optimizer

#: The owner of both patches (``nnkit._keras.shadow.ORDER``).
_OWNER = "clip_after_aggregation"
_KINDS = ("clipnorm", "global_clipnorm", "clipvalue")


def keras_clip(optimizer, grads):
    """Keras's own clipping of ``grads`` by ``optimizer``'s settings, even when it is moved."""
    return keras_optimizer.clip_gradients(optimizer, grads)


def _clip_after_all_reduce(optimizer):
    def transform(grads_and_vars):
        grads = keras_clip(optimizer, [g for g, _ in grads_and_vars])
        return [(g, var) for g, (_, var) in zip(grads, grads_and_vars, strict=True)]

    return transform


def clip_settings(optimizer):
    """``{kind: value}`` for the clipping attributes set on ``optimizer`` (empty when none)."""
    optimizer = all_reduce.target_optimizer(optimizer)
    return {kind: getattr(optimizer, kind) for kind in _KINDS if getattr(optimizer, kind)}


def clips_after_aggregation(optimizer):
    """Whether ``clip_after_aggregation`` is applied to ``optimizer``."""
    inner = all_reduce.target_optimizer(optimizer)
    return keras_optimizer.clipping_suspended(inner, owner=_OWNER)


def clip_after_aggregation(optimizer, global_clipnorm=None):
    """Clip gradients after the cross-replica all-reduce, as one device would; return the optimizer.

    Keras clips (``clipnorm``, ``global_clipnorm``, ``clipvalue``) each
    replica's gradient *before* the all-reduce, so under ``MirroredStrategy``
    the clipped update differs from one device's on the same global batch:
    each replica holds ``1/N`` of the global gradient (Keras scales the loss
    by ``1/num_replicas``) and the norm it compares with the threshold is
    that of a part, not of the whole. This moves the optimizer's own clipping
    to after the all-reduce: it runs Keras's clipping code on the aggregated
    (global-batch) gradient, on every replica, so the update equals the
    single-device one. With one replica (or no strategy) nothing changes.

    The clipping attributes stay on the optimizer, so ``get_config()``,
    ``model.save()`` and ``keras.saving.load_model()`` keep them: a loaded
    model's optimizer is a plain Keras optimizer with the same setting,
    clipping per replica again (identical on one device). Under a strategy,
    apply this again after loading; ``nnkit.distribute.check`` warns when it
    is missing. It adds no variables and no state. Remove it with
    ``remove_clip_after_aggregation``. Apply it before ``fit`` traces the
    train step (or set ``model.train_function = None`` afterwards). A
    ``LossScaleOptimizer`` is handled through its inner optimizer.

    Args:
        optimizer: A Keras optimizer (TensorFlow backend). Applying it again
            is allowed (it only updates ``global_clipnorm`` when given).
        global_clipnorm: Optional float > 0: set ``optimizer.global_clipnorm``
            to this first. With ``None``, the clipping the optimizer already
            has (``clipnorm``, ``global_clipnorm`` or ``clipvalue``) is moved.
            Defaults to ``None``.

    Returns:
        ``optimizer``, so that ``compile(optimizer=clip_after_aggregation(...))``
        reads naturally.

    Raises:
        ValueError: If the backend is not TensorFlow, if ``global_clipnorm``
            is not > 0, if it is given while the optimizer clips with
            ``clipnorm`` or ``clipvalue``, or if there is nothing to clip.
        TypeError: If ``optimizer`` is not a Keras optimizer or
            ``global_clipnorm`` is not a number.

    Example:
    >>> import keras
    >>> from nnkit.distribute import clip_after_aggregation, remove_clip_after_aggregation
    >>> sgd = clip_after_aggregation(keras.optimizers.SGD(0.1), global_clipnorm=1.0)
    >>> sgd.get_config()["global_clipnorm"]  # kept for model.save()
    1.0
    >>> remove_clip_after_aggregation(sgd) is sgd  # back to Keras's per-replica clipping
    True
    """
    inner = all_reduce.target_optimizer(optimizer)
    if global_clipnorm is not None:
        global_clipnorm = v.check_positive_number("global_clipnorm", global_clipnorm)
        others = {k: val for k, val in clip_settings(inner).items() if k != "global_clipnorm"}
        if others:
            raise ValueError(
                f"The optimizer already clips with {others}; Keras allows one kind of clipping. "
                "Leave `global_clipnorm=None` to move that clipping after the all-reduce, or "
                f"create the optimizer without it. Received: global_clipnorm={global_clipnorm}"
            )
        inner.global_clipnorm = global_clipnorm
    if not clip_settings(inner):
        raise ValueError(
            "The optimizer does not clip: pass `global_clipnorm`, or create it with "
            "`clipnorm`, `global_clipnorm` or `clipvalue`. "
            f"Received: optimizer={inner.name!r}, global_clipnorm={global_clipnorm}"
        )
    if not clips_after_aggregation(inner):
        all_reduce.add_transform(inner, _clip_after_all_reduce(inner), owner=_OWNER)
        keras_optimizer.suspend_clipping(inner, owner=_OWNER)
    return optimizer


def remove_clip_after_aggregation(optimizer):
    """Undo ``clip_after_aggregation``: Keras clips per replica again; return the optimizer.

    The clipping attributes (``global_clipnorm`` etc.) are left as they are.
    Removing from an optimizer that does not clip after aggregation does
    nothing.

    Args:
        optimizer: A Keras optimizer (TensorFlow backend).

    Returns:
        ``optimizer``.

    Raises:
        ValueError: If the backend is not TensorFlow.
        TypeError: If ``optimizer`` is not a Keras optimizer.

    Example:
    >>> import keras
    >>> from nnkit.distribute import clip_after_aggregation, remove_clip_after_aggregation
    >>> sgd = clip_after_aggregation(keras.optimizers.SGD(0.1, clipvalue=0.5))
    >>> remove_clip_after_aggregation(sgd).clipvalue
    0.5
    """
    inner = all_reduce.target_optimizer(optimizer)
    if clips_after_aggregation(inner):
        all_reduce.remove_transform(all_reduce.find(inner, owner=_OWNER))
        keras_optimizer.restore_clipping(inner, owner=_OWNER)
    return optimizer
