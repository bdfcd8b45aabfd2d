"""Gradient accumulation that works under ``MirroredStrategy`` (and stays Keras's on JAX)."""

import keras

from nnkit import _validation as v
from nnkit._keras import accumulation
from nnkit._keras import optimizer as keras_optimizer
from nnkit.distribute import clipping


def accumulates_gradients(optimizer):
    """Whether ``accumulate_gradients`` is in effect on ``optimizer`` (TensorFlow backend)."""
    return accumulation.is_patched(optimizer)


def accumulate_gradients(optimizer, steps=None):
    """Average the gradients of ``steps`` micro-batches per update, under ``tf.distribute`` too.

    Use it when the batch you want does not fit in memory: ``steps``
    micro-batches of ``batch_size`` give the update of one batch of
    ``steps × batch_size``. It is Keras's own ``gradient_accumulation_steps``
    (same arithmetic, same saved config), made to work under a
    ``tf.distribute`` strategy such as ``MirroredStrategy``, where Keras's
    fails at the first step ("`merge_call` called while defining a new graph
    or a tf.function", keras-team/keras#16633): on TensorFlow the optimizer's
    apply step is patched (see ``nnkit/_keras/accumulation.py``) so that the
    replicas' gradients are all-reduced for every micro-batch, outside the
    update's ``cond``. Without a strategy, and on JAX (where Keras's works),
    Keras's code runs unchanged.

    Formula: with ``g_k`` the (all-reduced) gradient of micro-batch ``k`` of
    a cycle of ``N = steps``, the optimizer's update at the cycle's last
    micro-batch uses ``ḡ = (1/N) Σ_k g_k``, clipped by the optimizer's own
    clipping; between updates the variables do not change. For a mean loss
    and equal micro-batches, ``ḡ`` is the gradient of the ``N``-times larger
    batch. ``optimizer.iterations`` counts updates, but Keras reads a
    learning-rate schedule at its raw counter, which counts micro-batches:
    update ``j`` uses ``schedule(j·N + N − 1)`` (so size a schedule's
    ``total_steps`` in micro-batches); nnkit's momentum and ``β₁`` schedules
    read the same counter.

    Args:
        optimizer: A Keras optimizer, not yet built (its accumulators are
            made when it is built), or built with the same ``steps``.
            ``nnkit.optimizers.KFAC`` accumulates its factors with the
            gradients (fixed learning rate and empirical Fisher only).
            Required.
        steps: ``N``, an int ``>= 2``, or ``None`` to keep the optimizer's
            ``gradient_accumulation_steps``. Defaults to ``None``.

    Returns:
        ``optimizer``, so that ``compile(optimizer=accumulate_gradients(...))``
        reads naturally.

    Raises:
        TypeError: If ``optimizer`` is not a Keras optimizer or ``steps`` is
            not an int.
        ValueError: If ``steps < 2``, if ``steps`` is ``None`` and the
            optimizer does not accumulate, if the optimizer is built with
            another number, if it is a ``LossScaleOptimizer`` or a K-FAC
            with the adaptive step or the sampled Fisher, or if
            ``clip_after_aggregation`` is applied (not needed: the patched
            step clips the accumulated, all-reduced gradient).

    Example:
    >>> import keras
    >>> from nnkit.distribute import accumulate_gradients
    >>> optimizer = accumulate_gradients(keras.optimizers.Adam(1e-3), steps=4)
    >>> optimizer.gradient_accumulation_steps
    4

    References:
        keras-team/keras#16633 (gradient accumulation requested for
        ``tf.distribute``); Keras's ``gradient_accumulation_steps``.
    """
    if not keras_optimizer.is_keras_optimizer(optimizer):
        raise TypeError(
            "`optimizer` must be a Keras optimizer (keras.optimizers.Optimizer). "
            f"Received: optimizer={optimizer!r}"
        )
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "accumulate_gradients does not support a LossScaleOptimizer yet: pass "
            "gradient_accumulation_steps to the inner optimizer and run without a "
            f"strategy, or without loss scaling. Received: optimizer={optimizer!r}"
        )
    current = optimizer.gradient_accumulation_steps
    if steps is None:
        if not current:
            raise ValueError(
                "`steps` must be given when the optimizer has no gradient_accumulation_steps. "
                "Received: steps=None"
            )
        steps = current
    steps = v.check_int("steps", steps, minimum=2)
    from nnkit.optimizers import KFAC, _kfac_accumulation

    if isinstance(optimizer, KFAC):
        _kfac_accumulation.check(optimizer, steps)
    if optimizer.built and current != steps:
        raise ValueError(
            f"The optimizer is built with gradient_accumulation_steps={current}; its "
            "accumulators are made when it is built. Call accumulate_gradients before fit "
            f"(or on a new optimizer). Received: steps={steps}"
        )
    on_tensorflow = keras.backend.backend() == "tensorflow"
    if on_tensorflow and clipping.clips_after_aggregation(optimizer):
        raise ValueError(
            "clip_after_aggregation clips every micro-batch's gradient; with "
            "accumulate_gradients the optimizer's own clipping already applies to the "
            "accumulated, all-reduced gradient, as on one device. Remove "
            "clip_after_aggregation (remove_clip_after_aggregation) and keep the clipping "
            "setting on the optimizer."
        )
    optimizer.gradient_accumulation_steps = steps
    if on_tensorflow:
        accumulation.patch(optimizer)
    return optimizer


def remove_accumulation_patch(optimizer):
    """Undo the patch of ``accumulate_gradients`` (Keras's accumulation runs again); return it.

    Use it to hand the optimizer back exactly as Keras made it (its
    ``gradient_accumulation_steps`` stays set). Nothing happens when the
    patch is not in effect.

    Args:
        optimizer: The Keras optimizer ``accumulate_gradients`` was applied
            to. Required.

    Returns:
        ``optimizer``.

    Example:
    >>> import keras
    >>> from nnkit.distribute import accumulate_gradients, remove_accumulation_patch
    >>> optimizer = remove_accumulation_patch(accumulate_gradients(keras.optimizers.SGD(), 2))
    >>> optimizer.gradient_accumulation_steps
    2
    """
    v.check_instance(
        "optimizer", optimizer, keras.optimizers.Optimizer, "a keras.optimizers.Optimizer"
    )
    accumulation.unpatch(optimizer)
    return optimizer
