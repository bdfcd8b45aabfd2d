"""Weight penalties with their convention in the name: L1, L2 (Keras's) and WeightDecay (λ/2)."""

import keras
from keras import ops

from nnkit import _validation as v


@keras.saving.register_keras_serializable(package="nnkit")
class L1(keras.regularizers.Regularizer):
    """Add ``l1 · Σ|W|`` to the loss (lasso): pushes weights to exactly zero.

    Use it when you want sparse weights (feature selection, pruning
    candidates). For shrinking all weights smoothly use ``L2`` or
    ``WeightDecay``.

    Formula: ``penalty(W) = l1 · Σ |w_i|``; its (sub)gradient is
    ``l1 · sign(W)``, a constant pull of size ``l1`` towards zero whatever the
    weight's size. Same value as ``keras.regularizers.L1``.

    Args:
        l1: ``λ ≥ 0``, the penalty per unit of absolute weight, a finite
            number. Required.

    Raises:
        TypeError: If ``l1`` is not a number (bools are rejected).
        ValueError: If ``l1`` is negative, NaN or inf.

    Example:
    >>> import numpy as np
    >>> from nnkit.regularizers import L1
    >>> float(L1(0.1)(np.array([[1.0, -2.0], [0.5, 0.0]], "float32")))  # 0.1 · 3.5
    0.35

    References:
        Tibshirani, "Regression Shrinkage and Selection via the Lasso",
        JRSS-B 1996.
    """

    def __init__(self, l1):
        self.l1 = v.check_non_negative_number("l1", l1)

    def __call__(self, x):
        return self.l1 * ops.sum(ops.abs(x))

    def get_config(self):
        return {"l1": self.l1}


@keras.saving.register_keras_serializable(package="nnkit")
class L2(keras.regularizers.Regularizer):
    """Add ``l2 · Σ W²`` to the loss, Keras's convention (no ½): gradient ``2 · l2 · W``.

    Use it as a drop-in for ``keras.regularizers.L2`` (same value, same
    argument name) when you reproduce a Keras model or paper that states
    its regularization this way. When you think of the number as a "weight
    decay" (PyTorch, most papers: the gradient is ``λ · W``) use
    ``WeightDecay`` instead, which is exactly half of this penalty.

    Formula: ``penalty(W) = l2 · Σ w_i²``; gradient ``2 · l2 · W``. So
    ``L2(λ)`` equals ``WeightDecay(2λ)``, and with plain SGD it equals
    ``SGD(weight_decay=2λ)``.

    Args:
        l2: ``λ ≥ 0``, the coefficient of the squared norm, a finite number.
            Required.

    Raises:
        TypeError: If ``l2`` is not a number (bools are rejected).
        ValueError: If ``l2`` is negative, NaN or inf.

    Example:
    >>> import numpy as np
    >>> from nnkit.regularizers import L2
    >>> float(L2(0.1)(np.array([[1.0, -2.0], [0.5, 0.0]], "float32")))  # 0.1 · 5.25
    0.525

    References:
        Keras, ``keras.regularizers.L2``; Krogh & Hertz, "A Simple Weight
        Decay Can Improve Generalization", NeurIPS 1991.
    """

    def __init__(self, l2):
        self.l2 = v.check_non_negative_number("l2", l2)

    def __call__(self, x):
        return self.l2 * ops.sum(ops.square(x))

    def get_config(self):
        return {"l2": self.l2}


@keras.saving.register_keras_serializable(package="nnkit")
class WeightDecay(keras.regularizers.Regularizer):
    """Add ``weight_decay / 2 · Σ W²`` to the loss, so that its gradient is ``weight_decay · W``.

    Use it when the number you have is a weight decay in the usual sense
    (PyTorch's ``SGD(weight_decay=...)``, most papers: "weight decay 5e-4")
    and you want it coupled to the loss, e.g. with SGD. With Adam and other
    adaptive optimizers prefer decoupled weight decay (``keras.optimizers.AdamW``
    or any optimizer's ``weight_decay`` argument): a penalty's gradient is
    divided by Adam's running gradient scale, so weights with large
    gradients are barely decayed, which is what AdamW fixes.

    Formula: ``penalty(W) = weight_decay / 2 · Σ w_i²``; gradient
    ``weight_decay · W``. One step of ``SGD(learning_rate=η)`` (no momentum)
    then gives ``W ← W - η · (∇loss + weight_decay · W)``, exactly what
    ``SGD(learning_rate=η, weight_decay=weight_decay)`` does (Keras's
    decoupled decay subtracts ``η · weight_decay · W``). With momentum or
    Adam the two differ: the penalty's gradient goes through the
    momentum/adaptive scaling, decoupled decay does not.

    Args:
        weight_decay: ``λ ≥ 0``, the decay coefficient (the gradient is
            ``λ · W``), a finite number. Required.

    Raises:
        TypeError: If ``weight_decay`` is not a number (bools are rejected).
        ValueError: If ``weight_decay`` is negative, NaN or inf.

    Example:
    >>> import numpy as np
    >>> from nnkit.regularizers import WeightDecay
    >>> float(WeightDecay(0.1)(np.array([[1.0, -2.0], [0.5, 0.0]], "float32")))  # 0.1 / 2 · 5.25
    0.2625

    References:
        Hanson & Pratt, "Comparing Biases for Minimal Network Construction
        with Back-Propagation", NeurIPS 1988; Loshchilov & Hutter, "Decoupled
        Weight Decay Regularization", ICLR 2019.
    """

    def __init__(self, weight_decay):
        self.weight_decay = v.check_non_negative_number("weight_decay", weight_decay)

    def __call__(self, x):
        return (0.5 * self.weight_decay) * ops.sum(ops.square(x))

    def get_config(self):
        return {"weight_decay": self.weight_decay}
