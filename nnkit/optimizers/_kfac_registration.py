"""What ``KFAC`` knows of the model it is registered with, and the checks that it is that model.

A plain object (no Keras tracker adopts the model through it): the model,
its blocks (``_kfac_capture.Block``), the layers left first-order, the
momentum of each model variable, and the scale of a ``LossScaleOptimizer``
wrapping the optimizer. ``check_applied_to`` is what makes an unregistered
KFAC (built without ``model=``, or a model reloaded with
``keras.saving.load_model``) or a KFAC applied to another model's variables
fail at its first ``apply`` instead of training silently as SGD or failing
with a bare ``KeyError``.
"""

import contextlib

import keras
from keras import ops

from nnkit._keras.fit import explicit_strategy


class Registration:
    """``KFAC``'s link to its model (empty while unregistered)."""

    def __init__(self):
        self.model = None
        self.blocks = []
        self.fallback = []
        self.batch_patches = []  # the model's call/compute_loss recorders (_kfac_batch)
        self.momenta = {}  # id(model variable) -> momentum variable
        self.gradient_sums = {}  # id(model variable) -> the accumulation cycle's gradient sum
        self.loss_scale = None  # the LossScaleOptimizer's scale, read where it is current

    def channel_ids(self):
        return {id(c) for block in self.blocks for c in block.channels}

    def scope(self):
        """The registered model's ``tf.distribute`` strategy scope (or no scope)."""
        strategy = explicit_strategy(self.model)
        return strategy.scope() if strategy is not None else contextlib.nullcontext()

    def outer_loss_scale(self, optimizer):
        """The scale of a ``LossScaleOptimizer`` wrapping ``optimizer`` (float32), or ``None``."""
        outer = getattr(self.model, "optimizer", None)
        if isinstance(outer, keras.optimizers.LossScaleOptimizer) and (
            outer.inner_optimizer is optimizer and outer.built
        ):
            return ops.cast(ops.convert_to_tensor(outer.dynamic_scale), "float32")
        return None

    def check_applied_to(self, variables):
        """Refuse to train unregistered, or on variables that are not the registered model's."""
        if self.model is None:
            raise ValueError(
                "KFAC is not registered with a model, so it would train as plain SGD with "
                "momentum. Call `optimizer.register(model)` before `fit` (a model loaded with "
                "keras.saving.load_model needs it again: a saved KFAC does not store its "
                "model), or pass it as KFAC(..., model=model). Received: an unregistered "
                f"KFAC applied to {_paths(variables)}"
            )
        given = {id(v) for v in variables}
        missing = [b.name for b in self.blocks if id(b.kernel) not in given]
        channels = self.channel_ids()
        own = [v for v in self.model.trainable_variables if id(v) not in channels]
        if missing or not any(id(v) in given for v in own):
            raise ValueError(
                f"This KFAC optimizer is registered with model {self.model.name!r} but is "
                f"applied to another model's variables ({_paths(variables)}), which lack the "
                f"registered layers {missing or [v.path for v in own][:3]}. A KFAC optimizer "
                "preconditions the model it is registered with: give the other model its own "
                "KFAC(..., model=other), or call `optimizer.unregister()` and then "
                "`optimizer.register(other)`."
            )


def _paths(variables, shown=3):
    """A short description of ``variables`` by path, for error messages."""
    paths = [getattr(v, "path", getattr(v, "name", "?")) for v in variables]
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return f"variables {paths[:shown]}{more}"
