"""ANIL: MAML that adapts only the head's variables."""

import keras

from nnkit import _validation as v
from nnkit.meta.learner import MetaLearner


def _check_head(model, head):
    names = [head] if isinstance(head, str) else head
    if isinstance(names, (bytes, dict)) or not hasattr(names, "__iter__"):
        raise TypeError(
            f"`head` must be a layer name or a list of layer names. Received: head={head!r}"
        )
    names = [v.check_str(f"head[{i}]", name) for i, name in enumerate(names)]
    if not names:
        raise ValueError("`head` must name at least one layer. Received: head=[]")
    known = [layer.name for layer in model.layers]
    ids = set()
    for name in names:
        if name not in known:
            raise ValueError(
                f"`head` names a layer that is not in the model: {name!r}. The model's "
                f"layers: {known}. Received: head={head!r}"
            )
        trainable = model.get_layer(name).trainable_variables
        if not trainable:
            raise ValueError(
                f"`head` layer {name!r} has no trainable variables to adapt. Received: head={head!r}"
            )
        ids.update(id(w) for w in trainable)
    return names, ids


@keras.saving.register_keras_serializable(package="nnkit")
class ANIL(MetaLearner):
    """Almost no inner loop: MAML whose adaptation changes only the head.

    Use it when the body's features should be shared by every task and only
    the last layers (the classifier) need to change per task: the inner
    loop adapts the variables of the layers named in ``head`` and holds the
    body fixed, while the outer loop (``fit``) trains everything. Cheaper
    than MAML (the second-order term involves only the head) and, in Raghu
    et al.'s experiments, about as accurate.

    Formula, with θ = (θ_body, θ_head), inner rate α, one inner step::

        θ′_head = θ_head − α ∇_head S_t(θ_body, θ_head)
        meta-loss = mean_t Q_t(θ_body, θ′_head)

    The meta-gradient is the full gradient of the meta-loss with respect to
    both parts (through ``θ′_head``), or with the inner gradient held
    constant when ``first_order=True``.

    Args:
        model: The built ``keras.Model`` to meta-train. Required.
        head: The name (or list of names) of the model's top-level layers
            whose variables are adapted. Required.
        inner_learning_rate: The inner step size α, > 0. Defaults to ``0.01``.
        inner_steps: Inner steps in training and evaluation, >= 1.
            Defaults to ``1``.
        first_order: Drop the second-order term. Defaults to ``False``.
        transductive: Query pass in training mode (see ``MAML``).
            Defaults to ``True``.
        **kwargs: ``keras.Model`` arguments (``name``, ...).

    Raises:
        RuntimeError: On a backend other than TensorFlow and JAX.
        TypeError: If ``model`` is not a ``keras.Model``, ``head`` is not a
            name or list of names, or an argument has the wrong type.
        ValueError: If ``model`` is not built or is a data-batch wrapper, ``head`` names a layer the
            model does not have (or one without trainable variables), or a
            number is out of range.

    Example:
    >>> import keras
    >>> from nnkit.meta import ANIL
    >>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="body"),
    ...                         keras.layers.Dense(3, name="head")])
    >>> anil = ANIL(net, head="head", inner_learning_rate=0.1)
    >>> anil.head, [w.path for w in anil.adapted_variables]
    (['head'], ['...head/kernel', '...head/bias'])

    References:
        Raghu, Raghu, Bengio and Vinyals, "Rapid Learning or Feature Reuse?
        Towards Understanding the Effectiveness of MAML", ICLR 2020.
    """

    def __init__(
        self,
        model,
        head,
        inner_learning_rate=0.01,
        inner_steps=1,
        first_order=False,
        transductive=True,
        **kwargs,
    ):
        if isinstance(model, dict):
            model = keras.saving.deserialize_keras_object(model)
        super().__init__(
            model,
            inner_learning_rate=inner_learning_rate,
            inner_steps=inner_steps,
            first_order=first_order,
            transductive=transductive,
            **kwargs,
        )
        self.head, self._meta_head_ids = _check_head(model, head)

    @property
    def adapted_variables(self):
        """The model's trainable variables that the inner loop adapts (the head's)."""
        return [w for w in self.model.trainable_variables if id(w) in self._meta_head_ids]

    def _meta_rates(self):
        return [
            self.inner_learning_rate if id(w) in self._meta_head_ids else None
            for w in self.model.trainable_variables
        ]

    def get_config(self):
        return {**super().get_config(), "head": list(self.head), "first_order": self.first_order}
