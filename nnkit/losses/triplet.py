"""Triplet loss with semi-hard or hard mining within the batch (FaceNet; Hermans et al.)."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.losses._base import LossBase, check_targets
from nnkit.losses._distance import DISTANCES, pairwise_distance

MININGS = ("semi_hard", "hard")


def _check_args(margin, mining, distance, soft):
    return (
        v.check_non_negative_number("margin", margin),
        v.check_one_of("mining", mining, MININGS),
        v.check_one_of("distance", distance, DISTANCES),
        v.check_bool("soft", soft),
    )


def _labels_and_embeddings(y_true, y_pred):
    embeddings = ops.convert_to_tensor(y_pred)
    labels = ops.convert_to_tensor(y_true)
    if len(embeddings.shape) != 2:
        raise ValueError(
            "`y_pred` must be embeddings of shape (batch, dim). "
            f"Received: y_pred.shape={tuple(embeddings.shape)}"
        )
    rank = len(labels.shape)
    if rank not in (1, 2) or (rank == 2 and labels.shape[-1] not in (1, None)):
        raise ValueError(
            "`y_true` must be class labels of shape (batch,) or (batch, 1). "
            f"Received: y_true.shape={tuple(labels.shape)}"
        )
    if not keras.backend.is_float_dtype(embeddings.dtype):
        embeddings = ops.cast(embeddings, keras.backend.floatx())
    if keras.backend.standardize_dtype(embeddings.dtype) in ("float16", "bfloat16"):
        # Mining compares distances; half precision makes ties and wrong picks common.
        embeddings = ops.cast(embeddings, "float32")
    return ops.reshape(labels, (-1,)), embeddings


def _masked_min(values, mask, axis):
    """Min of ``values`` where ``mask`` holds, and whether any did (0 where none)."""
    found = ops.any(mask, axis=axis)
    smallest = ops.min(ops.where(mask, values, float("inf")), axis=axis)
    return ops.where(found, smallest, 0.0), found


def _masked_max(values, mask, axis):
    """Max of ``values`` where ``mask`` holds, and whether any did (0 where none)."""
    found = ops.any(mask, axis=axis)
    largest = ops.max(ops.where(mask, values, float("-inf")), axis=axis)
    return ops.where(found, largest, 0.0), found


def _triplet(y_true, y_pred, margin, mining, distance, soft):
    labels, embeddings = _labels_and_embeddings(y_true, y_pred)
    d = pairwise_distance(embeddings, distance)  # d[a, j]
    index = ops.arange(ops.shape(labels)[0])
    same = ops.expand_dims(labels, 1) == ops.expand_dims(labels, 0)
    positive = same & (ops.expand_dims(index, 1) != ops.expand_dims(index, 0))  # [a, p]
    negative = ops.logical_not(same)  # [a, n]
    hinge = ops.softplus if soft else (lambda x: ops.maximum(x, 0.0))

    if mining == "hard":
        hardest_positive, has_positive = _masked_max(d, positive, axis=1)
        hardest_negative, has_negative = _masked_min(d, negative, axis=1)
        per_anchor = hinge(hardest_positive - hardest_negative + margin)
    else:
        largest_negative, has_negative = _masked_max(d, negative, axis=1)  # [a]
        d_ap = ops.expand_dims(d, 2)  # [a, p, 1]
        d_an = ops.expand_dims(d, 1)  # [a, 1, n]
        farther = ops.expand_dims(negative, 1) & (d_an > d_ap)  # [a, p, n]
        semi_hard, found = _masked_min(d_an, farther, axis=2)  # [a, p]
        chosen = ops.where(found, semi_hard, ops.expand_dims(largest_negative, 1))
        per_pair = ops.where(positive, hinge(d - chosen + margin), 0.0)
        positives = ops.sum(ops.cast(positive, d.dtype), axis=1)
        has_positive = positives > 0
        per_anchor = ops.sum(per_pair, axis=1) / ops.maximum(positives, 1.0)
    return ops.where(has_positive & has_negative, per_anchor, 0.0)


@keras.saving.register_keras_serializable(package="nnkit")
def triplet_loss(
    y_true, y_pred, margin=1.0, *, mining="semi_hard", distance="euclidean", soft=False
):
    """Triplet loss per anchor, with triplets mined within the batch.

    The functional form of ``TripletLoss`` (see there for the mining
    rules and edge cases); it applies no reduction over the batch and compares
    labels in their own dtype.

    Formula, per anchor ``a`` with a valid triplet:
    ``h(d(a, p) - d(a, n) + margin)``, ``h(x) = max(x, 0)`` (``softplus(x)``
    when ``soft``), averaged over ``a``'s positives for ``"semi_hard"``; 0 for
    anchors without a positive or a negative in the batch.

    Args:
        y_true: Integer class labels, shape ``(batch,)`` or ``(batch, 1)``.
            Required.
        y_pred: Embeddings, shape ``(batch, dim)``. Required.
        margin: The gap wanted between positive and negative distances, a
            finite number ``>= 0``. Defaults to ``1.0``.
        mining: ``"semi_hard"`` or ``"hard"``. Defaults to ``"semi_hard"``.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
            Defaults to ``"euclidean"``.
        soft: Use ``softplus`` instead of the hinge. Defaults to ``False``.

    Returns:
        The loss per anchor, shape ``(batch,)``.

    Raises:
        TypeError: If an argument has the wrong type (bools are rejected as
            numbers).
        ValueError: If ``margin`` is negative, NaN or inf, ``mining`` or
            ``distance`` is unknown, or the inputs have the wrong rank.

    Example:
    >>> from nnkit.losses import triplet_loss
    >>> labels = [0, 0, 1]
    >>> embeddings = [[0.0, 0.0], [0.0, 1.0], [0.0, 3.0]]
    >>> [round(float(x), 4) for x in triplet_loss(labels, embeddings, mining="hard")]
    [0.0, 0.0, 0.0]
    >>> [round(float(x), 4) for x in triplet_loss(labels, embeddings, margin=2.5, mining="hard")]
    [0.5, 1.5, 0.0]
    """
    y_true, y_pred = check_targets(y_true, y_pred)
    return _triplet(y_true, y_pred, *_check_args(margin, mining, distance, soft))


@keras.saving.register_keras_serializable(package="nnkit")
class TripletLoss(LossBase):
    """Triplet loss that mines semi-hard or hard triplets within each batch.

    Use it to learn embeddings from class labels alone (face or person
    re-identification, image retrieval, few-shot learning): ``y_true`` holds
    integer class labels and ``y_pred`` the embeddings, and every sample of
    the batch serves as an anchor, with positives (same label) and negatives
    (other labels) found among the others. Batches of P classes × K samples
    give every anchor a positive and a negative. It replaces
    ``tfa.losses.TripletSemiHardLoss`` (``mining="semi_hard"``) and
    ``tfa.losses.TripletHardLoss`` (``mining="hard"``). For labelled pairs
    use ``ContrastiveLoss``.

    Formula, with ``d`` the chosen distance and ``h(x) = max(x, 0)``
    (``softplus(x) = log(1 + eˣ)`` when ``soft=True``)::

        hard:       loss(a) = h(max_p d(a, p) - min_n d(a, n) + margin)
        semi_hard:  loss(a) = mean_p h(d(a, p) - d(a, n*(a, p)) + margin)

    where ``p`` runs over ``a``'s positives and ``n`` over its negatives. The
    semi-hard negative ``n*(a, p)`` is the closest negative that is farther
    than the positive (``d(a, n) > d(a, p)``); when every negative is closer,
    the farthest negative is used (the FaceNet rule, as in tfa). ``"euclidean"``
    is ``‖a - b‖`` (with a gradient of 0 where two embeddings coincide),
    ``"squared_euclidean"`` is ``‖a - b‖²`` and ``"cosine"`` is ``1 - cos(a, b)``.

    Edge cases: an anchor with no positive (it is alone in its class) or no
    negative (the batch holds one class) has no triplet and loss 0, so a
    single-sample or single-class batch gives 0 with zero gradients. When
    every embedding is equal, each valid anchor costs ``h(margin)``.

    Reduction and sample weights: the per-anchor losses are reduced by
    ``reduction`` like any Keras loss, and ``sample_weight`` weights each
    anchor (it does not stop a sample from being mined as a positive or a
    negative for other anchors). Anchors without a triplet count in the
    ``"sum_over_batch_size"`` denominator. tfa instead averaged the semi-hard
    loss over anchor-positive pairs; in P × K batches the two are equal.
    ``keras.losses.Loss`` casts labels to the loss dtype first, so labels
    must be exactly representable in it: below 2**24 in float32 (2**11 in
    float16).

    Args:
        margin: The gap wanted between positive and negative distances, a
            finite number ``>= 0``. Defaults to ``1.0``.
        mining: ``"semi_hard"`` (FaceNet) or ``"hard"`` (batch-hard: the
            farthest positive and the closest negative of each anchor).
            Defaults to ``"semi_hard"``.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``
            (tfa's ``"L2"``, ``"squared-L2"`` and ``"angular"``).
            Defaults to ``"euclidean"``.
        soft: Replace the hinge by ``softplus``, which never reaches 0 and so
            keeps pulling; tfa's soft margin is ``soft=True, margin=0.0``.
            Defaults to ``False``.
        reduction: How per-anchor losses are combined: ``"sum_over_batch_size"``,
            ``"sum"``, ``"mean"``, ``"mean_with_sample_weight"``, ``"none"`` or
            ``None`` (Keras's meanings). Defaults to ``"sum_over_batch_size"``.
        name: Name of the loss, a non-empty string. Defaults to ``"triplet_loss"``.
        dtype: Dtype (or ``keras.DTypePolicy``) of the result; ``None`` uses
            ``keras.config.floatx()``. Half-precision embeddings are mined in
            float32. Defaults to ``None``.

    Raises:
        TypeError: If ``margin`` is not a number or ``soft`` not a bool, or
            ``name``/``dtype`` have the wrong type.
        ValueError: If ``margin`` is negative, NaN or inf, ``mining``,
            ``distance``, ``reduction`` or ``dtype`` is not a known value, or
            (when called) the inputs do not have the shapes above.

    Example:
    >>> from nnkit.losses import TripletLoss
    >>> labels = [0, 0, 1, 1]
    >>> embeddings = [[0.0], [1.0], [1.5], [4.0]]  # one-dimensional, to check by hand
    >>> semi_hard = TripletLoss(margin=1.0, reduction="none")
    >>> [round(float(x), 4) for x in semi_hard(labels, embeddings)]
    [0.5, 0.0, 2.0, 0.5]
    >>> hard = TripletLoss(margin=1.0, mining="hard", reduction="none")
    >>> [round(float(x), 4) for x in hard(labels, embeddings)]
    [0.5, 1.5, 3.0, 0.5]
    >>> round(float(TripletLoss(margin=1.0)(labels, embeddings)), 4)  # mean over anchors
    0.75

    References:
        Schroff, Kalenichenko & Philbin, "FaceNet: A Unified Embedding for Face
        Recognition and Clustering", CVPR 2015; Hermans, Beyer & Leibe, "In
        Defense of the Triplet Loss for Person Re-Identification", 2017;
        ``tfa.losses.TripletSemiHardLoss`` and ``tfa.losses.TripletHardLoss``.
    """

    def __init__(
        self,
        margin=1.0,
        *,
        mining="semi_hard",
        distance="euclidean",
        soft=False,
        reduction="sum_over_batch_size",
        name="triplet_loss",
        dtype=None,
    ):
        self.margin, self.mining, self.distance, self.soft = _check_args(
            margin, mining, distance, soft
        )
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        per_anchor = _triplet(y_true, y_pred, self.margin, self.mining, self.distance, self.soft)
        return ops.cast(per_anchor, self.dtype)

    def get_config(self):
        return {
            "margin": self.margin,
            "mining": self.mining,
            "distance": self.distance,
            "soft": self.soft,
            **super().get_config(),
        }
