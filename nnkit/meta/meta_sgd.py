"""Meta-SGD: MAML with learned inner learning rates."""

import keras

from nnkit import _validation as v
from nnkit._parameters import is_parameter, parameters
from nnkit.meta.learner import OPTIONS, MetaLearner, read
from nnkit.models._wrapper import keyword_only

#: ``rate_shape`` options: one rate per weight (the paper), or one per variable.
RATE_SHAPES = ("element", "variable")


@keras.saving.register_keras_serializable(package="nnkit")
class MetaSGD(MetaLearner):
    """Meta-SGD: MAML that also meta-learns the inner learning rates.

    Use it when one inner step size for every weight adapts poorly (some
    layers need larger steps than others, or a direction other than the
    gradient's): the inner rates α are trainable variables of the learner,
    started at ``inner_learning_rate`` and trained by the outer optimizer
    with the weights. ``rate_shape="element"`` learns one rate per weight
    (Li et al.); ``"variable"`` one per variable (kernel, bias, ...).

    Formula, one inner step, ``⊙`` the elementwise product::

        θ′_t = θ − α ⊙ ∇S_t(θ)
        meta-loss = mean_t Q_t(θ′_t)
        ∂/∂θ = mean_t (I − diag(α) ∇²S_t(θ)) ∇Q_t(θ′_t)
        ∂/∂α = −mean_t ∇S_t(θ) ⊙ ∇Q_t(θ′_t)

    ``first_order=True`` drops the Hessian term (the α gradient stays).
    The rates are not constrained: a rate may become negative.

    Args:
        model: The built ``keras.Model`` to meta-train. Required.
        inner_learning_rate: The initial inner rates, > 0.
            Keyword-only, as every option (by position: deprecated).
            Defaults to ``0.01``.
        inner_steps: Inner steps in training and evaluation, >= 1.
            Defaults to ``1``.
        first_order: Drop the second-order term. Defaults to ``False``.
        transductive: Query pass in training mode (see ``MAML``).
            Defaults to ``True``.
        rate_shape: ``"element"`` or ``"variable"``. Defaults to ``"element"``.
        **kwargs: ``keras.Model`` arguments (``name``, ...).

    Raises:
        TypeError: If ``model`` is not a ``keras.Model`` or an argument has
            the wrong type.
        ValueError: If ``model`` is not built or is a data-batch wrapper, ``rate_shape`` is unknown, or
            a number is out of range.

    Example:
    >>> import keras
    >>> from nnkit.meta import MetaSGD
    >>> net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> learner = MetaSGD(net, inner_learning_rate=0.05)
    >>> [tuple(rate.shape) for rate in learner.inner_rates]
    [(3, 2), (2,)]
    >>> float(learner.inner_rates[1].numpy()[0])
    0.05

    References:
        Li, Zhou, Chen and Li, "Meta-SGD: Learning to Learn Quickly for
        Few-Shot Learning", 2017 (arXiv:1707.09835).
    """

    @keyword_only(*OPTIONS, "rate_shape")
    def __init__(
        self,
        model,
        *,
        inner_learning_rate=0.01,
        inner_steps=1,
        first_order=False,
        transductive=True,
        rate_shape="element",
        **kwargs,
    ):
        super().__init__(
            model,
            inner_learning_rate=inner_learning_rate,
            inner_steps=inner_steps,
            first_order=first_order,
            transductive=transductive,
            **kwargs,
        )
        self.rate_shape = v.check_one_of("rate_shape", rate_shape, RATE_SHAPES)
        self.inner_rates = [
            # Trainable: the optimizer writes it after the all-reduce (any aggregation works).
            self.add_weight(
                shape=tuple(w.shape) if self.rate_shape == "element" else (),
                initializer=keras.initializers.Constant(self.inner_learning_rate),
                dtype=w.dtype,
                trainable=True,
                name=f"meta_sgd_rate_{index}",
                aggregation="none",
            )
            for index, w in enumerate(parameters(self.model))
        ]

    def _meta_rates(self):
        rates = iter(self.inner_rates)  # one per parameter; a statistics channel is not adapted
        return [
            read(next(rates)) if is_parameter(w) else None for w in self.model.trainable_variables
        ]

    def get_config(self):
        return {
            **super().get_config(),
            "first_order": self.first_order,
            "rate_shape": self.rate_shape,
        }
