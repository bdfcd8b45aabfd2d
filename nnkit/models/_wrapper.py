"""The base of nnkit's train-step wrappers (``SharpnessAwareMinimization``, ``MixUp``).

A wrapper is a ``keras.Model`` around the user's model: ``call`` is the
inner model's, so ``predict`` and ``evaluate`` are unchanged, and only
``train_step`` differs. A train step of any wrapper runs, in order:

1. ``prepare_batch(data)``: the wrappers' batch transforms, innermost
   first (``MixUp`` mixes the batch here);
2. the gradient step: sharpness-aware (two gradient evaluations) when a
   ``SharpnessAwareMinimization`` is in the chain, else Keras's own.

So wrappers nest in either order (``SharpnessAwareMinimization(MixUp(m))``
and ``MixUp(SharpnessAwareMinimization(m))`` train alike); compile and fit
the outermost one.

Targets mixed from two label sets travel as `MixedTargets`; the
wrappers' ``compute_loss`` and ``compute_metrics`` weigh the two sets, so the
user's loss is used unchanged, whatever its kind (sparse or not).
"""

import collections

import keras
from keras import ops

from nnkit import _validation as v

#: ``y`` of a mixed batch: each row's targets are ``first`` with weight
#: ``weight`` (a scalar) and ``second`` with ``1 − weight``;
#: ``second_sample_weight`` (or ``None``) weighs the rows of ``second``.
MixedTargets = collections.namedtuple(
    "MixedTargets", ["first", "second", "weight", "second_sample_weight"]
)


def map_rows(fn, value):
    """``fn`` applied to every per-row array in ``value`` (a mixed batch's ``weight`` kept)."""
    if value is None:
        return None
    if isinstance(value, MixedTargets):
        return MixedTargets(
            map_rows(fn, value.first),
            map_rows(fn, value.second),
            value.weight,
            map_rows(fn, value.second_sample_weight),
        )
    return keras.tree.map_structure(fn, value)


def _second_sample_weight(targets, sample_weight):
    """The sample weights of ``targets.second`` (the rows' own when it has none)."""
    if targets.second_sample_weight is None:
        return sample_weight
    return targets.second_sample_weight


class TrainingWrapper(keras.Model):
    """A model that trains ``model`` with a different train step; ``call`` is ``model``'s."""

    def __init__(self, model, **kwargs):
        v.check_instance("model", model, keras.Model, "a keras.Model")
        if getattr(model, "task_batches", False):
            raise ValueError(
                f"{type(self).__name__} cannot wrap {type(model).__name__}: "
                f"{type(model).__name__} trains on batches of tasks (support and query sets), "
                f"not on the batches of examples {type(self).__name__} transforms or "
                "perturbs per step. Train the meta-learner unwrapped. "
                f"Received: model={model.name!r}"
            )
        super().__init__(**kwargs)
        self.model = model
        if model.built:
            self.built = True

    # -- forward -----------------------------------------------------------------

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def compute_output_spec(self, inputs, training=None):
        return self.model.compute_output_spec(inputs, training=training)

    # -- the train step ------------------------------------------------------------

    def prepare_batch(self, data):
        """The batch the gradient step trains on (the inner wrappers' transforms first)."""
        if isinstance(self.model, TrainingWrapper):
            return self.model.prepare_batch(data)
        return data

    def sharpness_aware(self):
        """The ``SharpnessAwareMinimization`` of the chain (outermost), or ``None``."""
        if isinstance(self.model, TrainingWrapper):
            return self.model.sharpness_aware()
        return None

    def train_step(self, *args):
        # TensorFlow calls train_step(data), JAX train_step(state, data).
        *state, data = args
        if state:
            state, data = self._prepare_stateless(*state, data)
        else:
            data = self.prepare_batch(data)
        settings = self.sharpness_aware()
        if settings is None:
            return super().train_step(*state, data)
        from nnkit.models import _sam_step

        return _sam_step.train_step(self, settings, *state, data)

    def _prepare_stateless(self, state, data):
        """JAX: ``prepare_batch`` with the non-trainable state (seed generators) of ``state``."""
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        variables = self.non_trainable_variables
        mapping = list(zip(variables, non_trainable, strict=True))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            data = self.prepare_batch(data)
        non_trainable = [
            old if (new := scope.get_current_value(v)) is None else new
            for v, old in zip(variables, non_trainable, strict=True)
        ]
        return [(trainable, non_trainable, optimizer_variables, metrics_variables)], data

    # -- losses and metrics of mixed targets ------------------------------------------

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if isinstance(y, MixedTargets):
            second_weight = _second_sample_weight(y, sample_weight)
            first = self.compute_loss(x, y.first, y_pred, sample_weight, training=training)
            second = self.compute_loss(x, y.second, y_pred, second_weight, training=training)
            weight = ops.cast(y.weight, first.dtype)
            return weight * first + (1.0 - weight) * second
        return super().compute_loss(x, y, y_pred, sample_weight, training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y, MixedTargets):
            # Metrics see the label set with the larger weight (``y`` when λ >= 1/2), with
            # its rows' sample weights: Keras's unweighted ``metrics`` ignore sample
            # weights, so weighing the two sets by λ would only hold for weighted_metrics.
            major = ops.greater_equal(ops.cast(y.weight, "float32"), 0.5)
            targets = keras.tree.map_structure(
                lambda a, b: ops.where(major, a, b), y.first, y.second
            )
            second_weight = _second_sample_weight(y, sample_weight)
            if sample_weight is not None:
                sample_weight = keras.tree.map_structure(
                    lambda a, b: ops.where(major, a, b), sample_weight, second_weight
                )
            return self.compute_metrics(x, targets, y_pred, sample_weight)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    # -- config --------------------------------------------------------------------

    def get_config(self):
        return {
            "model": keras.saving.serialize_keras_object(self.model),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)
