"""Smooth L1 loss with PyTorch's semantics (``torch.nn.SmoothL1Loss``)."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.losses._base import LossBase, as_float_tensors, check_targets, match_rank


def _check_beta(beta):
    return v.check_non_negative_number("beta", beta)


def _smooth_l1(y_true, y_pred, beta):
    y_true, y_pred = match_rank(*as_float_tensors(y_true, y_pred))
    error = ops.abs(y_pred - y_true)
    if beta == 0.0:
        # The quadratic zone is empty: plain L1, without dividing by zero.
        elementwise = error
    else:
        elementwise = ops.where(error < beta, 0.5 * ops.square(error) / beta, error - 0.5 * beta)
    return ops.mean(elementwise, axis=-1)


@keras.saving.register_keras_serializable(package="nnkit")
def smooth_l1(y_true, y_pred, beta=1.0):
    """Smooth L1 loss per sample, averaged over the last axis.

    The functional form of ``SmoothL1``, for ``model.compile(loss=...)``
    or custom training steps; it applies no reduction over the batch.

    Formula, with ``x = y_pred - y_true`` elementwise:
    ``0.5 · x² / beta`` if ``|x| < beta``, else ``|x| - 0.5 · beta``
    (``|x|`` when ``beta == 0``), then the mean over the last axis.

    Args:
        y_true: Targets, shape ``(batch, ..., d)``. Required.
        y_pred: Predictions, the same shape as ``y_true`` (a trailing axis of
            size 1 on either one is matched as Keras's losses do). Required.
        beta: Where the loss turns from quadratic to linear, a finite number
            ``>= 0``; ``0`` gives the L1 (absolute) error. Defaults to ``1.0``.

    Returns:
        The loss per sample, shape ``(batch, ...)`` (``y_pred``'s shape
        without its last axis).

    Raises:
        TypeError: If ``beta`` is not a number (bools are rejected).
        ValueError: If ``beta`` is negative, NaN or inf.

    Example:
    >>> from nnkit.losses import smooth_l1
    >>> [round(float(x), 4) for x in smooth_l1([[0.0, 0.0]], [[0.5, 3.0]], beta=1.0)]
    [1.3125]
    """
    y_true, y_pred = check_targets(y_true, y_pred)
    return _smooth_l1(y_true, y_pred, _check_beta(beta))


@keras.saving.register_keras_serializable(package="nnkit")
class SmoothL1(LossBase):
    """Smooth L1 loss with PyTorch's semantics: quadratic near zero, L1 beyond ``beta``.

    Use it for regression targets with outliers, e.g. bounding-box regression
    in detectors (Fast/Faster R-CNN), or when porting a PyTorch model that
    uses ``torch.nn.SmoothL1Loss`` and its numbers should match.

    Formula, with ``x = y_pred - y_true`` elementwise::

        loss(x) = 0.5 · x² / beta     if |x| < beta
                  |x| - 0.5 · beta    otherwise          (|x| when beta == 0)

    averaged over the last axis to give one value per sample, then reduced
    over the batch by ``reduction`` with optional ``sample_weight`` (one weight
    per sample), as every Keras loss is.

    Relation to ``keras.losses.Huber(delta)``: for ``beta > 0``,
    ``SmoothL1(beta) = Huber(delta=beta) / beta``. Both switch from quadratic
    to linear at the same point, but the smooth L1 slope in the linear zone is
    1 (whatever ``beta``) while Huber's is ``delta``; with ``beta = 1`` the
    two are equal.

    Args:
        beta: Where the loss turns from quadratic to linear, a finite number
            ``>= 0``; ``0`` gives the L1 (mean absolute) error.
            Defaults to ``1.0``.
        reduction: How per-sample losses are combined: ``"sum_over_batch_size"``,
            ``"sum"``, ``"mean"``, ``"mean_with_sample_weight"``, ``"none"`` or
            ``None`` (Keras's meanings). Defaults to ``"sum_over_batch_size"``.
        name: Name of the loss, a non-empty string. Defaults to ``"smooth_l1"``.
        dtype: Dtype (or ``keras.DTypePolicy``) of the computation; ``None``
            uses ``keras.config.floatx()``. Defaults to ``None``.

    Raises:
        TypeError: If ``beta`` is not a number (bools are rejected), or
            ``name``/``dtype`` have the wrong type.
        ValueError: If ``beta`` is negative, NaN or inf, or ``reduction`` or
            ``dtype`` is not a known value.

    Example:
    >>> from nnkit.losses import SmoothL1
    >>> loss = SmoothL1(beta=1.0)
    >>> round(float(loss([[0.0], [0.0]], [[0.5], [3.0]])), 4)  # (0.125 + 2.5) / 2
    1.3125
    >>> [round(float(x), 4) for x in SmoothL1(0.0, reduction="none")([[0.0]], [[-2.0]])]
    [2.0]

    References:
        Girshick, "Fast R-CNN", ICCV 2015; PyTorch ``torch.nn.SmoothL1Loss``.
    """

    def __init__(self, beta=1.0, *, reduction="sum_over_batch_size", name="smooth_l1", dtype=None):
        self.beta = _check_beta(beta)
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        return _smooth_l1(y_true, y_pred, self.beta)

    def get_config(self):
        return {"beta": self.beta, **super().get_config()}
