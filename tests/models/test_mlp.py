"""nnkit.models.mlp: shapes, parameter counts from closed forms, saving, training."""

import json

import keras
import numpy as np
import pytest

import nnkit.layers  # noqa: F401  (registers nnkit's layers for load_model)
from nnkit.layers import DenseBlock, ResidualBlock
from nnkit.models import mlp
from tests.layers.reference import global_dtype_policy


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _plain_params(input_dim, widths, out, normalization=None):
    """Σ over blocks of (kernel + bias or BN's 4 vectors or LN's 2 + bias) plus the head."""
    total, fan_in = 0, input_dim
    for w in widths:
        total += fan_in * w
        total += {None: w, "layer": w + 2 * w, "batch": 4 * w}[normalization]
        fan_in = w
    return total + fan_in * out + out


def _residual_params(input_dim, widths, out):
    """Per block: W1 + b1 + W2 + b2, plus a bias-free projection when the width changes."""
    total, fan_in = 0, input_dim
    for w in widths:
        total += fan_in * w + w + w * w + w + (fan_in * w if fan_in != w else 0)
        fan_in = w
    return total + fan_in * out + out


@pytest.mark.parametrize("normalization", [None, "batch", "layer"])
def test_plain_shapes_and_parameter_count(normalization):
    model = mlp(7, [16, 8, 8], normalization=normalization, output_units=3)
    assert model.input_shape == (None, 7) and model.output_shape == (None, 3)
    assert model.count_params() == _plain_params(7, [16, 8, 8], 3, normalization)
    assert [type(layer) for layer in model.layers[1:-1]] == [DenseBlock] * 3
    y = model(np.zeros((5, 7), "float32"))
    assert y.shape == (5, 3)


def test_residual_shapes_parameter_count_and_projections():
    widths = [16, 16, 8]
    model = mlp(7, widths, residual=True, output_units=2)
    assert model.output_shape == (None, 2)
    assert model.count_params() == _residual_params(7, widths, 2)
    blocks = model.layers[1:-1]
    assert [type(b) for b in blocks] == [ResidualBlock] * 3
    # 7 → 16 and 16 → 8 change width; 16 → 16 keeps the identity shortcut.
    assert [b.projection is not None for b in blocks] == [True, False, True]


def test_no_output_layer_returns_the_last_block():
    model = mlp(4, [6, 5], output_units=None)
    assert model.output_shape == (None, 5)
    assert model.count_params() == 4 * 6 + 6 + 6 * 5 + 5


def test_block_arguments_reach_every_block():
    model = mlp(3, [4, 4], activation="tanh", normalization="layer", dropout=0.2, name="net")
    assert model.name == "net"
    for block in model.layers[1:-1]:
        assert (block.activation, block.normalization, block.dropout) == ("tanh", "layer", 0.2)
        assert type(block.dense_layer.kernel_initializer).__name__ == "GlorotUniform"
    head = model.get_layer("output")
    assert head.activation is keras.activations.linear


def test_kernel_regularizer_penalizes_every_kernel_with_the_head():
    model = mlp(3, [4, 4], residual=True, kernel_regularizer=keras.regularizers.L2(1e-3))
    model(np.zeros((1, 3), "float32"))
    kernels = [w for w in model.trainable_weights if w.path.endswith("kernel")]
    assert len(kernels) == 2 * 2 + 1 + 1  # W1, W2 per block, one projection, the head
    want = 1e-3 * sum(float(np.sum(np.asarray(k) ** 2)) for k in kernels)
    assert float(sum(model.losses)) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_saves_and_loads_with_safe_mode_and_identical_predictions(residual, tmp_path):
    model = mlp(5, [8, 6], normalization="batch", dropout=0.3, residual=residual,
                output_units=2, output_activation="softmax")  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype("float32")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, rng.integers(0, 2, size=40), batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "mlp.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # Through JSON: Keras writes build shapes as tuples and reads them back as lists.
    assert json.loads(json.dumps(loaded.get_config())) == json.loads(json.dumps(model.get_config()))


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_trains_on_a_small_synthetic_problem(residual):
    # Two classes split by a circle: not linearly separable, easy for an MLP.
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(256, 2)).astype("float32")
    y = (np.sum(x**2, axis=1) < 0.5).astype("int32")
    model = mlp(2, [32, 32], residual=residual, output_units=2)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(x, y, batch_size=32, epochs=10, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert model.evaluate(x, y, verbose=0)[1] > 0.9


def test_mixed_precision_keeps_the_output_in_float32():
    with global_dtype_policy("mixed_float16"):
        model = mlp(3, [4], residual=True, output_units=2)
    y = model(np.ones((2, 3), "float32"))
    assert model.layers[1].compute_dtype == "float16"
    assert model.get_layer("output").compute_dtype == "float32"
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    assert all(w.dtype == "float32" for w in model.weights)


@pytest.mark.parametrize(
    "args, kwargs, error, fragment",
    [
        ((0, [4]), {}, ValueError, "input_dim=0"),
        ((True, [4]), {}, TypeError, "input_dim=True"),
        ((3, []), {}, ValueError, "widths=[]"),
        ((3, 16), {}, TypeError, "widths=16"),
        ((3, "16"), {}, TypeError, "widths='16'"),
        ((3, [16, 0]), {}, ValueError, "widths[1]=0"),
        ((3, [16, 2.5]), {}, ValueError, "widths[1]=2.5"),
        ((3, [4]), {"residual": "yes"}, TypeError, "residual='yes'"),
        ((3, [4]), {"output_units": 0}, ValueError, "output_units=0"),
        ((3, [4]), {"output_activation": "sofmax"}, ValueError, "output_activation='sofmax'"),
        ((3, [4]), {"name": 3}, TypeError, "name=3"),
        ((3, [4]), {"dropout": 1.0}, ValueError, "dropout=1.0"),
        ((3, [4]), {"normalization": "batchnorm"}, ValueError, "normalization='batchnorm'"),
    ],
)
def test_bad_arguments(args, kwargs, error, fragment):
    with pytest.raises(error, match="Received") as info:
        mlp(*args, **kwargs)
    assert fragment in str(info.value)
