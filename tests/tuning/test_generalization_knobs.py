"""The opt-in generalization knobs of SearchSpace and what MLPHyperModel makes of them."""

import keras
import keras_tuner
import numpy as np
import pytest

from nnkit.callbacks import StochasticWeightAveraging
from nnkit.losses import SparseCategoricalCrossentropy
from nnkit.models import MixUp, SharpnessAwareMinimization
from nnkit.tuning import MLPHyperModel, SearchSpace

NEW = [
    "sam", "sam_rho", "swa", "swa_start_fraction", "drop_path", "mixup", "mixup_alpha",
    "label_smoothing",
]  # fmt: skip


def _hypermodel(space, **kwargs):
    return MLPHyperModel(
        4, 3, space=space.fixed(depth=2, width=8), output_activation="softmax",
        loss="sparse_categorical_crossentropy", train_size=16, epochs=4, patience=None, **kwargs,
    )  # fmt: skip


def test_default_space_is_unchanged():
    space = SearchSpace()
    assert not set(NEW) & set(space.names)
    hp = keras_tuner.HyperParameters()
    model = _hypermodel(space).build(hp)
    assert not isinstance(model, (MixUp, SharpnessAwareMinimization))
    assert model.loss == "sparse_categorical_crossentropy"


def test_knobs_are_appended_and_off_by_default():
    space = SearchSpace().with_generalization()
    assert space.names == SearchSpace().names + NEW
    defaults = space.defaults()
    assert [defaults[n] for n in ("sam", "swa", "mixup", "label_smoothing")] == [
        False,
        False,
        False,
        0.0,
    ]
    assert defaults["drop_path"] is None  # residual is off by default
    model = _hypermodel(space).build(keras_tuner.HyperParameters())
    assert not isinstance(model, (MixUp, SharpnessAwareMinimization))
    assert model.loss == "sparse_categorical_crossentropy"
    hp = keras_tuner.HyperParameters()
    space.sample(hp)
    assert {"sam", "swa", "mixup", "label_smoothing"} <= set(hp.values)


def test_values_become_the_techniques():
    space = SearchSpace().with_generalization().fixed(
        residual=True, drop_path=0.2, sam=True, sam_rho=0.1, mixup=True, mixup_alpha=0.4,
        label_smoothing=0.1,
    )  # fmt: skip
    model = _hypermodel(space).build(keras_tuner.HyperParameters())
    assert isinstance(model, SharpnessAwareMinimization) and model.rho == 0.1
    assert isinstance(model.model, MixUp) and model.model.alpha == 0.4
    rates = [layer.drop_path for layer in model.model.model.layers if hasattr(layer, "drop_path")]
    np.testing.assert_allclose(rates, [0.1, 0.2])
    assert isinstance(model.loss, SparseCategoricalCrossentropy)
    assert model.loss.label_smoothing == 0.1


def test_swa_is_added_to_the_trial_callbacks():
    space = SearchSpace().with_generalization().fixed(swa=True, swa_start_fraction=0.5)
    hypermodel = _hypermodel(space)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    callbacks = []
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype("float32"), rng.integers(0, 3, 16)
    hypermodel.fit(hp, model, x, y, verbose=0, callbacks=callbacks)
    (swa,) = [c for c in callbacks if isinstance(c, StochasticWeightAveraging)]
    assert swa.start_epoch == 2 and swa.averaged_epochs == [2, 3]


def test_label_smoothing_needs_a_cross_entropy():
    space = SearchSpace().with_generalization().fixed(label_smoothing=0.1)
    hypermodel = MLPHyperModel(4, 1, space=space, loss="mse", train_size=16)
    with pytest.raises(ValueError, match="cross-entropy"):
        hypermodel.build(keras_tuner.HyperParameters())
    categorical = MLPHyperModel(
        4, 3, space=space, loss=keras.losses.CategoricalCrossentropy(), train_size=16
    )
    assert (
        categorical.build(keras_tuner.HyperParameters()).loss.get_config()["label_smoothing"] == 0.1
    )
