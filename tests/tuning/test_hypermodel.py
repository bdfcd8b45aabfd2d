"""MLPHyperModel: the model, optimizer, penalty and schedule a trial's values build; fit."""

import math

import keras
import keras_tuner
import numpy as np
import pytest

import nnkit.regularizers
from nnkit._keras.optimizer import learning_rate_object
from nnkit.callbacks import EarlyStopping
from nnkit.testing import assert_round_trip
from nnkit.tuning import MLPHyperModel, SearchSpace

TRAIN_SIZE = 100


def _hp(**values):
    """A HyperParameters whose trial values are preset (what the oracle hands to build)."""
    hp = keras_tuner.HyperParameters()
    hp.values = dict(values)
    return hp


def _hypermodel(**kwargs):
    options = dict(
        output_activation="softmax",
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        epochs=12,
        train_size=TRAIN_SIZE,
    )
    options.update(kwargs)
    return MLPHyperModel(8, 3, **options)


def _rates(schedule, steps):
    return np.array([float(schedule(t)) for t in steps])


def test_architecture_knobs_build_the_mlp():
    model = _hypermodel().build(_hp(depth=2, width=32, residual=False, normalization="none"))
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer",
        "DenseBlock",
        "DenseBlock",
        "Dense",
    ]
    assert model.count_params() == (8 * 32 + 32) + (32 * 32 + 32) + (32 * 3 + 3)
    assert model.output_shape == (None, 3)
    residual = _hypermodel().build(
        _hp(depth=3, width=16, residual=True, normalization="layer", activation="tanh")
    )
    blocks = [layer for layer in residual.layers if type(layer).__name__ == "ResidualBlock"]
    assert len(blocks) == 3
    assert blocks[0].get_config()["normalization"] == "layer"
    assert blocks[0].get_config()["activation"] == "tanh"


def test_adam_and_sgd_get_a_weight_decay_penalty_adamw_a_decoupled_decay():
    rng = np.random.default_rng(0)
    for optimizer, cls in (("adam", "Adam"), ("sgd", "SGD")):
        values = dict(optimizer=optimizer, weight_decay=3e-3, depth=1, width=4)
        if optimizer == "sgd":
            values["momentum"] = 0.95
        model = _hypermodel().build(_hp(**values))
        assert type(model.optimizer).__name__ == cls
        model(rng.normal(size=(2, 8)).astype("float32"))
        kernels = [w.numpy() for w in model.weights if w.name == "kernel"]
        expected = sum(3e-3 / 2 * np.sum(k.astype("float64") ** 2) for k in kernels)
        assert len(model.losses) == len(kernels) == 2
        np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)
        assert isinstance(model.layers[-1].kernel_regularizer, nnkit.regularizers.WeightDecay)
    assert model.optimizer.momentum == 0.95
    adamw = _hypermodel().build(_hp(optimizer="adamw", weight_decay=3e-3))
    assert type(adamw.optimizer).__name__ == "AdamW"
    assert adamw.optimizer.weight_decay == pytest.approx(3e-3)
    assert adamw.losses == [] and adamw.layers[-1].kernel_regularizer is None
    none = _hypermodel(space=SearchSpace().fixed(weight_decay=0.0)).build(_hp())
    assert none.layers[-1].kernel_regularizer is None


def test_schedules_follow_their_closed_forms():
    epochs, batch = 12, 32
    steps_per_epoch = math.ceil(TRAIN_SIZE / batch)  # 4
    total = epochs * steps_per_epoch  # 48
    t = np.array([0, 1, 5, 10, 24, 47, 48, 100])

    constant = _hypermodel().build(_hp(schedule="constant", learning_rate=0.02, batch_size=batch))
    np.testing.assert_allclose(_rates(learning_rate_object(constant.optimizer), t), 0.02, rtol=1e-6)

    cosine = _hypermodel().build(
        _hp(schedule="cosine", learning_rate=0.02, warmup_fraction=0.125, batch_size=batch)
    )
    warmup = round(0.125 * total)  # 6
    progress = np.clip((t - warmup) / (total - warmup), 0, 1)
    expected = np.where(t < warmup, 0.02 * t / warmup, 0.02 * 0.5 * (1 + np.cos(np.pi * progress)))
    np.testing.assert_allclose(
        _rates(learning_rate_object(cosine.optimizer), t), expected, rtol=1e-5, atol=1e-9
    )

    step = _hypermodel().build(
        _hp(schedule="step", learning_rate=0.02, step_drops=2, step_factor=0.1, batch_size=batch)
    )
    step_size = epochs // 3  # drops after epochs 4 and 8
    expected = 0.02 * 0.1 ** np.floor(np.floor(t / steps_per_epoch) / step_size)
    np.testing.assert_allclose(_rates(learning_rate_object(step.optimizer), t), expected, rtol=1e-5)


def test_fit_uses_the_batch_size_knob_and_adds_early_stopping():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(TRAIN_SIZE, 8)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, TRAIN_SIZE), 3)
    hypermodel = _hypermodel(epochs=2)
    hp = _hp(batch_size=16, depth=1, width=4)
    model = hypermodel.build(hp)
    callbacks = []
    history = hypermodel.fit(
        hp, model, x, y, validation_data=(x, y), callbacks=callbacks, verbose=0
    )
    assert int(model.optimizer.iterations.numpy()) == 2 * math.ceil(TRAIN_SIZE / 16)
    assert len(history.epoch) == 2
    (stopper,) = callbacks
    assert isinstance(stopper, EarlyStopping)
    assert (stopper.monitor, stopper.patience) == ("val_loss", 5)
    own = EarlyStopping("val_accuracy", patience=1, mode="max")
    callbacks = [own]
    hypermodel.fit(
        hp, hypermodel.build(hp), x, y, validation_data=(x, y), callbacks=callbacks, verbose=0
    )
    assert callbacks == [own]  # yours is kept, none added
    no_stop = _hypermodel(epochs=1, patience=None)
    callbacks = []
    no_stop.fit(hp, no_stop.build(hp), x, y, callbacks=callbacks, verbose=0)
    assert callbacks == []


def test_fit_refuses_a_batch_size_and_data_of_another_size():
    hypermodel = _hypermodel()
    hp = _hp(depth=1, width=4)
    model = hypermodel.build(hp)
    x, y = np.zeros((TRAIN_SIZE, 8), "float32"), np.zeros((TRAIN_SIZE, 3), "float32")
    with pytest.raises(ValueError, match="batch_size=64"):
        hypermodel.fit(hp, model, x, y, batch_size=64)
    with pytest.raises(ValueError, match="train_size=100.*got 50"):
        hypermodel.fit(hp, model, x[:50], y[:50])


def test_every_build_gets_fresh_loss_and_metric_objects():
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    metric = keras.metrics.CategoricalAccuracy(name="acc")
    hypermodel = _hypermodel(loss=loss, metrics=[metric])
    first, second = hypermodel.build(_hp()), hypermodel.build(_hp())
    assert first.loss is not loss and first.loss is not second.loss
    assert first.loss.get_config()["label_smoothing"] == 0.1


def test_round_trip_keeps_space_loss_and_metrics():
    space = SearchSpace().restrict(depth=(1, 2)).fixed(optimizer="sgd")
    hypermodel = _hypermodel(
        space=space, loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1), patience=3
    )
    restored = assert_round_trip(hypermodel)
    assert restored.space == space
    assert restored.loss.get_config() == hypermodel.loss.get_config()
    assert restored.get_config() == hypermodel.get_config()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"train_size": 0}, ValueError, "train_size=0"),
        ({"epochs": 1.5}, ValueError, "epochs=1.5"),
        ({"space": "default"}, TypeError, "space='default'"),
        ({"metrics": "accuracy"}, TypeError, "metrics='accuracy'"),
        ({"loss": None}, ValueError, "loss=None"),
        ({"patience": -1}, ValueError, "patience=-1"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        _hypermodel(**kwargs)
