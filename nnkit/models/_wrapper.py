"""The one base of nnkit's model wrappers: ``SharpnessAwareMinimization``, ``MixUp``, the meta-learners.

A wrapper is a ``keras.Model`` around the user's model (``self.model``).
Its train step is Keras's, cut at two public hooks that a subclass
overrides; the base never knows a subclass:

1. ``prepare_batch(data)``: the batch the step trains on. The base returns
   the inner wrapper's (innermost first), else ``data``; ``MixUp`` mixes the
   batch here.
2. ``gradient_step(trainer, *args)``: computes the gradients of the loss
   of ``trainer`` (the outermost wrapper, the one compiled and fit: its
   optimizer, loss and metrics) and applies them. The base hands over to
   the inner wrapper, else runs Keras's own step on ``trainer``;
   ``SharpnessAwareMinimization`` overrides it with its two-pass step.

So in a chain of wrappers the outermost override of each hook wins and the
order of nesting does not matter (``SharpnessAwareMinimization(MixUp(m))``
and ``MixUp(SharpnessAwareMinimization(m))`` train alike); compile and fit
the outermost one. ``call`` is the inner model's, so ``predict`` and
``evaluate`` are unchanged; the meta-learners override ``call`` (the
adaptation runs in the forward pass) and keep Keras's gradient step.

What every wrapper shares: ``model`` is a ``keras.Model`` (else
``TypeError``) and the only positional argument, every option is
keyword-only (`keyword_only` keeps older positional calls working, with a
``DeprecationWarning``); the wrapper is built when its model is (building
the wrapper builds the model); ``get_config`` is Keras's (``name``,
``trainable``, ``dtype``) plus the serialized ``model`` and the subclass's
options, and ``from_config`` rebuilds the model first.

Targets mixed from two label sets travel as `MixedTargets`; the
wrappers' ``compute_loss`` and ``compute_metrics`` weigh the two sets, so the
user's loss is used unchanged, whatever its kind (sparse or not).
"""

import collections
import functools
import json
import warnings

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


def keyword_only(*names):
    """Decorate a wrapper's ``__init__(self, model, *, ...)``: ``names`` may still come by position.

    ``names`` are the options that an older release took positionally after
    ``model``, in that order. Passing them so still works for one release,
    with a ``DeprecationWarning`` that names the keywords to use.
    """

    def decorate(init):
        @functools.wraps(init)
        def wrapper(self, model, *args, **kwargs):
            if args:
                owner = type(self).__name__
                if len(args) > len(names):
                    raise TypeError(
                        f"{owner} takes `model` and at most {len(names)} deprecated positional "
                        f"options ({', '.join(names)}); pass options by keyword. "
                        f"Received: {1 + len(args)} positional arguments"
                    )
                given = dict(zip(names, args, strict=False))
                twice = sorted(set(given) & set(kwargs))
                if twice:
                    raise TypeError(
                        f"{owner} got {', '.join(twice)} both by position and by keyword. "
                        f"Received: {len(args)} positional options and keywords {sorted(kwargs)}"
                    )
                keywords = ", ".join(f"{name}={value!r}" for name, value in given.items())
                warnings.warn(
                    f"Passing {', '.join(given)} to {owner} by position is deprecated and will "
                    f"stop working in the next release; pass it by keyword: "
                    f"{owner}(model, {keywords}).",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs.update(given)
            return init(self, model, **kwargs)

        return wrapper

    return decorate


class TrainingWrapper(keras.Model):
    """A ``keras.Model`` that trains ``model`` through two hooks; see the module documentation.

    Args:
        model: The ``keras.Model`` to wrap. Required.
        **kwargs: ``keras.Model`` arguments (``name``, ``trainable``, ``dtype``).

    Raises:
        TypeError: If ``model`` is not a ``keras.Model``.
    """

    def __init__(self, model, **kwargs):
        v.check_instance("model", model, keras.Model, "a keras.Model")
        if getattr(model, "task_batches", False):
            raise ValueError(
                f"{type(self).__name__} cannot wrap {type(model).__name__}: "
                f"{type(model).__name__} trains on batches of tasks (support and query sets), "
                f"not on the batches of examples {type(self).__name__} transforms or "
                "perturbs per step. Wrap the inner model instead where that is supported "
                "(MAML(SharpnessAwareMinimization(model)) takes sharpness-aware steps on the "
                "meta-loss), or train the meta-learner unwrapped. "
                f"Received: model={model.name!r}"
            )
        super().__init__(**kwargs)
        self.model = model
        if model.built:
            self.built = True

    def build(self, input_shape=None):
        """Build the wrapped model (a wrapper creates no variables of its own here)."""
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    # -- forward -----------------------------------------------------------------

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def compute_output_spec(self, inputs, training=None):
        return self.model.compute_output_spec(inputs, training=training)

    # -- the train step: two hooks ---------------------------------------------------

    def prepare_batch(self, data):
        """The batch the gradient step trains on: the inner wrappers' transforms, innermost first.

        Override it to transform the batch (``MixUp``); call
        ``super().prepare_batch(data)`` first so inner wrappers still apply.
        It runs inside the compiled step.

        Args:
            data: The batch ``fit`` gives the train step (``x``, ``(x, y)``
                or ``(x, y, sample_weight)``).

        Returns:
            The batch, in the same form.
        """
        if isinstance(self.model, TrainingWrapper):
            return self.model.prepare_batch(data)
        return data

    def gradient_step(self, trainer, *args):
        """Compute the gradients of ``trainer``'s loss on a batch and apply them; return the logs.

        Override it to change how the gradient the optimizer applies is
        computed (``SharpnessAwareMinimization``). The base hands over to the
        inner wrapper, so the outermost override in a chain wins; without
        one it is Keras's own train step on ``trainer``.

        Args:
            trainer: The outermost wrapper, the model being fit: its
                ``optimizer``, ``compute_loss`` and ``compute_metrics`` are
                the ones to use, and its ``trainable_variables`` are the
                weights to update.
            *args: ``(data,)`` on TensorFlow; ``(state, data)`` on JAX,
                where ``state`` is ``(trainable, non_trainable,
                optimizer_variables, metrics_variables)`` as in Keras's
                stateless JAX step. ``data`` is the prepared batch.

        Returns:
            What Keras's ``train_step`` returns on the backend: the logs
            (TensorFlow), or ``(logs, state)`` (JAX).
        """
        if isinstance(self.model, TrainingWrapper):
            return self.model.gradient_step(trainer, *args)
        return super(TrainingWrapper, trainer).train_step(*args)

    def train_step(self, *args):
        # TensorFlow calls train_step(data), JAX train_step(state, data).
        *state, data = args
        if state:
            state, data = self._prepare_stateless(*state, data)
        else:
            data = self.prepare_batch(data)
        return self.gradient_step(self, *state, data)

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
        """Keras's config (``name``, ``trainable``, ``dtype``) and the serialized ``model``.

        A subclass adds its options: ``{**super().get_config(), "rho": self.rho}``.
        """
        config = super().get_config()
        # Through JSON: the nested model's config holds tuples (shapes).
        config["model"] = json.loads(json.dumps(keras.saving.serialize_keras_object(self.model)))
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)
