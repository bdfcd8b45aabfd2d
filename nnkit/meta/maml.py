"""MAML: model-agnostic meta-learning, second or first order."""

import keras

from nnkit.meta.learner import MetaLearner


@keras.saving.register_keras_serializable(package="nnkit")
class MAML(MetaLearner):
    """Model-agnostic meta-learning: weights from which a few gradient steps fit a new task.

    Use it when tasks come from a family (functions, classes of images) and
    a new task has only a few labelled examples: ``fit`` on a dataset of
    tasks learns initial weights θ such that ``inner_steps`` steps of
    gradient descent on a task's support set give low loss on its query set.
    ``first_order=True`` is first-order MAML (FOMAML): cheaper, often nearly
    as good. Compile with the outer optimizer and the task loss; ``adapt``
    returns a model fitted to a new task.

    Formula, for task ``t`` with support loss ``S_t`` and query loss
    ``Q_t``, inner rate α and one inner step::

        θ′_t = θ − α ∇S_t(θ)
        meta-loss   = mean_t Q_t(θ′_t)
        meta-grad   = mean_t (I − α ∇²S_t(θ)) ∇Q_t(θ′_t)     (second order)
        meta-grad   = mean_t ∇Q_t(θ′_t)                      (first order)

    With K steps the product of the K factors ``(I − α ∇²S_t(θ_k))``
    appears. The outer optimizer applies the meta-gradient. Second order
    backpropagates through the inner gradients: its memory grows with
    ``inner_steps`` (see ``docs/meta-learning.md``).

    Args:
        model: The built ``keras.Model`` to meta-train. Required.
        inner_learning_rate: The inner step size α, > 0. Defaults to ``0.01``.
        inner_steps: Inner steps K in training and evaluation, >= 1
            (``adapt`` and ``predict_adapted`` take other counts). Defaults
            to ``1``.
        first_order: Drop the second-order term (FOMAML). Defaults to ``False``.
        transductive: Run the query pass in training mode (batch norm uses
            the query set's statistics; dropout is on); ``False``: inference
            mode with moving statistics. Support passes always run in
            training mode. Defaults to ``True``.
        **kwargs: ``keras.Model`` arguments (``name``, ...).

    Raises:
        RuntimeError: On a backend other than TensorFlow and JAX.
        TypeError: If ``model`` is not a ``keras.Model`` or an argument has
            the wrong type.
        ValueError: If ``model`` is not built, is a data-batch wrapper
            (``SharpnessAwareMinimization``, ``MixUp``), or a number is out
            of range.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.meta import MAML, sinusoid_family
    >>> keras.utils.set_random_seed(0)
    >>> net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(8, "relu"),
    ...                         keras.layers.Dense(1)])
    >>> maml = MAML(net, inner_learning_rate=0.01)
    >>> maml.compile(keras.optimizers.Adam(1e-3), loss="mse")
    >>> tasks, y_query = sinusoid_family(shots=5, queries=5).sample(8, seed=0)
    >>> tasks["x_support"].shape, maml.predict(tasks, verbose=0).shape
    ((8, 5, 1), (8, 5, 1))
    >>> history = maml.fit(tasks, y_query, batch_size=4, epochs=1, verbose=0)
    >>> adapted = maml.adapt(tasks["x_support"][0], tasks["y_support"][0], steps=2)
    >>> adapted.predict(tasks["x_query"][0], verbose=0).shape
    (5, 1)

    References:
        Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast
        Adaptation of Deep Networks", ICML 2017 (first order: section 5.2).
    """

    def __init__(
        self,
        model,
        inner_learning_rate=0.01,
        inner_steps=1,
        first_order=False,
        transductive=True,
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

    def get_config(self):
        return {**super().get_config(), "first_order": self.first_order}
