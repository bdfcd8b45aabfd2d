"""The base class shared by every nnkit loss, and small shape helpers.

``LossBase`` adds to ``keras.losses.Loss`` what nnkit's conventions ask for:
``name``, ``reduction`` and ``dtype`` are checked in ``__init__`` and all three
are in ``get_config()`` as plain JSON (Keras's base class leaves ``dtype``
out). Reductions and sample weights are Keras's own: a subclass's ``call``
returns one value per sample and ``keras.losses.Loss.__call__`` weights and
reduces them.
"""

import keras
from keras import ops

from nnkit import _validation as v

REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None)


def _check_reduction(reduction):
    if not (reduction is None or isinstance(reduction, str)) or reduction not in REDUCTIONS:
        options = ", ".join(repr(r) for r in REDUCTIONS)
        raise ValueError(f"`reduction` must be one of {options}. Received: reduction={reduction!r}")
    return reduction


def _check_dtype(dtype):
    """``None``, a dtype/policy name, or a ``keras.DTypePolicy``; returned as JSON."""
    if dtype is None:
        return None
    if isinstance(dtype, keras.DTypePolicy):
        return dtype.name
    if not isinstance(dtype, str):
        raise TypeError(
            "`dtype` must be None, a dtype name such as 'float32' or a keras.DTypePolicy, "
            f"not {type(dtype).__name__}. Received: dtype={dtype!r}"
        )
    try:
        keras.dtype_policies.get(dtype)
    except ValueError as error:
        raise ValueError(
            "`dtype` must name a float dtype or a mixed-precision policy such as 'float32' "
            f"or 'mixed_float16'. Received: dtype={dtype!r}"
        ) from error
    return dtype


class LossBase(keras.losses.Loss):
    """Base class: a ``keras.losses.Loss`` whose config holds every argument.

    Subclasses implement ``call(y_true, y_pred)`` with ``keras.ops``, returning
    one loss value per sample, and add their own arguments to ``get_config()``.
    """

    def __init__(self, *, reduction, name, dtype):
        if name is not None:
            v.check_str("name", name)
        self._dtype_arg = _check_dtype(dtype)
        super().__init__(name=name, reduction=_check_reduction(reduction), dtype=self._dtype_arg)

    def get_config(self):
        return {"reduction": self.reduction, "name": self.name, "dtype": self._dtype_arg}

    def __repr__(self):
        args = ", ".join(f"{k}={val!r}" for k, val in self.get_config().items())
        return f"{type(self).__name__}({args})"


def match_rank(y_true, y_pred):
    """Make ranks equal when they differ by a trailing axis of size 1.

    Same rule as Keras's built-in losses: a rank-1 tensor gains a trailing
    axis, otherwise the trailing axis of size 1 is dropped, so ``(batch,)``
    against ``(batch, 1)`` gives ``(batch, 1)`` for both.
    """
    true_rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if pred_rank == true_rank + 1 and y_pred.shape[-1] == 1:
        if true_rank == 1:
            y_true = ops.expand_dims(y_true, -1)
        else:
            y_pred = ops.squeeze(y_pred, -1)
    elif true_rank == pred_rank + 1 and y_true.shape[-1] == 1:
        if pred_rank == 1:
            y_pred = ops.expand_dims(y_pred, -1)
        else:
            y_true = ops.squeeze(y_true, -1)
    return y_true, y_pred


def check_targets(y_true, y_pred):
    """``(y_true, y_pred)`` if both are arrays or tensors; a named TypeError otherwise."""
    return v.check_data("y_true", y_true), v.check_data("y_pred", y_pred)


def as_float_tensors(y_true, y_pred):
    """``y_pred`` as a float tensor (float32 unless already floating) and ``y_true`` in its dtype."""
    y_pred = ops.convert_to_tensor(y_pred)
    if not keras.backend.is_float_dtype(y_pred.dtype):
        y_pred = ops.cast(y_pred, keras.backend.floatx())
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    return y_true, y_pred
