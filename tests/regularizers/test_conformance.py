"""Shared tests over every public nnkit regularizer (discovered from ``nnkit.regularizers``)."""

import inspect

import keras
import numpy as np
import pytest

import nnkit.regularizers as R
from nnkit.testing import assert_round_trip
from tests.examples import examples_in

EXAMPLES = examples_in("regularizers")
REGULARIZERS = sorted(
    name
    for name in R.__all__
    if inspect.isclass(getattr(R, name))
    and issubclass(getattr(R, name), keras.regularizers.Regularizer)
)


def test_every_regularizer_has_an_example():
    assert sorted(EXAMPLES) == REGULARIZERS


@pytest.mark.parametrize("name", REGULARIZERS)
def test_config_round_trip(name):
    regularizer = EXAMPLES[name]()
    restored = assert_round_trip(regularizer)
    w = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    assert float(restored(w)) == pytest.approx(float(regularizer(w)), rel=1e-6)


@pytest.mark.parametrize("name", REGULARIZERS)
def test_in_a_compiled_xla_fit_and_through_save_and_safe_load(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, kernel_regularizer=EXAMPLES[name]())]
    )
    model.compile("sgd", "mse", jit_compile=True)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype("float32"), np.zeros((16, 3), "float32")
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert type(loaded.layers[0].kernel_regularizer).__name__ == name
    assert float(sum(loaded.losses)) == pytest.approx(float(sum(model.losses)), rel=1e-6)
