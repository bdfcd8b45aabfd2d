"""ResidualBlock against closed forms written here with numpy."""

import keras
import numpy as np
import pytest

from nnkit.layers import ResidualBlock
from tests.layers.reference import batch_norm, layer_norm, relu

RNG = np.random.default_rng(1)


def _x(width, rows=8):
    return RNG.normal(size=(rows, width)).astype("float32")


def _eager(layer, x, training):
    return np.asarray(layer(x, training=training))


def _numpy(layer):
    return None if layer is None else [np.asarray(w) for w in layer.weights]


def _affine(x, dense):
    kernel, *bias = _numpy(dense)
    return x @ kernel + (bias[0] if bias else 0.0)


def _normalize(h, norm, kind, training):
    if kind is None:
        return h
    if kind == "layer":
        gamma, beta = _numpy(norm)
        return layer_norm(h, gamma, beta)
    gamma, beta, moving_mean, moving_var = _numpy(norm)
    if training:
        return batch_norm(h, gamma, beta, h.mean(0), h.var(0))
    return batch_norm(h, gamma, beta, moving_mean, moving_var)


def _reference(block, x, training):
    """The block's formula, written out from its weights (relu activation, no dropout)."""
    kind = block.normalization
    shortcut = x if block.projection is None else _affine(x, block.projection)
    if block.pre_activation:
        h = _affine(relu(_normalize(x, block.norm_1, kind, training)), block.dense_1)
        h = relu(_normalize(h, block.norm_2, kind, training))
        return shortcut + _affine(h, block.dense_2)
    h = relu(_normalize(_affine(x, block.dense_1), block.norm_1, kind, training))
    return relu(shortcut + _normalize(_affine(h, block.dense_2), block.norm_2, kind, training))


def _perturb(block):
    """Move γ and β off their (1, 0) start so the normalizations are really checked."""
    for norm in (block.norm_1, block.norm_2):
        if norm is not None:
            norm.gamma.assign(RNG.uniform(0.5, 1.5, norm.gamma.shape).astype("float32"))
            norm.beta.assign(RNG.normal(0, 0.1, norm.beta.shape).astype("float32"))


def _check_formula(apply, pre_activation, normalization, in_width):
    block = ResidualBlock(5, normalization=normalization, pre_activation=pre_activation)
    x = _x(in_width)
    block.build(x.shape)
    _perturb(block)
    assert (block.projection is None) == (in_width == 5)
    for training in (False, True):
        np.testing.assert_allclose(
            apply(block, x, training), _reference(block, x, training), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("pre_activation", [False, True], ids=["post", "pre"])
@pytest.mark.parametrize("normalization", [None, "batch", "layer"])
@pytest.mark.parametrize("in_width", [5, 3], ids=["identity", "projection"])
def test_matches_the_formula(pre_activation, normalization, in_width):
    _check_formula(_eager, pre_activation, normalization, in_width)


@pytest.mark.parametrize("pre_activation", [False, True], ids=["post", "pre"])
def test_matches_the_formula_compiled(apply, pre_activation):
    _check_formula(apply, pre_activation, "batch", 3)


def _check_starts_as_shortcut(apply, pre_activation, normalization, in_width):
    block = ResidualBlock(
        6, normalization=normalization, pre_activation=pre_activation, zero_init_residual=True
    )
    x = _x(in_width)
    block.build(x.shape)
    shortcut = x if block.projection is None else x @ np.asarray(block.projection.kernel)
    want = shortcut if pre_activation else relu(shortcut)
    for training in (False, True):
        np.testing.assert_allclose(apply(block, x, training), want, rtol=1e-5, atol=1e-6)
    assert np.any(np.asarray(block.dense_1.kernel) != 0), "only the end of F is zeroed"


@pytest.mark.parametrize("pre_activation", [False, True], ids=["post", "pre"])
@pytest.mark.parametrize("normalization", [None, "batch", "layer"])
@pytest.mark.parametrize("in_width", [6, 4], ids=["identity", "projection"])
def test_zero_init_residual_starts_as_the_shortcut(pre_activation, normalization, in_width):
    _check_starts_as_shortcut(_eager, pre_activation, normalization, in_width)


@pytest.mark.parametrize("pre_activation", [False, True], ids=["post", "pre"])
def test_zero_init_residual_starts_as_the_shortcut_compiled(apply, pre_activation):
    _check_starts_as_shortcut(apply, pre_activation, "batch", 4)


def test_zero_init_zeroes_the_last_scale_with_normalization_else_the_last_kernel():
    post_bn = ResidualBlock(4, normalization="batch", zero_init_residual=True)
    post_bn.build((None, 4))
    np.testing.assert_array_equal(post_bn.norm_2.gamma, np.zeros(4))
    np.testing.assert_array_equal(post_bn.norm_1.gamma, np.ones(4))
    assert np.any(np.asarray(post_bn.dense_2.kernel) != 0)
    for kwargs in ({}, {"pre_activation": True, "normalization": "layer"}):
        block = ResidualBlock(4, zero_init_residual=True, **kwargs)
        block.build((None, 4))
        np.testing.assert_array_equal(block.dense_2.kernel, np.zeros((4, 4)))


def test_without_zero_init_the_block_is_not_the_identity():
    x = _x(4)
    assert not np.allclose(ResidualBlock(4, pre_activation=True)(x), x, atol=1e-3)


@pytest.mark.parametrize(
    "pre_activation, normalization, in_width, trainable, non_trainable",
    [
        (False, None, 5, 4, 0),  # W1 b1 W2 b2
        (False, None, 3, 5, 0),  # + P
        (False, "batch", 3, 7, 4),  # W1 γ1 β1 W2 γ2 β2 P; moving m/v twice
        (False, "layer", 5, 8, 0),  # W1 b1 γ1 β1 W2 b2 γ2 β2
        (True, "batch", 3, 8, 4),  # γ1 β1 W1 γ2 β2 W2 b2 P
        (True, "layer", 5, 8, 0),
        (True, None, 3, 5, 0),
    ],
)
def test_weight_counts(pre_activation, normalization, in_width, trainable, non_trainable):
    block = ResidualBlock(5, normalization=normalization, pre_activation=pre_activation)
    block.build((None, in_width))
    assert len(block.trainable_weights) == trainable
    assert len(block.non_trainable_weights) == non_trainable


def test_parameter_count_closed_form():
    fan_in, units = 3, 5
    post = ResidualBlock(units, normalization="batch")
    post.build((None, fan_in))
    # W1, BN1 (γ β m v), W2, BN2, bias-free projection.
    assert (
        post.count_params()
        == fan_in * units + 4 * units + units * units + 4 * units + fan_in * units
    )
    pre = ResidualBlock(units, normalization="batch", pre_activation=True)
    pre.build((None, fan_in))
    # BN1 on the input, W1 (no bias: BN2 follows), BN2, W2 + b2, projection.
    assert pre.count_params() == (
        4 * fan_in + fan_in * units + 4 * units + units * units + units + fan_in * units
    )


def test_projection_has_no_bias_and_uses_the_linear_initializer():
    block = ResidualBlock(8, activation="relu")
    block.build((None, 3))
    assert not block.projection.use_bias
    assert type(block.projection.kernel_initializer).__name__.startswith("Glorot")
    for dense in (block.dense_1, block.dense_2):
        assert type(dense.kernel_initializer).__name__.startswith("He")
    given = ResidualBlock(8, kernel_initializer="lecun_normal")
    given.build((None, 3))
    for dense in (given.dense_1, given.dense_2, given.projection):
        assert isinstance(dense.kernel_initializer, keras.initializers.LecunNormal)


@pytest.mark.parametrize("kernel_initializer", [None, "he_normal"])
def test_same_shaped_kernels_start_different(kernel_initializer):
    # An unseeded Keras initializer repeats its values; each kernel needs its own.
    block = ResidualBlock(6, kernel_initializer=kernel_initializer)
    block.build((None, 6))
    assert not np.allclose(block.dense_1.kernel, block.dense_2.kernel)


def test_dropout_sits_in_the_branch_and_is_off_at_inference():
    block = ResidualBlock(16, dropout=0.5)
    x = _x(16)
    block.build(x.shape)
    np.testing.assert_allclose(block(x, training=False), _reference(block, x, False), rtol=1e-5)
    assert not np.allclose(block(x, training=True), _reference(block, x, False))


def test_kernel_regularizer_applies_to_every_kernel():
    block = ResidualBlock(
        2, kernel_initializer="ones", kernel_regularizer=keras.regularizers.L2(0.5)
    )
    block(_x(3))
    # 0.5 · (ΣW1² + ΣW2² + ΣP²) with all-ones 3×2, 2×2 and 3×2 kernels.
    assert float(sum(block.losses)) == pytest.approx(0.5 * (6 + 4 + 6))


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"units": -1}, ValueError, "units=-1"),
        ({"units": None}, TypeError, "units=None"),
        ({"units": 4, "pre_activation": 1}, TypeError, "pre_activation=1"),
        ({"units": 4, "zero_init_residual": "yes"}, TypeError, "zero_init_residual='yes'"),
        ({"units": 4, "dropout": 1.5}, ValueError, "dropout=1.5"),
        ({"units": 4, "dropout": float("inf")}, ValueError, "dropout=inf"),
        ({"units": 4, "activation": "rel"}, ValueError, "activation='rel'"),
        ({"units": 4, "normalization": "instance"}, ValueError, "normalization='instance'"),
    ],
)
def test_bad_arguments(kwargs, error, fragment):
    with pytest.raises(error, match="Received") as info:
        ResidualBlock(**kwargs)
    assert fragment in str(info.value)
