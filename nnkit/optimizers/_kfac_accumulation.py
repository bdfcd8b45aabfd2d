"""K-FAC under gradient accumulation: the gradients and the factor statistics accumulate together.

With ``gradient_accumulation_steps = N`` (Keras's argument, or
``nnkit.distribute.accumulate_gradients`` under ``MirroredStrategy``) an
update happens at every ``N``-th micro-batch (Keras's raw step counter
``k``, an update where ``(k + 1) mod N = 0``). ``KFAC`` then keeps, besides
its factors, the sums over the cycle's micro-batches of

- each (all-reduced) gradient ``g_k``, and
- each block's statistics ``Â_k`` and ``Ĝ_k`` (after the replica and loss
  scaling are undone),

and at the update uses their means ``ḡ = (1/N) Σ g_k``, ``Ā = (1/N) Σ Â_k``,
``Ḡ = (1/N) Σ Ĝ_k``: one factor update and one step of the optimizer with
those, the inverse refresh counted in updates. Each micro-batch's statistic
is already a per-example mean (``Ĝ`` rescales the upstream gradient of the
micro-batch's mean loss by its own size ``b``), so for ``N`` equal
micro-batches ``Ā`` and ``Ḡ`` are the statistics of the ``N·b`` batch and
the update is the one of that batch. Between updates the factors, the
refresh counter and the weights do not change: ``KFAC`` hands Keras's
accumulation ``N·Δ`` at the update and zeros before it, so Keras's own
``(Σ handed)/N`` is the step ``Δ`` of the mean gradient (its clipping and
weight decay apply once, as without accumulation).

The adaptive step and the sampled Fisher are refused: the adaptive step's
quadratic model needs the exact Gauss-Newton products of the *whole*
batch along the update, which is only known after the cycle's last
micro-batch, when the earlier micro-batches are gone (computing it on the
last micro-batch alone would be a different, noisier step); the sampled
Fisher draws its targets per step, on a cadence counted in steps.
"""

from keras import ops

from nnkit._keras import optimizer as keras_optimizer


def check(optimizer, steps=None):
    """Refuse the adaptive step and the sampled Fisher with accumulation (``ValueError``).

    ``steps``: the accumulation about to be set, or ``None`` for the optimizer's own.
    """
    steps = optimizer.gradient_accumulation_steps if steps is None else steps
    if not steps:
        return
    refused = []
    if optimizer.adaptive:
        refused.append("learning_rate='adaptive'")
    if optimizer.fisher == "sampled":
        refused.append("fisher='sampled'")
    if refused:
        raise ValueError(
            "KFAC accumulates its factors with the gradients only with a fixed learning rate "
            "and the empirical Fisher: the adaptive step's quadratic model needs the whole "
            "batch's curvature along the update, known only after the last micro-batch, and "
            "the sampled Fisher draws its targets per step. Use KFAC(learning_rate=<float or "
            "schedule>, fisher='empirical') with accumulation, or raise the batch size. "
            f"Received: {', '.join(refused)}, gradient_accumulation_steps={steps}"
        )


def is_update(optimizer):
    """Whether this micro-batch ends a cycle (a boolean tensor), by Keras's raw counter."""
    steps = optimizer.gradient_accumulation_steps
    raw = ops.convert_to_tensor(keras_optimizer.raw_iterations(optimizer))
    return ops.equal(ops.mod(raw + 1, steps), 0)


def mean_of_cycle(optimizer, total, value, update):
    """Add ``value`` to the sum variable ``total``; return the cycle's mean (valid at the update).

    The sum is reset at the update, so the next cycle starts from zero.
    """
    steps = optimizer.gradient_accumulation_steps
    summed = ops.convert_to_tensor(total) + ops.cast(value, total.dtype)
    optimizer.assign(total, ops.where(update, ops.zeros_like(summed), summed))
    return summed / float(steps)


def keep_unless(update, new, old):
    """``new`` at an update, else ``old`` (a variable's value kept between updates)."""
    return ops.where(update, new, ops.convert_to_tensor(old))


def handed(update, direction, steps):
    """What Keras's accumulation receives: ``N·Δ`` at the update, zeros before it."""
    return ops.where(update, direction * float(steps), ops.zeros_like(direction))
