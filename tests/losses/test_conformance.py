"""Shared tests over every public nnkit loss (discovered from ``nnkit.losses``).

A new loss fails ``test_every_loss_has_an_example`` until it gets a row in
``tests/examples.py`` (and a target kind in ``TARGETS`` below); the other tests
then cover it automatically.
"""

import inspect

import keras
import numpy as np
import pytest

import nnkit.losses as L
from nnkit.testing import assert_round_trip
from tests.examples import examples_in

EXAMPLES = examples_in("losses")
LOSSES = sorted(
    name
    for name in L.__all__
    if inspect.isclass(getattr(L, name)) and issubclass(getattr(L, name), keras.losses.Loss)
)
FUNCTIONS = sorted(name for name in L.__all__ if inspect.isfunction(getattr(L, name)))

# What each loss trains on: model output width and targets for a batch of 8.
_RNG = np.random.default_rng(0)
TARGETS = {
    "SmoothL1": (2, _RNG.normal(size=(16, 2)).astype("float32")),
    "ContrastiveLoss": (1, _RNG.integers(0, 2, size=(16,)).astype("float32")),
    "TripletLoss": (3, np.tile(np.arange(4), 4).astype("int32")),
    "SparseCategoricalCrossentropy": (3, _RNG.integers(0, 3, size=(16,)).astype("int32")),
}
FUNCTION_TARGETS = {
    "smooth_l1": "SmoothL1",
    "contrastive_loss": "ContrastiveLoss",
    "triplet_loss": "TripletLoss",
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
}


def _model(loss, units, jit_compile=False):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units)])
    model.compile(optimizer="sgd", loss=loss, jit_compile=jit_compile)
    return model


def _x():
    return np.random.default_rng(1).normal(size=(16, 4)).astype("float32")


def test_every_loss_has_an_example_and_targets():
    assert sorted(EXAMPLES) == LOSSES
    assert sorted(TARGETS) == LOSSES
    assert sorted(FUNCTION_TARGETS) == FUNCTIONS


@pytest.mark.parametrize("name", LOSSES)
def test_config_round_trip(name):
    loss = EXAMPLES[name]()
    restored = assert_round_trip(loss)
    assert restored.get_config() == loss.get_config()
    assert restored.dtype == loss.dtype and restored.reduction == loss.reduction


@pytest.mark.parametrize("name", LOSSES)
def test_defaults_round_trip_and_name_the_loss(name):
    loss = getattr(L, name)()
    config = assert_round_trip(loss).get_config()
    assert config["reduction"] == "sum_over_batch_size" and config["dtype"] is None
    assert config["name"] == loss.name and name in repr(loss)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("name", LOSSES)
def test_trains_in_a_compiled_fit_and_survives_safe_load(name, jit_compile, tmp_path):
    units, y = TARGETS[name]
    config = EXAMPLES[name]().get_config()
    config.update(reduction="sum_over_batch_size", dtype=None)  # a scalar training loss
    loss = getattr(L, name).from_config(config)
    model = _model(loss, units, jit_compile)
    history = model.fit(_x(), y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.loss) is type(loss)
    assert loaded.loss.get_config() == loss.get_config()
    np.testing.assert_allclose(
        loaded.evaluate(_x(), y, batch_size=16, verbose=0),
        model.evaluate(_x(), y, batch_size=16, verbose=0),
        rtol=1e-6,
    )


def test_smooth_l1_half_beta_keeps_its_config_through_save(tmp_path):
    model = _model(L.SmoothL1(0.5), 2)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(loaded.loss, L.SmoothL1) and loaded.loss.beta == 0.5


@pytest.mark.parametrize("name", FUNCTIONS)
def test_functional_forms_are_registered_and_survive_safe_load(name, tmp_path):
    fn = getattr(L, name)
    assert keras.saving.get_registered_name(fn) == f"nnkit>{name}"
    units, y = TARGETS[FUNCTION_TARGETS[name]]
    model = _model(fn, units)
    model.fit(_x(), y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(
        loaded.evaluate(_x(), y, batch_size=16, verbose=0),
        model.evaluate(_x(), y, batch_size=16, verbose=0),
        rtol=1e-6,
    )


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"reduction": "avg"}, ValueError, "reduction='avg'"),
        ({"reduction": "auto"}, ValueError, "reduction='auto'"),
        ({"name": ""}, ValueError, "name=''"),
        ({"name": 3}, TypeError, "name=3"),
        ({"dtype": "float8"}, ValueError, "dtype='float8'"),
        ({"dtype": 32}, TypeError, "dtype=32"),
    ],
)
def test_shared_arguments_are_checked(name, kwargs, error, fragment):
    with pytest.raises(error, match="Received") as info:
        getattr(L, name)(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("name", LOSSES)
def test_dtype_policy_is_stored_by_name(name):
    loss = getattr(L, name)(dtype=keras.DTypePolicy("float64"))
    assert loss.get_config()["dtype"] == "float64" and loss.dtype == "float64"
    assert assert_round_trip(loss).dtype == "float64"
