"""Contrastive loss on pair distances (Hadsell, Chopra & LeCun, 2006)."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.losses._base import LossBase, as_float_tensors, check_targets, match_rank


def _check_margin(margin):
    return v.check_non_negative_number("margin", margin)


def _contrastive(y_true, y_pred, margin):
    y_true, y_pred = match_rank(*as_float_tensors(y_true, y_pred))
    pull = ops.square(y_pred)
    push = ops.square(ops.maximum(margin - y_pred, 0.0))
    elementwise = y_true * pull + (1.0 - y_true) * push
    if len(elementwise.shape) > 1:
        return ops.mean(elementwise, axis=-1)
    return elementwise


@keras.saving.register_keras_serializable(package="nnkit")
def contrastive_loss(y_true, y_pred, margin=1.0):
    """Contrastive loss per pair, from pair labels and pair distances.

    The functional form of ``ContrastiveLoss``; it applies no reduction
    over the batch.

    Formula, with ``y`` the pair label and ``d`` the distance:
    ``y · d² + (1 - y) · max(margin - d, 0)²``.

    Args:
        y_true: Pair labels, ``1`` for a similar pair and ``0`` for a
            dissimilar one, shape ``(batch,)`` or ``(batch, 1)``. Required.
        y_pred: Distances between the two embeddings of each pair (``>= 0``),
            the same shape as ``y_true``. Required.
        margin: Distance beyond which a dissimilar pair costs nothing, a
            finite number ``>= 0``. Defaults to ``1.0``.

    Returns:
        The loss per pair, shape ``(batch,)``. Rank-1 inputs are already one
        value per pair; inputs of rank 2 or more are averaged over the last
        axis, as Keras's losses do.

    Raises:
        TypeError: If ``margin`` is not a number (bools are rejected).
        ValueError: If ``margin`` is negative, NaN or inf.

    Example:
    >>> from nnkit.losses import contrastive_loss
    >>> [round(float(x), 4) for x in contrastive_loss([1, 0, 0], [0.5, 0.25, 2.0])]
    [0.25, 0.5625, 0.0]
    """
    y_true, y_pred = check_targets(y_true, y_pred)
    return _contrastive(y_true, y_pred, _check_margin(margin))


@keras.saving.register_keras_serializable(package="nnkit")
class ContrastiveLoss(LossBase):
    """Contrastive loss: pull similar pairs together, push dissimilar pairs past a margin.

    Use it to train a siamese network on labelled pairs: the model outputs the
    distance between the two embeddings of a pair (for example the Euclidean
    norm of their difference) and ``y_true`` says whether the pair is similar.
    For batches of labelled single samples, where pairs and triplets are mined
    within the batch, use ``TripletLoss`` instead. This is the loss that
    ``tfa.losses.ContrastiveLoss`` computed, with the same arguments.

    Formula, with ``y`` the pair label (1 similar, 0 dissimilar) and ``d`` the
    distance::

        loss = y · d² + (1 - y) · max(margin - d, 0)²

    one value per pair (inputs of rank 2 or more are averaged over the last
    axis), then reduced over the batch by ``reduction`` with optional
    ``sample_weight`` (one weight per pair). Labels between 0 and 1 mix the
    two terms linearly.

    Args:
        margin: Distance beyond which a dissimilar pair costs nothing, a
            finite number ``>= 0``; ``0`` leaves only the pull on similar
            pairs. Defaults to ``1.0``.
        reduction: How per-pair losses are combined: ``"sum_over_batch_size"``,
            ``"sum"``, ``"mean"``, ``"mean_with_sample_weight"``, ``"none"`` or
            ``None`` (Keras's meanings). Defaults to ``"sum_over_batch_size"``.
        name: Name of the loss, a non-empty string.
            Defaults to ``"contrastive_loss"``.
        dtype: Dtype (or ``keras.DTypePolicy``) of the computation; ``None``
            uses ``keras.config.floatx()``. Defaults to ``None``.

    Raises:
        TypeError: If ``margin`` is not a number (bools are rejected), or
            ``name``/``dtype`` have the wrong type.
        ValueError: If ``margin`` is negative, NaN or inf, or ``reduction`` or
            ``dtype`` is not a known value.

    Example:
    >>> from nnkit.losses import ContrastiveLoss
    >>> loss = ContrastiveLoss(margin=1.0)
    >>> round(float(loss([1, 0], [0.5, 0.25])), 4)  # (0.5² + 0.75²) / 2
    0.4062

    References:
        Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an
        Invariant Mapping", CVPR 2006; ``tfa.losses.ContrastiveLoss``.
    """

    def __init__(
        self, margin=1.0, *, reduction="sum_over_batch_size", name="contrastive_loss", dtype=None
    ):
        self.margin = _check_margin(margin)
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        return _contrastive(y_true, y_pred, self.margin)

    def get_config(self):
        return {"margin": self.margin, **super().get_config()}
