"""Block-level rematerialization: ``jax.checkpoint`` with a named policy around a whole block.

Rematerialization trades compute for memory: the backward pass recomputes
a block's activations from its input instead of keeping them from the
forward pass. ``jax.checkpoint``'s *policy* says which intermediate values
are kept anyway (``jax.checkpoint_policies``): none, the matrix products'
outputs, or the values tagged with chosen names. Keras's own
``keras.RematScope`` wraps each layer's call separately (all layers, those
with large outputs, or named layers) with no policy: every layer boundary
is then saved. Wrapping a whole block (a transformer block, a sub-model)
saves only the block's input, the usual choice for large models.
"""

import keras

from nnkit import _validation as v
from nnkit.distribute.model_parallelism import _require_jax

#: Policy name -> the ``jax.checkpoint_policies`` attribute it uses (``save_names``: names).
POLICIES = {
    "nothing_saveable": "nothing_saveable",
    "everything_saveable": "everything_saveable",
    "dots_saveable": "dots_saveable",
    "dots_with_no_batch_dims_saveable": "dots_with_no_batch_dims_saveable",
    "save_names": "save_only_these_names",
}


def _policy(policy, names):
    import jax

    chosen = getattr(jax.checkpoint_policies, POLICIES[policy])
    return chosen(*names) if policy == "save_names" else chosen


@keras.saving.register_keras_serializable(package="nnkit")
class Remat(keras.layers.Wrapper):
    """Rematerialize a whole block in the backward pass with a named ``jax.checkpoint`` policy.

    Use it to train a model whose activations do not fit memory: wrap each
    large block (a transformer block as a layer or functional sub-model);
    the backward pass recomputes the block's intermediate values from its
    input, keeping only what the policy saves. The numbers are unchanged
    (the same operations run again), and it composes with ``plan_layout``:
    the wrapped block's variables keep their paths and layouts. JAX backend
    only (``jax.checkpoint``; on TensorFlow it raises).

    Rule: ``Remat(block)(x) = jax.checkpoint(block, policy=P)(x)``, with
    ``P`` from ``policy``: ``"nothing_saveable"`` (recompute everything
    inside the block; the least memory), ``"dots_saveable"`` (keep the
    matrix products' outputs, recompute the elementwise work),
    ``"dots_with_no_batch_dims_saveable"`` (keep products without batch
    dimensions, i.e. weight products, not attention scores),
    ``"everything_saveable"`` (no recomputation: for comparison) and
    ``"save_names"`` (keep the values the block tagged with
    ``jax.ad_checkpoint.checkpoint_name(x, name)`` for a name in ``names``).

    The block must hold no state that training updates (batch
    normalization's moving statistics, a dropout's seed generator): those
    are assignments made inside the recomputed function. Memory savings are
    visible only on an accelerator: XLA:CPU removes the recomputation.

    Args:
        layer: The block, a ``keras.layers.Layer`` (a ``keras.Model`` too).
            Required.
        policy: The name of the ``jax.checkpoint`` policy, one of the above.
            Defaults to ``"nothing_saveable"``.
        names: The names to keep with ``policy="save_names"`` (a list of
            non-empty strings), else ``None``. Defaults to ``None``.
        **kwargs: Passed to ``keras.layers.Layer`` (``name``, ...).

    Raises:
        ValueError: If the backend is not JAX, ``policy`` is unknown,
            ``names`` is missing with ``"save_names"`` or given with another
            policy, or the block has non-trainable variables.
        TypeError: If ``layer`` is not a Keras layer or ``names`` is not a
            list of strings.

    Example:
    >>> import keras
    >>> from nnkit.distribute import Remat
    >>> block = keras.Sequential([keras.layers.Dense(8, activation="relu", name="up"),
    ...                           keras.layers.Dense(4, name="down")], name="block")
    >>> inputs = keras.Input((4,))
    >>> remat = Remat(block, "dots_saveable", name="remat")  # JAX only  # doctest: +SKIP
    >>> model = keras.Model(inputs, remat(inputs))  # doctest: +SKIP
    >>> [v.path for v in model.trainable_variables][:2]  # doctest: +SKIP
    ['remat/block/up/kernel', 'remat/block/up/bias']

    References:
        Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost";
        JAX ``jax.checkpoint`` and ``jax.checkpoint_policies``; Keras
        ``keras.RematScope``.
    """

    def __init__(self, layer, policy="nothing_saveable", names=None, **kwargs):
        _require_jax("Remat")
        v.check_instance("layer", layer, keras.layers.Layer, "a keras.layers.Layer")
        super().__init__(layer, **kwargs)
        self.policy = v.check_one_of("policy", policy, tuple(POLICIES))
        if policy == "save_names":
            if names is None:
                raise ValueError(
                    "`names` must list the checkpoint names to keep with policy='save_names'. "
                    "Received: names=None"
                )
            names = [
                v.check_str("names[]", name)
                for name in v.check_sequence("names", names, "a list of names")
            ]
        elif names is not None:
            raise ValueError(
                f"`names` goes only with policy='save_names'. Received: names={names!r}, "
                f"policy={policy!r}"
            )
        self.names = names
        if layer.built:
            self._check_stateless()

    def _check_stateless(self):
        updated = [var.path for var in self.layer.non_trainable_variables]
        if updated:
            raise ValueError(
                "`layer` must hold no non-trainable state (training updates it by assignment, "
                "which cannot happen inside a rematerialized function): wrap the blocks "
                "without batch normalization or dropout's seed generators. Received: layer="
                f"{self.layer.name!r} with non-trainable variables {updated}"
            )

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._check_stateless()
        self.built = True

    def call(self, inputs, training=None):
        import jax

        def block(x):
            return self.layer(x, training=training)

        return jax.checkpoint(block, policy=_policy(self.policy, self.names or ()))(inputs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, inputs, training=None):
        return self.layer.compute_output_spec(inputs)

    def get_config(self):
        return {**super().get_config(), "policy": self.policy, "names": self.names}
