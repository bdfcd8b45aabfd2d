"""``MLPHyperModel``: a keras-tuner HyperModel that builds nnkit MLPs from a ``SearchSpace``."""

import math

import keras
import keras_tuner

from nnkit import _validation as v
from nnkit.callbacks import EarlyStopping, StochasticWeightAveraging
from nnkit.losses import SparseCategoricalCrossentropy
from nnkit.models import MixUp, SharpnessAwareMinimization, mlp
from nnkit.regularizers import WeightDecay
from nnkit.schedules import Constant, CosineAnnealing, EpochSchedule, StepDecay
from nnkit.tuning.search_space import SearchSpace

_NORMALIZATIONS = {"none": None, "batch": "batch", "layer": "layer"}
_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("constant", "cosine", "step")


def _serialize(value):
    return None if value is None else keras.saving.serialize_keras_object(value)


def _deserialize(config):
    if config is None or isinstance(config, str):
        return config
    return keras.saving.deserialize_keras_object(config)


def _fresh(value):
    """A new copy of a loss or metric (a stateful metric must not be shared by trials)."""
    return value if isinstance(value, str) else _deserialize(_serialize(value))


def _smoothed(loss, smoothing):
    """``loss`` with label smoothing ``smoothing``: sparse or categorical cross-entropy only."""
    if loss == "sparse_categorical_crossentropy":
        return SparseCategoricalCrossentropy(label_smoothing=smoothing)
    if loss == "categorical_crossentropy":
        return keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
    if isinstance(
        loss, (keras.losses.SparseCategoricalCrossentropy, SparseCategoricalCrossentropy)
    ):
        config = loss.get_config()
        config["label_smoothing"] = smoothing
        config.pop("fn", None)
        return SparseCategoricalCrossentropy.from_config(config)
    if isinstance(loss, keras.losses.CategoricalCrossentropy):
        config = loss.get_config()
        config["label_smoothing"] = smoothing
        return keras.losses.CategoricalCrossentropy.from_config(config)
    raise ValueError(
        "The `label_smoothing` knob smooths a cross-entropy loss; this MLPHyperModel's "
        f"loss is not one. Drop the knob or use a cross-entropy. Received: loss={loss!r}"
    )


def _has_early_stopping(callbacks):
    return any(isinstance(cb, (EarlyStopping, keras.callbacks.EarlyStopping)) for cb in callbacks)


@keras.saving.register_keras_serializable(package="nnkit")
class MLPHyperModel(keras_tuner.HyperModel):
    """A keras-tuner ``HyperModel`` that builds and compiles an nnkit MLP from a ``SearchSpace``.

    Use it as the hypermodel of any keras-tuner tuner (``nnkit.tuning.tune``
    makes one when you pass a ``SearchSpace``): each trial's values become
    a model from ``nnkit.models.mlp``, an nnkit schedule, a regularizer and
    an optimizer, and the trial trains with nnkit's ``EarlyStopping``.

    What the knobs of ``space.sample(hp)`` become:

    * model: ``mlp(input_dim, [width] * depth, activation=, normalization=,
      dropout=, residual=, output_units=, output_activation=)``;
    * ``optimizer``: ``"adam"`` → ``Adam``; ``"adamw"`` → ``AdamW`` with
      ``weight_decay`` as its decoupled decay (Keras subtracts
      ``lr · weight_decay · W`` per step); ``"sgd"`` → ``SGD(momentum=)``.
      With ``adam`` and ``sgd`` the weight decay is a penalty,
      ``nnkit.regularizers.WeightDecay(weight_decay)`` on every kernel
      (gradient ``weight_decay · W``, coupled) — Adam with an L2 penalty
      versus AdamW is exactly the comparison of Loshchilov & Hutter;
      ``weight_decay = 0`` adds nothing;
    * ``schedule``, with ``S = ceil(train_size / batch_size)`` steps per
      epoch and ``T = epochs · S``: ``"constant"`` →
      ``Constant(learning_rate)``; ``"cosine"`` →
      ``CosineAnnealing(learning_rate, T,
      warmup_steps=round(warmup_fraction · T))``; ``"step"`` →
      ``EpochSchedule(StepDecay(learning_rate, ⌊epochs / (step_drops + 1)⌋,
      step_factor), S, granularity="epoch")``;
    * ``batch_size`` goes to ``fit`` (so it must not be passed to
      ``search``); ``fit`` also sets ``epochs`` unless the tuner does
      (Hyperband) and adds ``EarlyStopping(monitor="val_loss",
      patience=patience)`` (``"loss"`` without validation data) unless the
      callbacks already hold an early-stopping callback.

    The opt-in generalization knobs (``SearchSpace().with_generalization()``),
    absent from the default space: ``drop_path`` goes to ``mlp``;
    ``mixup`` wraps the model in ``MixUp(model, alpha=mixup_alpha)`` and ``sam``
    in ``SharpnessAwareMinimization(..., rho=sam_rho)`` (the compiled model is
    then the wrapper); ``label_smoothing > 0`` replaces a sparse
    cross-entropy ``loss`` by ``nnkit.losses.SparseCategoricalCrossentropy``
    (a categorical one by Keras's, with ``label_smoothing``); ``swa`` adds
    ``StochasticWeightAveraging(round(swa_start_fraction · epochs))`` to
    the trial's callbacks (the tuner's objective is read from the epoch
    logs, before the average is swapped in at the end).

    A knob dropped from the space takes its default. To use knobs of your
    own (``space.extend(fn)``), subclass and override ``build_model``,
    ``build_schedule`` or ``build_optimizer``, which receive the values.

    Args:
        input_dim: Number of input features, an int ``>= 1``. Required.
        output_units: Width of the output layer, an int ``>= 1``.
            Defaults to ``1``.
        space: The ``SearchSpace``, or ``None`` for the default space.
            Keyword-only. Defaults to ``None``.
        output_activation: Output activation (e.g. ``"softmax"``), or
            ``None``. Keyword-only. Defaults to ``None``.
        loss: Loss passed to ``compile`` (a name or a Keras loss; a fresh
            copy per trial). Keyword-only. Defaults to ``"mse"``.
        metrics: Metrics passed to ``compile`` (names or Keras metrics, a
            fresh copy per trial), or ``None``. Keyword-only.
            Defaults to ``None``.
        epochs: Epochs per trial (the schedules' length), an int ``>= 1``.
            Keyword-only. Defaults to ``20``.
        train_size: Number of training examples (sets the steps per
            epoch of the schedules; ``fit`` checks it), an int ``>= 1``.
            Keyword-only. Required.
        patience: ``EarlyStopping`` patience in every trial, an int
            ``>= 0``, or ``None`` for no early stopping. Keyword-only.
            Defaults to ``5``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a number is out of range; in ``fit``, if
            ``batch_size`` is passed or the data do not have ``train_size``
            examples.

    Example:
    >>> import keras, keras_tuner
    >>> from nnkit.tuning import MLPHyperModel, SearchSpace
    >>> space = SearchSpace().fixed(depth=2, width=32, optimizer="sgd", schedule="step")
    >>> hypermodel = MLPHyperModel(8, 3, space=space, output_activation="softmax",
    ...                            loss="categorical_crossentropy", train_size=100)
    >>> model = hypermodel.build(keras_tuner.HyperParameters())
    >>> [type(layer).__name__ for layer in model.layers]
    ['InputLayer', 'DenseBlock', 'DenseBlock', 'Dense']
    >>> type(model.optimizer).__name__, model.optimizer.momentum
    ('SGD', 0.9)
    >>> config = model.optimizer.get_config()["learning_rate"]  # the schedule, serialized
    >>> schedule = keras.optimizers.schedules.deserialize(config)
    >>> [round(float(schedule(t)), 6) for t in (0, 23, 24)]  # 4 steps/epoch, ×0.1 every 6 epochs
    [0.001, 0.001, 0.0001]

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR
        2019; keras-tuner ``HyperModel``.
    """

    def __init__(
        self,
        input_dim,
        output_units=1,
        *,
        space=None,
        output_activation=None,
        loss="mse",
        metrics=None,
        epochs=20,
        train_size,
        patience=5,
    ):
        super().__init__(name="mlp_hypermodel")
        self.input_dim = v.check_positive_int("input_dim", input_dim)
        self.output_units = v.check_positive_int("output_units", output_units)
        self.space = SearchSpace() if space is None else space
        v.check_instance("space", self.space, SearchSpace, "a nnkit.tuning.SearchSpace or None")
        if output_activation is not None:
            v.check_str("output_activation", output_activation)
        self.output_activation = output_activation
        if loss is None:
            raise ValueError(
                "`loss` is required to compile the trials' models. Received: loss=None"
            )
        if isinstance(loss, str):
            try:
                keras.losses.get(loss)
            except ValueError:
                raise ValueError(
                    f"`loss` must name a Keras loss (e.g. 'mse', "
                    f"'sparse_categorical_crossentropy'). Received: loss={loss!r}"
                ) from None
        elif isinstance(loss, bool) or not callable(loss):
            raise TypeError(
                "`loss` must be a loss name, a keras.losses.Loss or a function "
                f"(y_true, y_pred), not {type(loss).__name__}. Received: loss={loss!r}"
            )
        self.loss = loss
        if metrics is not None:
            v.check_sequence("metrics", metrics, "a list (of names or Keras metrics) or None")
        self.metrics = None if metrics is None else list(metrics)
        self.epochs = v.check_positive_int("epochs", epochs)
        self.train_size = v.check_positive_int("train_size", train_size)
        self.patience = v.check_optional_int("patience", patience, minimum=0)

    # -- building ------------------------------------------------------------------

    def steps_per_epoch(self, batch_size):
        """``ceil(train_size / batch_size)``: the optimizer steps ``fit`` runs per epoch."""
        return math.ceil(self.train_size / v.check_positive_int("batch_size", batch_size))

    def build_model(self, values):
        """The uncompiled ``nnkit.models.mlp`` for one trial's ``values``."""
        decay = values["weight_decay"] or 0.0
        coupled = values["optimizer"] != "adamw" and decay > 0
        return mlp(
            self.input_dim,
            [values["width"]] * values["depth"],
            activation=values["activation"],
            normalization=_NORMALIZATIONS[values["normalization"]],
            dropout=values["dropout"],
            residual=values["residual"],
            drop_path=(values.get("drop_path") or 0.0) if values["residual"] else 0.0,
            output_units=self.output_units,
            output_activation=self.output_activation,
            kernel_regularizer=WeightDecay(decay) if coupled else None,
        )

    def build_schedule(self, values):
        """The learning-rate schedule (in optimizer steps) for one trial's ``values``."""
        steps = self.steps_per_epoch(values["batch_size"])
        total = self.epochs * steps
        name = v.check_one_of("schedule", values["schedule"], _SCHEDULES)
        if name == "constant":
            return Constant(values["learning_rate"])
        if name == "cosine":
            warmup = min(round(values["warmup_fraction"] * total), total - 1)
            return CosineAnnealing(values["learning_rate"], total, warmup_steps=warmup)
        step_size = max(1, self.epochs // (values["step_drops"] + 1))
        return EpochSchedule(
            StepDecay(values["learning_rate"], step_size, values["step_factor"]),
            steps,
            granularity="epoch",
        )

    def build_optimizer(self, values):
        """The optimizer for one trial's ``values``, with ``build_schedule(values)`` as rate."""
        schedule = self.build_schedule(values)
        name = v.check_one_of("optimizer", values["optimizer"], _OPTIMIZERS)
        if name == "adamw":
            return keras.optimizers.AdamW(schedule, weight_decay=values["weight_decay"])
        if name == "sgd":
            return keras.optimizers.SGD(schedule, momentum=values["momentum"])
        return keras.optimizers.Adam(schedule)

    def build_loss(self, values):
        """The loss (a fresh copy), label-smoothed when ``values["label_smoothing"] > 0``."""
        loss = _fresh(self.loss)
        smoothing = values.get("label_smoothing") or 0.0
        if smoothing == 0.0:
            return loss
        return _smoothed(loss, smoothing)

    def build(self, hp):
        values = self.space.sample(hp)
        model = self.build_model(values)
        if values.get("mixup"):
            model = MixUp(model, alpha=values["mixup_alpha"])
        if values.get("sam"):
            model = SharpnessAwareMinimization(model, rho=values["sam_rho"])
        model.compile(
            optimizer=self.build_optimizer(values),
            loss=self.build_loss(values),
            metrics=None if self.metrics is None else [_fresh(m) for m in self.metrics],
        )
        return model

    def declare_hyperparameters(self, hp):
        self.space.sample(hp)

    # -- training -------------------------------------------------------------------

    def fit(self, hp, model, *args, **kwargs):
        if "batch_size" in kwargs:
            raise ValueError(
                "MLPHyperModel takes the batch size from the `batch_size` knob; do not pass "
                f"batch_size to search()/fit(). Received: batch_size={kwargs['batch_size']!r}"
            )
        x = args[0] if args else kwargs.get("x")
        rows = getattr(x, "shape", (None,))[0]
        if rows is not None and rows != self.train_size:
            raise ValueError(
                f"This MLPHyperModel was made for train_size={self.train_size} examples (its "
                f"schedules count steps from it), but fit got {rows}. Received: x.shape="
                f"{tuple(x.shape)}"
            )
        batch_size = hp.values.get("batch_size")
        if batch_size is None:
            batch_size = self.space.defaults()["batch_size"]
        kwargs.setdefault("epochs", self.epochs)
        if kwargs.get("callbacks") is None:
            kwargs["callbacks"] = []
        callbacks = kwargs["callbacks"]  # changed in place: the tuner reads it after fit
        if self.patience is not None and not _has_early_stopping(callbacks):
            validated = kwargs.get("validation_data") is not None or kwargs.get("validation_split")
            monitor = "val_loss" if validated else "loss"
            callbacks.insert(0, EarlyStopping(monitor, patience=self.patience, mode="min"))
        if hp.values.get("swa"):
            start = round(hp.values["swa_start_fraction"] * kwargs["epochs"])
            callbacks.append(StochasticWeightAveraging(min(start, kwargs["epochs"] - 1)))
        return model.fit(*args, batch_size=batch_size, **kwargs)

    # -- config ---------------------------------------------------------------------

    def get_config(self):
        return {
            "input_dim": self.input_dim,
            "output_units": self.output_units,
            "space": _serialize(self.space),
            "output_activation": self.output_activation,
            "loss": _serialize(self.loss),
            "metrics": None if self.metrics is None else [_serialize(m) for m in self.metrics],
            "epochs": self.epochs,
            "train_size": self.train_size,
            "patience": self.patience,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["space"] = _deserialize(config["space"])
        config["loss"] = _deserialize(config["loss"])
        if config["metrics"] is not None:
            config["metrics"] = [_deserialize(m) for m in config["metrics"]]
        return cls(**config)
