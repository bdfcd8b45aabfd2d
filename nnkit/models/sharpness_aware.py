"""Sharpness-aware minimization (SAM, ASAM) as a model wrapper, for an unmodified ``fit``."""

import keras

from nnkit import _validation as v
from nnkit._backend import require_backend
from nnkit.models import _sam_step
from nnkit.models._wrapper import TrainingWrapper, keyword_only

#: Keras's names for additive offsets (``Dense``/``Conv`` ``bias``, normalization ``beta``).
_BIAS_NAMES = frozenset({"bias", "beta"})


@keras.saving.register_keras_serializable(package="nnkit")
class SharpnessAwareMinimization(TrainingWrapper):
    """Train ``model`` with sharpness-aware minimization (SAM) or adaptive SAM, in ``fit``.

    Use it when a model generalizes worse than its training loss suggests
    (over-parameterized networks, noisy labels): SAM looks for weights whose
    whole neighbourhood has a low loss rather than a sharp minimum. Wrap the
    model, then compile and fit the wrapper as usual, with any Keras
    optimizer (it is the "base" rule that applies SAM's gradient)::

        sam = SharpnessAwareMinimization(model, rho=0.05)
        sam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=..., metrics=...)
        sam.fit(x, y, ...)
        sam.model.save("model.keras")  # the plain model, for inference

    It is a ``keras.Model`` (as Keras 2's ``SharpnessAwareMinimization``
    was) because SAM needs the loss and the batch twice per step, which an
    optimizer never sees; ``predict``/``evaluate`` are the inner model's.
    nnkit's schedules, ``GradientNormMonitor`` and ``BackupAndRestore``
    work unchanged (the wrapper has the inner model's weights; the monitor
    reports the gradient the optimizer applies, ``g'`` below, not ``g``).

    Formula, per step, with ``L`` the training loss of the batch, ``w`` the
    parameters (the trainable weights less statistics channels such as
    K-FAC's factor statistics or a float8 layer's scales, which are neither
    perturbed nor part of ``‖·‖``) and ``T = diag(|w| + η)`` (``adaptive=True``,
    ASAM) or ``T = I``::

        g  = ∇L(w)
        ε  = ρ · T² g / ‖T g‖        (ρ · g / ‖g‖ for SAM; ‖·‖ over all parameters, + 1e-12)
        g' = ∇L(w + ε)
        w ← base_optimizer_update(w, g')

    Both gradients are computed inside the compiled train step (two
    forward and backward passes: about twice the cost of a plain step).
    The loss and metrics ``fit`` logs are those at ``w`` (the first pass).
    Batch normalization: its moving statistics are updated by the first
    pass only; the second pass normalizes with the batch's own statistics
    (training mode) and its updates are discarded, because it runs
    statelessly from the model's state as it was before the first pass
    (so dropout also draws the same masks in both passes).

    ``num_batch_splits = m`` (m-sharpness): the batch is split into ``m``
    contiguous parts; each part gets its own ``ε_i`` and ``g'_i``, and the
    update uses ``Σ_i (n_i / n) · g'_i`` (same cost: the passes run on
    parts). A batch of ``n < m`` rows (a short last batch) is split into
    ``n`` parts of one row each: ``min(m, n)`` parts, never an empty one.
    Under ``MirroredStrategy`` each replica computes ``ε`` from its
    own part of the global batch (no extra all-reduce; the original SAM
    implementation does the same per accelerator), so ``R`` replicas train
    exactly like one device with ``num_batch_splits = R · m``; only ``g'``
    is all-reduced, by the optimizer as usual. Under gradient accumulation
    over ``N`` micro-batches each micro-batch is a part of its own: the
    update is that of ``num_batch_splits = N · m`` on the ``N``-times larger
    batch.

    It overrides the wrappers' ``gradient_step`` hook, so in a chain of
    wrappers the gradient is sharpness-aware whatever the nesting order
    (``MixUp``), and ``MAML(SharpnessAwareMinimization(m))`` perturbs the
    weights against the meta-loss (a meta-learner adapts with its own
    compiled loss, so it goes outside).

    Args:
        model: The ``keras.Model`` to train. Required.
        rho: The neighbourhood radius ``ρ``, a finite number ``> 0``
            (typically 0.05 for SAM, 0.5 to 2 for adaptive SAM).
            Keyword-only (by position: deprecated). Defaults to ``0.05``.
        adaptive: Scale the perturbation by ``|w|`` (ASAM), which makes
            it invariant to rescaling a layer's weights. Keyword-only.
            Defaults to ``False``.
        num_batch_splits: ``m``, an int ``>= 1``: a perturbation per
            ``m``-th of the batch. Keyword-only. Defaults to ``1``.
        eta: ``η >= 0`` added to ``|w|`` in ``T`` (adaptive only). Kwon et
            al.'s formula has none; their official code adds ``η = 0.01``, so
            that weights at 0 are perturbed too. Keyword-only. Defaults to
            ``0.0`` (the paper's formula, which every figure nnkit reports
            was measured with; pass ``eta=0.01, scale_biases=False`` for the
            official code's variant, whose results the paper quotes).
        scale_biases: Whether biases (variables named ``bias`` or ``beta``)
            take ``T = |w| + η`` like the other weights (the paper's formula)
            or ``T = 1`` (the official code; zero-initialised biases are then
            perturbed from the first step). Adaptive only. Keyword-only.
            Defaults to ``True``.
        **kwargs: Model arguments (``name``, ``trainable``).

    Raises:
        TypeError: If ``model`` is not a ``keras.Model``, or an argument has
            the wrong type (bools are rejected where a number is expected).
        ValueError: If ``rho`` is not ``> 0`` or ``eta < 0`` (or either is NaN or inf),
            ``num_batch_splits < 1``, the backend is neither TensorFlow
            nor JAX, or ``model`` is a meta-learner (it trains on task
            batches: wrap the inner model instead, ``MAML(SharpnessAwareMinimization(m))``).

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.models import SharpnessAwareMinimization
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> sam = SharpnessAwareMinimization(model, rho=0.05)
    >>> sam.compile(keras.optimizers.SGD(0.1), loss="mse")
    >>> x, y = np.ones((8, 4), "float32"), np.zeros((8, 3), "float32")
    >>> history = sam.fit(x, y, batch_size=4, epochs=2, verbose=0)
    >>> int(sam.optimizer.iterations), bool(history.history["loss"][1] < history.history["loss"][0])
    (4, True)
    >>> sam.predict(x, verbose=0).shape  # the inner model's outputs
    (8, 3)

    References:
        Foret et al., "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", ICLR 2021; Kwon et al., "ASAM: Adaptive
        Sharpness-Aware Minimization for Scale-Invariant Learning of Deep
        Neural Networks", ICML 2021; Keras 2
        ``keras.models.experimental.SharpnessAwareMinimization``.
    """

    @keyword_only("rho")
    def __init__(
        self,
        model,
        *,
        rho=0.05,
        adaptive=False,
        num_batch_splits=1,
        eta=0.0,
        scale_biases=True,
        **kwargs,
    ):
        require_backend(
            "SharpnessAwareMinimization",
            ("tensorflow", "jax"),
            reason="its two gradient evaluations per step are written for their train steps",
        )
        rho = v.check_positive_number("rho", rho)
        adaptive = v.check_bool("adaptive", adaptive)
        num_batch_splits = v.check_positive_int("num_batch_splits", num_batch_splits)
        eta = v.check_non_negative_number("eta", eta)
        scale_biases = v.check_bool("scale_biases", scale_biases)
        super().__init__(model, **kwargs)
        self.eta = eta
        self.scale_biases = scale_biases
        self.rho = rho
        self.adaptive = adaptive
        self.num_batch_splits = num_batch_splits

    def gradient_step(self, trainer, *args):
        """The sharpness-aware step (see the class documentation) of ``trainer``'s loss."""
        return _sam_step.train_step(trainer, self, *args)

    def scaling(self):
        """``perturbation``'s adaptive options: ``η`` and which trainable variables take ``T = 1``."""
        unscaled = [
            not self.scale_biases and variable.name in _BIAS_NAMES
            for variable in self.trainable_variables
        ]
        return {"eta": self.eta, "unscaled": unscaled}

    def get_config(self):
        return {
            **super().get_config(),
            "rho": self.rho,
            "adaptive": self.adaptive,
            "num_batch_splits": self.num_batch_splits,
            "eta": self.eta,
            "scale_biases": self.scale_biases,
        }
