"""Sparse categorical cross-entropy with label smoothing, without a one-hot target."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.losses._base import LossBase, check_targets


def _check_label_smoothing(label_smoothing):
    return v.check_number("label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)


def _check_axis(axis):
    return v.check_int("axis", axis)


def _log_probabilities(y_pred, from_logits):
    """``log p`` over the last axis; probabilities are renormalized and clipped as Keras does."""
    if from_logits:
        return ops.log_softmax(y_pred, axis=-1)
    probabilities = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
    epsilon = keras.config.epsilon()
    return ops.log(ops.clip(probabilities, epsilon, 1.0 - epsilon))


def _check_ignore_class(ignore_class):
    return v.check_optional_int("ignore_class", ignore_class)


def _labels(y_true, rank):
    """Integer labels with the shape of the per-sample loss (a trailing axis of 1 dropped)."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == rank and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, -1)  # (batch, 1) labels, as Keras accepts them
    return ops.cast(y_true, "int32")


def _valid(labels, ignore_class):
    return ops.not_equal(labels, ignore_class)


def _sparse_crossentropy(y_true, y_pred, from_logits, label_smoothing, axis, ignore_class=None):
    y_pred = ops.convert_to_tensor(y_pred)
    if not keras.backend.is_float_dtype(y_pred.dtype):
        y_pred = ops.cast(y_pred, keras.backend.floatx())
    if axis not in (-1, len(y_pred.shape) - 1):
        y_pred = ops.moveaxis(y_pred, axis, -1)
    labels = _labels(y_true, len(y_pred.shape))
    expected = tuple(y_pred.shape[:-1])
    if None not in expected and None not in labels.shape and tuple(labels.shape) != expected:
        raise ValueError(
            f"`y_true` must have the shape of `y_pred` without its class axis (axis={axis}): "
            f"{expected}, not {tuple(labels.shape)}. Received: axis={axis}, y_pred of shape "
            f"{tuple(y_pred.shape)} (class axis moved last)"
        )
    if ignore_class is not None:
        valid = _valid(labels, ignore_class)
        labels = ops.where(valid, labels, 0)
    log_p = _log_probabilities(y_pred, from_logits)
    true_class = ops.squeeze(ops.take_along_axis(log_p, ops.expand_dims(labels, -1), axis=-1), -1)
    if label_smoothing == 0.0:
        loss = -true_class
    else:
        # CE against the uniform distribution: -(1/C) Σ_k log p_k, no one-hot needed.
        uniform = ops.mean(log_p, axis=-1)
        loss = -(1.0 - label_smoothing) * true_class - label_smoothing * uniform
    if ignore_class is not None:
        loss = ops.where(valid, loss, ops.zeros_like(loss))
    return loss


def _ignored_weights(labels, valid, sample_weight, reduction, dtype):
    """Sample weights that leave ignored labels out, as Keras's masked reductions do.

    ``sum_over_batch_size``/``mean`` then average over the valid labels only
    (weight ``total / valid`` on each, ``0`` on ignored ones).
    """
    valid = ops.cast(valid, dtype)
    if reduction in ("mean", "sum_over_batch_size"):
        total = ops.cast(ops.size(valid), dtype)
        valid = valid * ops.divide_no_nan(total, ops.sum(valid))
    if sample_weight is None:
        return valid
    sample_weight = ops.cast(sample_weight, dtype)
    if len(sample_weight.shape) == len(valid.shape) + 1 and sample_weight.shape[-1] == 1:
        sample_weight = ops.squeeze(sample_weight, -1)
    return sample_weight * valid


@keras.saving.register_keras_serializable(package="nnkit")
def sparse_categorical_crossentropy(
    y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1, ignore_class=None
):
    """Sparse categorical cross-entropy per sample, with optional label smoothing.

    The functional form of `SparseCategoricalCrossentropy`; it
    applies no reduction over the batch.

    Formula, with ``C`` classes and ``log p`` the log-probabilities:
    ``-(1 - ε) · log p_y - ε · (1/C) Σ_k log p_k``.

    Args:
        y_true: Integer class indices, shape ``y_pred``'s without the class
            axis (a trailing axis of size 1 is accepted). Required.
        y_pred: Probabilities (``from_logits=False``) or logits. Required.
        from_logits: Whether ``y_pred`` holds logits. Defaults to ``False``.
        label_smoothing: ``ε`` in ``[0, 1]``. Defaults to ``0.0``.
        axis: The class axis of ``y_pred``. Defaults to ``-1``.
        ignore_class: A label whose samples get a loss of ``0`` (e.g. a
            padding or "void" class), or ``None``. Defaults to ``None``.

    Returns:
        The loss per sample, ``y_pred``'s shape without the class axis.

    Raises:
        TypeError: If ``label_smoothing`` is not a number or ``axis`` not an
            int (bools are rejected).
        ValueError: If ``label_smoothing`` is outside ``[0, 1]``, NaN or inf.

    Example:
    >>> import numpy as np
    >>> from nnkit.losses import sparse_categorical_crossentropy
    >>> logits = np.log([[0.5, 0.25, 0.25]]).astype("float32")
    >>> loss = sparse_categorical_crossentropy([0], logits, from_logits=True, label_smoothing=0.3)
    >>> round(float(loss[0]), 4)  # 0.7·(−log 0.5) + 0.3·(−(log 0.5 + 2 log 0.25) / 3)
    0.8318
    """
    y_true, y_pred = check_targets(y_true, y_pred)
    return _sparse_crossentropy(
        y_true,
        y_pred,
        v.check_bool("from_logits", from_logits),
        _check_label_smoothing(label_smoothing),
        _check_axis(axis),
        _check_ignore_class(ignore_class),
    )


@keras.saving.register_keras_serializable(package="nnkit")
class SparseCategoricalCrossentropy(LossBase):
    """Cross-entropy for integer labels with label smoothing: a drop-in for Keras's loss.

    Use it in place of ``keras.losses.SparseCategoricalCrossentropy`` (same
    arguments, plus ``label_smoothing``) to smooth the labels of a model
    trained on integer class indices, without converting them to one-hot
    vectors or rewriting the loss. Keras 3.15's sparse loss has no
    ``label_smoothing``; Keras 3.16 adds one. This class does not depend on
    it: it computes the formula below itself and gives the same result on
    both versions (with ``label_smoothing=0`` it equals Keras's loss). Its
    arguments and ``get_config()`` keys are Keras's (``from_logits``,
    ``ignore_class``, ``reduction``, ``name``, ``dtype``) plus
    ``label_smoothing`` and ``axis``, so a config saved from Keras's loss
    loads into this class, and this class's config into Keras 3.16's.

    Formula, with ``C`` classes, ``log p`` the log-softmax of the logits (or
    the log of the renormalized, clipped probabilities, as Keras computes
    it) and ``y`` the label::

        loss = (1 − ε) · CE(y) + ε · CE(uniform)
             = −(1 − ε) · log p_y − ε · (1/C) Σ_k log p_k

    which is the cross-entropy against the smoothed one-hot target
    ``(1 − ε) · onehot(y) + ε / C`` (what ``CategoricalCrossentropy``'s
    ``label_smoothing`` computes), without building the one-hot target:
    one gather and one mean over the class axis.

    Args:
        from_logits: Whether ``y_pred`` holds logits rather than
            probabilities. Defaults to ``False``.
        label_smoothing: ``ε``, a number in ``[0, 1]``; ``0`` is the plain
            sparse cross-entropy. Defaults to ``0.0``.
        axis: The class axis of ``y_pred``, an int. Defaults to ``-1``.
        ignore_class: A label to leave out of the loss (its samples count
            neither in the sum nor in the batch size, as in Keras), an int,
            or ``None``. Keyword-only. Defaults to ``None``.
        reduction: How per-sample losses are combined (Keras's meanings).
            Defaults to ``"sum_over_batch_size"``.
        name: Name of the loss. Defaults to
            ``"sparse_categorical_crossentropy"``.
        dtype: Dtype (or ``keras.DTypePolicy``) of the computation; ``None``
            uses ``keras.config.floatx()``. Defaults to ``None``.

    Raises:
        TypeError: If ``from_logits`` is not a bool, ``label_smoothing`` not
            a number or ``axis`` not an int, or ``name``/``dtype`` have the
            wrong type.
        ValueError: If ``label_smoothing`` is outside ``[0, 1]``, NaN or inf,
            or ``reduction``/``dtype`` is not a known value.

    Example:
    >>> import numpy as np
    >>> from nnkit.losses import SparseCategoricalCrossentropy
    >>> logits = np.array([[2.0, 0.0, 0.0]], "float32")
    >>> smoothed = SparseCategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    >>> log_p = logits[0] - np.log(np.exp(logits[0]).sum())
    >>> want = -(0.9 * log_p[0] + 0.1 * log_p.mean())
    >>> bool(np.isclose(float(smoothed([0], logits)), want, rtol=1e-6))
    True

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer
        Vision", CVPR 2016 (label smoothing); Müller, Kornblith & Hinton,
        "When Does Label Smoothing Help?", NeurIPS 2019.
    """

    def __init__(
        self,
        from_logits=False,
        label_smoothing=0.0,
        axis=-1,
        *,
        ignore_class=None,
        reduction="sum_over_batch_size",
        name="sparse_categorical_crossentropy",
        dtype=None,
    ):
        self.from_logits = v.check_bool("from_logits", from_logits)
        self.label_smoothing = _check_label_smoothing(label_smoothing)
        self.axis = _check_axis(axis)
        self.ignore_class = _check_ignore_class(ignore_class)
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if self.ignore_class is None:
            return super().__call__(y_true, y_pred, sample_weight=sample_weight)
        labels = _labels(y_true, len(y_pred.shape))
        weights = _ignored_weights(
            labels,
            _valid(labels, self.ignore_class),
            sample_weight,
            self.reduction,
            self.dtype or keras.backend.floatx(),
        )
        return super().__call__(y_true, y_pred, sample_weight=weights)

    def call(self, y_true, y_pred):
        return _sparse_crossentropy(
            y_true, y_pred, self.from_logits, self.label_smoothing, self.axis, self.ignore_class
        )

    def get_config(self):
        return {
            "from_logits": self.from_logits,
            "label_smoothing": self.label_smoothing,
            "axis": self.axis,
            "ignore_class": self.ignore_class,
            **super().get_config(),
        }
