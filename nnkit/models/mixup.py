"""MixUp and CutMix for inputs of any rank, as a train-step wrapper that keeps the user's loss."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.models import _mixing
from nnkit.models._wrapper import MixedTargets, TrainingWrapper, keyword_only


def _single_tensor(x):
    leaves = keras.tree.flatten(x)
    if len(leaves) != 1:
        raise ValueError(
            "MixUp(mode='cutmix') cuts a box out of one input tensor; this model takes "
            f"{len(leaves)} inputs. Use mode='mixup' for several inputs."
        )
    return leaves[0]


@keras.saving.register_keras_serializable(package="nnkit")
class MixUp(TrainingWrapper):
    """Train ``model`` on mixed pairs of examples (MixUp or CutMix), for inputs of any rank.

    Use it to regularize a classifier (or a regressor) by training on
    convex combinations of pairs of examples and of their targets. Wrap
    the model, then compile and fit the wrapper with the loss you already
    use, sparse integer labels included::

        mixed = MixUp(model, alpha=0.2)
        mixed.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        mixed.fit(x, y_int, ...)

    Unlike ``keras.layers.MixUp``/``CutMix`` (image preprocessing layers
    for rank-3/4 images with one-hot labels), it mixes inputs of any rank
    (tabular rank-2 batches, sequences, images, several inputs for
    ``"mixup"``) in the compiled train step, and it never asks for
    one-hot labels. ``predict``/``evaluate`` are the inner model's
    (evaluation is not mixed).

    Formula, once per batch: ``λ ~ Beta(α, α)`` and a random permutation
    ``π`` of the batch's rows; then

    - ``mode="mixup"``: ``x̃_i = λ · x_i + (1 − λ) · x_π(i)``;
    - ``mode="cutmix"``: ``x̃_i`` is ``x_i`` with a box from ``x_π(i)``
      pasted in. The box covers ``⌊L · (1 − λ)^(1/k)⌋`` positions around a
      uniform random centre along each of the ``k`` cut axes (every axis
      between the batch and the channel axis; the feature axis of a rank-2
      batch), clipped at the edges, and ``λ`` becomes the fraction of
      ``x_i`` left, ``1 − box volume / volume``.

    The targets of row ``i`` are ``y_i`` with weight ``λ`` and ``y_π(i)``
    with weight ``1 − λ``. The loss is the user's compiled loss ``ℓ``
    applied to each label set and mixed::

        loss = λ · ℓ(y, ŷ) + (1 − λ) · ℓ(y_π, ŷ)

    For a cross-entropy, which is linear in its target, this is exactly
    the cross-entropy against the soft target
    ``λ · onehot(y_i) + (1 − λ) · onehot(y_π(i))``: integer labels with
    ``sparse_categorical_crossentropy`` become soft targets without a
    one-hot tensor and without changing the loss. (For mean squared error
    the gradient equals that of the mixed target ``λ y_i + (1 − λ) y_π(i)``;
    the logged loss is higher by ``λ(1 − λ)(y_i − y_π(i))²``.) Training
    metrics are computed against the label set with the larger weight
    (``y`` when ``λ ≥ 1/2``, else ``y_π``), so ``"accuracy"`` is the
    accuracy on each mixed row's majority label.
    Sample weights follow their rows (``w_π(i)`` for the second set).

    Under ``MirroredStrategy`` each replica mixes the rows of its own part
    of the global batch, with the same ``λ`` on every replica (Keras seeds
    every replica alike). ``λ`` is drawn with Marsaglia and Tsang's gamma
    method, ``λ = G1 / (G1 + G2)``, written in ``keras.ops`` so the step
    also compiles under XLA. ``SharpnessAwareMinimization(MixUp(model))``
    computes both of SAM's passes on the same mixed batch.

    Args:
        model: The ``keras.Model`` to train. Required.
        alpha: ``α``, a finite number ``> 0`` (``0.2`` to ``0.4`` for
            MixUp, ``1.0`` for CutMix in the papers). Keyword-only (by
            position: deprecated). Defaults to ``0.2``.
        mode: ``"mixup"`` or ``"cutmix"``. Keyword-only.
            Defaults to ``"mixup"``.
        seed: An int ``>= 0`` seeding the draws of ``λ``, ``π`` and the box,
            or ``None`` for one drawn from the global seed. Keyword-only.
            Defaults to ``None``.
        **kwargs: Model arguments (``name``, ``trainable``).

    Raises:
        TypeError: If ``model`` is not a ``keras.Model`` or an argument has
            the wrong type; when training, if ``mode="mixup"`` meets an
            input that is not floating point.
        ValueError: If ``alpha`` is not ``> 0`` (or NaN, inf), ``mode`` is
            unknown, ``seed < 0``, or ``model`` is a meta-learner (it trains
            on task batches); when training, if the batch has no
            targets, or ``mode="cutmix"`` meets several inputs, an input of
            rank < 2 or one whose cut axes have no static size.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.models import MixUp
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> mixed = MixUp(model, alpha=0.4, seed=1)
    >>> x = np.eye(4, dtype="float32")
    >>> x_mixed, targets, _ = mixed.mix(x, np.arange(4))
    >>> lam, partner = float(targets.weight), np.asarray(targets.second)
    >>> bool(np.allclose(x_mixed, lam * x + (1 - lam) * x[partner], atol=1e-6))
    True
    >>> mixed.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> history = mixed.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    >>> sorted(history.history)
    ['loss']

    References:
        Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR
        2018; Yun et al., "CutMix: Regularization Strategy to Train Strong
        Classifiers with Localizable Features", ICCV 2019.
    """

    @keyword_only("alpha")
    def __init__(self, model, *, alpha=0.2, mode="mixup", seed=None, **kwargs):
        alpha = v.check_positive_number("alpha", alpha)
        mode = v.check_one_of("mode", mode, _mixing.MODES)
        seed = v.check_optional_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
        super().__init__(model, **kwargs)
        self.alpha = alpha
        self.mode = mode
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def mix(self, x, y, sample_weight=None):
        """Mix one batch: ``(x̃, targets, sample_weight)``, as the train step does.

        Draws ``λ``, ``π`` (and the box) from this wrapper's seed generator.
        ``targets`` is a named tuple ``(first, second, weight,
        second_sample_weight)``: ``y``, ``y[π]``, ``λ`` and the sample weights
        of ``y[π]`` (``None`` without weights); this wrapper's
        ``compute_loss`` and ``compute_metrics`` accept it as ``y``.

        Args:
            x: The inputs (a tensor, or a structure of them for
                ``mode="mixup"``). Required.
            y: The targets (any structure). Required.
            sample_weight: Per-row weights, or ``None``. Defaults to ``None``.

        Returns:
            The tuple ``(x̃, targets, sample_weight)``.

        Example:
        >>> import numpy as np
        >>> from nnkit.models import MixUp, mlp
        >>> cutmix = MixUp(mlp(8, [4]), alpha=1.0, mode="cutmix", seed=2)
        >>> x = np.repeat(np.arange(4, dtype="float32")[:, None], 8, axis=1)  # row i is all i
        >>> x_mixed, targets, _ = cutmix.mix(x, np.arange(4))
        >>> lam, partner = float(targets.weight), np.asarray(targets.second)
        >>> moved = partner != np.arange(4)  # rows paired with another row
        >>> kept = (np.asarray(x_mixed) == x)[moved].mean(axis=1)  # fraction of each row left
        >>> bool(moved.any() and np.allclose(kept, lam))
        True
        """
        if y is None:
            raise ValueError(
                "MixUp mixes inputs and targets, but the batch has no targets. "
                "Pass `y` to fit (or yield (x, y) pairs)."
            )
        first = keras.tree.flatten(x)[0]
        rows = ops.shape(first)[0]
        weight = _mixing.beta((), self.alpha, self.seed_generator)
        permutation = keras.random.shuffle(
            ops.arange(rows, dtype="int32"), seed=self.seed_generator
        )
        if self.mode == "mixup":
            for leaf in keras.tree.flatten(x):
                if not keras.backend.is_float_dtype(keras.backend.standardize_dtype(leaf.dtype)):
                    raise TypeError(
                        "MixUp(mode='mixup') interpolates inputs, which must be floating "
                        f"point. Received: an input of dtype {leaf.dtype}"
                    )
            mixed = _mixing.mixup_inputs(x, weight, permutation)
        else:
            tensor = _single_tensor(x)
            axes = _mixing.cut_axes(len(tensor.shape)) if len(tensor.shape) >= 2 else None
            if axes is None or any(tensor.shape[a] is None for a in axes):
                raise ValueError(
                    "MixUp(mode='cutmix') needs an input of rank >= 2 whose cut axes (all "
                    "but the batch and channel axes) have a static size. Received: input "
                    f"shape {tuple(tensor.shape)}"
                )
            centers = [
                keras.random.randint((), 0, tensor.shape[a], seed=self.seed_generator) for a in axes
            ]
            mixed_tensor, weight = _mixing.cutmix_inputs(tensor, weight, permutation, centers)
            mixed = keras.tree.pack_sequence_as(x, [mixed_tensor])
        second_weight = (
            None if sample_weight is None else _mixing.gather_rows(sample_weight, permutation)
        )
        targets = MixedTargets(y, _mixing.gather_rows(y, permutation), weight, second_weight)
        return mixed, targets, sample_weight

    def prepare_batch(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(super().prepare_batch(data))
        return keras.utils.pack_x_y_sample_weight(*self.mix(x, y, sample_weight))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "mode": self.mode, "seed": self.seed}
