"""Shared checks over every public nnkit layer (discovered from ``nnkit.layers``).

Keras's own layer check (``keras.src.testing.TestCase.run_layer_test``) covers
build, symbolic and eager calls, output shapes, weight and seed-generator
counts, a compiled training step and the mixed-precision dtypes. On top of
it: config round trip, save/load inside a model with ``safe_mode=True`` and
identical predictions, and a global ``mixed_float16`` policy.
"""

import inspect

import keras
import numpy as np
import pytest
from keras.src.testing import TestCase

import nnkit.layers as LY
from nnkit.testing import assert_round_trip
from tests.examples import examples_in
from tests.layers.reference import global_dtype_policy

EXAMPLES = examples_in("layers")
LAYERS = sorted(
    name
    for name in LY.__all__
    if inspect.isclass(getattr(LY, name)) and issubclass(getattr(LY, name), keras.layers.Layer)
)
WIDTH = 16  # the examples' input width


def test_every_layer_has_an_example():
    assert sorted(EXAMPLES) == LAYERS


# (class, init kwargs, input shape, output width, trainable, non-trainable, seed generators),
# the weight counts worked out by hand from each block's formula.
CASES = [
    (LY.DenseBlock, {"units": 4}, (2, 3), 4, 2, 0, 0),  # W b
    (LY.DenseBlock, {"units": 4, "normalization": "batch", "dropout": 0.5}, (2, 3), 4, 3, 2, 1),
    (LY.DenseBlock, {"units": 4, "activation": "tanh", "normalization": "layer"}, (2, 5, 3), 4, 4, 0, 0),
    (LY.ResidualBlock, {"units": 3}, (2, 3), 3, 4, 0, 0),  # W1 b1 W2 b2
    (LY.ResidualBlock, {"units": 5, "normalization": "batch", "dropout": 0.2}, (2, 3), 5, 7, 4, 1),
    (
        LY.ResidualBlock,
        {"units": 5, "pre_activation": True, "normalization": "layer", "zero_init_residual": True},
        (2, 5, 3), 5, 9, 0, 0,  # γ1 β1 W1 b1 γ2 β2 W2 b2 P
    ),
    (LY.MCDropout, {"rate": 0.3, "seed": 1}, (2, 3), 3, 0, 0, 1),
    (LY.DropPath, {"rate": 0.3, "seed": 1}, (2, 5, 3), 3, 0, 0, 1),
    (LY.ResidualBlock, {"units": 3, "drop_path": 0.2}, (2, 3), 3, 4, 0, 1),  # W1 b1 W2 b2, S
]  # fmt: skip


@pytest.mark.filterwarnings(
    # run_layer_test fits on a Python generator with fit's default shuffle=True;
    # Keras warns about its own test harness, not about these layers.
    "ignore:`shuffle=True` was passed:UserWarning"
)
@pytest.mark.parametrize(
    "cls, kwargs, input_shape, width, trainable, non_trainable, seeds",
    CASES,
    ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)],
)
def test_keras_layer_checks(cls, kwargs, input_shape, width, trainable, non_trainable, seeds):
    TestCase().run_layer_test(
        cls,
        kwargs,
        input_shape=input_shape,
        expected_output_shape=(*input_shape[:-1], width),
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable,
        expected_num_seed_generators=seeds,
        expected_num_losses=0,
        run_training_check=trainable > 0,  # MCDropout has nothing to train
        run_mixed_precision_check=True,
    )


@pytest.mark.parametrize("name", LAYERS)
def test_config_round_trip(name):
    assert_round_trip(EXAMPLES[name]())


def _model(layer):
    return keras.Sequential([keras.Input((WIDTH,)), layer, keras.layers.Dense(2)])


def _predict(model, x):
    if any(isinstance(layer, LY.MCDropout) for layer in model._flatten_layers()):
        return LY.mc_predict(model, x, passes=4, seed=0)[0]
    return model.predict(x, verbose=0)


@pytest.mark.parametrize("name", LAYERS)
def test_saved_in_a_model_and_loaded_safely_with_identical_predictions(name, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, WIDTH)).astype("float32")
    model = _model(EXAMPLES[name]())
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, rng.normal(size=(32, 2)), batch_size=8, epochs=1, verbose=0)  # off the init
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.layers[0]) is type(model.layers[0])
    assert loaded.layers[0].get_config() == model.layers[0].get_config()
    for before, after in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(_predict(loaded, x), _predict(model, x))


@pytest.mark.parametrize("name", LAYERS)
def test_mixed_precision_computes_in_float16_and_keeps_float32_variables(name):
    x = np.random.default_rng(1).normal(size=(4, WIDTH)).astype("float32")
    with global_dtype_policy("mixed_float16"):
        layer = EXAMPLES[name]()
        y = layer(x, training=True)
        layer(x, training=False)
    assert keras.config.dtype_policy().name == "float32", "policy restored"
    assert layer.compute_dtype == "float16" and layer.variable_dtype == "float32"
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert np.all(np.isfinite(np.asarray(y)))
    for sublayer in layer._flatten_layers():
        assert sublayer.compute_dtype == "float16", sublayer.name
    for weight in layer.weights:
        assert weight.dtype == "float32", weight.path
