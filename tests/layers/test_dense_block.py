"""DenseBlock against closed forms written here with numpy."""

import keras
import numpy as np
import pytest

from nnkit.layers import DenseBlock
from nnkit.testing import assert_round_trip
from tests.layers.reference import batch_norm, layer_norm, relu

RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 3)).astype("float32")


def _dense(block, x):
    kernel = np.asarray(block.dense_layer.kernel)
    bias = np.asarray(block.dense_layer.bias) if block.dense_layer.use_bias else 0.0
    return x @ kernel + bias


@pytest.mark.parametrize("activation, phi", [("relu", relu), ("tanh", np.tanh), (None, None)])
def test_no_normalization_is_activation_of_affine_map(apply, activation, phi):
    block = DenseBlock(4, activation=activation)
    block.build(X.shape)
    want = _dense(block, X)
    want = want if phi is None else phi(want)
    for training in (False, True):
        np.testing.assert_allclose(apply(block, X, training), want, rtol=1e-5, atol=1e-6)


def test_batch_norm_uses_batch_statistics_in_training_and_moving_ones_at_inference(apply):
    block = DenseBlock(4, normalization="batch")
    block.build(X.shape)
    bn = block.norm_layer
    bn.gamma.assign(np.array([1.0, 2.0, 0.5, 1.5], "float32"))
    bn.beta.assign(np.array([0.1, -0.2, 0.3, 0.0], "float32"))
    gamma, beta = np.asarray(bn.gamma), np.asarray(bn.beta)
    h = _dense(block, X)

    trained = apply(block, X, True)
    np.testing.assert_allclose(
        trained, relu(batch_norm(h, gamma, beta, h.mean(0), h.var(0))), rtol=1e-4, atol=1e-5
    )
    # One update from the initial (0, 1): m ← 0.99·m + 0.01·batch statistic.
    np.testing.assert_allclose(bn.moving_mean, 0.01 * h.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance, 0.99 + 0.01 * h.var(0), rtol=1e-4)

    moving_mean, moving_var = np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)
    inferred = apply(block, X, False)
    np.testing.assert_allclose(
        inferred, relu(batch_norm(h, gamma, beta, moving_mean, moving_var)), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(bn.moving_mean, moving_mean)  # inference updates nothing


def test_layer_norm_normalizes_each_example(apply):
    block = DenseBlock(5, activation="tanh", normalization="layer")
    block.build(X.shape)
    block.norm_layer.gamma.assign(np.linspace(0.5, 1.5, 5).astype("float32"))
    gamma, beta = np.asarray(block.norm_layer.gamma), np.asarray(block.norm_layer.beta)
    want = np.tanh(layer_norm(_dense(block, X), gamma, beta))
    for training in (False, True):
        np.testing.assert_allclose(apply(block, X, training), want, rtol=1e-4, atol=1e-5)


def test_dropout_scales_kept_units_in_training_and_is_off_at_inference(apply):
    x = np.abs(RNG.normal(size=(64, 3))).astype("float32") + 0.1
    block = DenseBlock(32, activation=None, dropout=0.5, kernel_initializer="ones")
    block.build(x.shape)
    full = _dense(block, x)  # all entries > 0
    np.testing.assert_allclose(apply(block, x, False), full, rtol=1e-5)
    np.testing.assert_allclose(apply(block, x, None), full, rtol=1e-5)
    dropped = apply(block, x, True)
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], full[kept] / (1 - 0.5), rtol=1e-5)
    assert 0.35 < kept.mean() < 0.65


def test_bias_is_dropped_only_before_batch_norm():
    assert DenseBlock(3).dense_layer.use_bias
    assert DenseBlock(3, normalization="layer").dense_layer.use_bias
    assert not DenseBlock(3, normalization="batch").dense_layer.use_bias


@pytest.mark.parametrize(
    "normalization, dropout, trainable, non_trainable",
    [(None, 0.0, 2, 0), (None, 0.3, 2, 0), ("layer", 0.0, 4, 0), ("batch", 0.3, 3, 2)],
)
def test_weight_counts(normalization, dropout, trainable, non_trainable):
    block = DenseBlock(7, normalization=normalization, dropout=dropout)
    block.build((None, 5))
    assert len(block.trainable_weights) == trainable
    assert len(block.non_trainable_weights) == non_trainable
    bias = 0 if normalization == "batch" else 7
    scale_shift = 0 if normalization is None else 2 * 7
    moving = 2 * 7 if normalization == "batch" else 0
    assert block.count_params() == 5 * 7 + bias + scale_shift + moving


# Var(W) of each rule, written from its definition (fan_in = 400, fan_out = 300).
FAN_IN, FAN_OUT = 400, 300
HE, GLOROT, LECUN = 2 / FAN_IN, 2 / (FAN_IN + FAN_OUT), 1 / FAN_IN


@pytest.mark.parametrize(
    "activation, family, variance",
    [
        ("relu", "He", HE),
        ("leaky_relu", "VarianceScaling", HE / (1 + 0.2**2)),  # slope a = 0.2: 2 / ((1 + a²) n)
        ("tanh", "Glorot", GLOROT),
        ("sigmoid", "Glorot", GLOROT),
        ("softmax", "Glorot", GLOROT),
        ("selu", "Lecun", LECUN),
    ],
)
def test_kernel_initializer_is_chosen_from_the_activation(activation, family, variance):
    block = DenseBlock(FAN_OUT, activation=activation)
    assert type(block.dense_layer.kernel_initializer).__name__.startswith(family)
    block.build((None, FAN_IN))
    assert np.var(np.asarray(block.dense_layer.kernel)) == pytest.approx(variance, rel=0.05)
    assert block.get_config()["kernel_initializer"] is None  # chosen again on load


def test_given_initializer_and_regularizer_are_used_and_serialized():
    def make():
        return DenseBlock(
            3, kernel_initializer="ones", kernel_regularizer=keras.regularizers.L2(0.1)
        )

    block = make()
    assert isinstance(block.dense_layer.kernel_initializer, keras.initializers.Ones)
    block(X)
    # L2 penalty: 0.1 · Σ W² with W all ones (3 × 3).
    assert float(sum(block.losses)) == pytest.approx(0.1 * 9)
    # Unbuilt: a built layer's build_config holds a tuple, which JSON turns into a list.
    restored = assert_round_trip(make())
    assert isinstance(restored.dense_layer.kernel_initializer, keras.initializers.Ones)
    assert restored.kernel_regularizer.get_config() == {"l2": 0.1}


def test_summary_before_the_first_call_lists_every_weight():
    model = keras.Sequential([keras.Input((3,)), DenseBlock(4, normalization="batch")])
    assert model.count_params() == 3 * 4 + 4 * 4  # kernel, γ, β, moving mean/variance
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    assert "DenseBlock" in "\n".join(lines)


def test_rejects_an_input_without_a_static_width():
    with pytest.raises(ValueError, match=r"Received: input_shape=\(None, None\)"):
        DenseBlock(3).build((None, None))


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"units": 0}, ValueError, "units=0"),
        ({"units": 2.5}, ValueError, "units=2.5"),
        ({"units": True}, TypeError, "units=True"),
        ({"units": 3, "activation": "relux"}, ValueError, "activation='relux'"),
        ({"units": 3, "activation": np.tanh}, TypeError, "activation=<ufunc 'tanh'>"),
        ({"units": 3, "normalization": "group"}, ValueError, "normalization='group'"),
        ({"units": 3, "normalization": True}, ValueError, "normalization=True"),
        ({"units": 3, "dropout": 1.0}, ValueError, "dropout=1.0"),
        ({"units": 3, "dropout": -0.1}, ValueError, "dropout=-0.1"),
        ({"units": 3, "dropout": float("nan")}, ValueError, "dropout=nan"),
        ({"units": 3, "dropout": False}, TypeError, "dropout=False"),
        ({"units": 3, "kernel_initializer": "he_nrmal"}, ValueError, "kernel_initializer='he_nrmal'"),
        ({"units": 3, "kernel_regularizer": "l3"}, ValueError, "kernel_regularizer='l3'"),
    ],
)  # fmt: skip
def test_bad_arguments(kwargs, error, fragment):
    with pytest.raises(error, match="Received") as info:
        DenseBlock(**kwargs)
    assert fragment in str(info.value)


def test_activation_without_a_standard_initializer_needs_an_explicit_one():
    with pytest.raises(ValueError, match="kernel_initializer.*Received: activation='softplus'"):
        DenseBlock(3, activation="softplus")
    block = DenseBlock(3, activation="softplus", kernel_initializer="glorot_normal")
    assert isinstance(block.dense_layer.kernel_initializer, keras.initializers.GlorotNormal)


def test_unknown_normalization_error_lists_none():
    # Issue 15 #13: the message left out that None (no normalization) is allowed.
    with pytest.raises(
        ValueError, match=r"'batch', 'layer' or None\. Received: normalization='group'"
    ):
        DenseBlock(4, normalization="group")
