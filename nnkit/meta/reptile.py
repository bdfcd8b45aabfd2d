"""Reptile: move the weights towards the weights adapted to each task."""

import keras
from keras import ops

from nnkit.meta.learner import MetaLearner


@keras.saving.register_keras_serializable(package="nnkit")
class Reptile(MetaLearner):
    """Reptile: first-order meta-learning by moving towards the task-adapted weights.

    Use it for the cheapest meta-learning step: no second derivatives, no
    gradient through the inner loop, and the query set is not needed for the
    update (it is only scored). Each task runs ``inner_steps`` steps of SGD
    on its support set; the weights then move a fraction ε of the way
    towards the average adapted weights. Compile with
    ``keras.optimizers.SGD(learning_rate=ε)`` for exactly the update below;
    another optimizer (Adam, momentum) treats ``θ − mean_t θ′_t`` as the
    gradient.

    Formula, with θ′_t the weights after ``inner_steps`` inner SGD steps on
    task ``t`` from θ (rate α)::

        g = θ − mean_t θ′_t                 (what the optimizer receives)
        θ ← θ − ε g = θ + ε (mean_t θ′_t − θ)

    The loss logged by ``fit`` is the query loss after adaptation; the
    update itself adds nothing to it (a zero-valued surrogate whose gradient
    is ``g``).

    Args:
        model: The built ``keras.Model`` to meta-train. Required.
        inner_learning_rate: The inner SGD step size α, > 0. Defaults to ``0.01``.
        inner_steps: Inner steps in training and evaluation, >= 1.
            Defaults to ``5``.
        transductive: Query pass in training mode (see ``MAML``).
            Defaults to ``True``.
        **kwargs: ``keras.Model`` arguments (``name``, ...).

    Raises:
        RuntimeError: On a backend other than TensorFlow and JAX.
        TypeError: If ``model`` is not a ``keras.Model`` or an argument has
            the wrong type.
        ValueError: If ``model`` is not built or is a data-batch wrapper
            (``SharpnessAwareMinimization``, ``MixUp``), or a number is out
            of range.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.meta import Reptile, sinusoid_family
    >>> keras.utils.set_random_seed(0)
    >>> net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(8, "relu"),
    ...                         keras.layers.Dense(1)])
    >>> reptile = Reptile(net, inner_learning_rate=0.02, inner_steps=3)
    >>> reptile.compile(keras.optimizers.SGD(learning_rate=0.5), loss="mse")
    >>> tasks, y_query = sinusoid_family().sample(4, seed=0)
    >>> before = [w.numpy() for w in net.trainable_variables]
    >>> _ = reptile.fit(tasks, y_query, batch_size=4, verbose=0)
    >>> any(not np.allclose(b, w.numpy()) for b, w in zip(before, net.trainable_variables))
    True

    References:
        Nichol, Achiam and Schulman, "On First-Order Meta-Learning
        Algorithms", 2018 (arXiv:1803.02999).
    """

    def __init__(self, model, inner_learning_rate=0.01, inner_steps=5, transductive=True, **kwargs):
        super().__init__(
            model,
            inner_learning_rate=inner_learning_rate,
            inner_steps=inner_steps,
            first_order=True,
            transductive=transductive,
            **kwargs,
        )

    def _meta_start(self, params):
        return [ops.stop_gradient(p) for p in params]

    def _meta_outputs(self, params, adapted, y_pred, training):
        if training:
            # Σ θ·sg(θ − θ̄′) − sg(Σ θ·(θ − θ̄′)): zero, with gradient θ − θ̄′.
            surrogate = ops.zeros((), params[0].dtype)
            for theta, per_task in zip(params, adapted, strict=True):
                direction = ops.stop_gradient(theta - ops.mean(per_task, axis=0))
                term = ops.sum(theta * direction)
                surrogate = surrogate + term - ops.stop_gradient(term)
            self.add_loss(surrogate)
        return y_pred
