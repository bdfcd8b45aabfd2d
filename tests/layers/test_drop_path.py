"""DropPath, ResidualBlock(drop_path=...) and mlp's linear decay, against closed forms."""

import keras
import numpy as np
import pytest

from nnkit.layers import DropPath, ResidualBlock
from nnkit.models import mlp

RATE = 0.25


def test_drops_whole_samples_and_rescales(apply):
    x = np.random.default_rng(0).normal(size=(4000, 3, 2)).astype("float32")
    y = apply(DropPath(RATE, seed=2), x, True)
    kept = np.all(y != 0, axis=(1, 2))
    dropped = np.all(y == 0, axis=(1, 2))
    assert np.all(kept | dropped), "a sample is dropped whole or kept whole"
    np.testing.assert_allclose(y[kept], x[kept] / (1 - RATE), rtol=1e-6)
    # The kept fraction is Binomial(n, 1 − rate): within 4 standard deviations.
    sd = np.sqrt(RATE * (1 - RATE) / len(x))
    assert abs(kept.mean() - (1 - RATE)) < 4 * sd


def test_expectation_is_the_identity(apply):
    """E[y] = x: the mean over n draws is within 4 σ/√n of x, σ² = x² · rate / (1 − rate)."""
    n = 20000
    x = np.array([1.0, -2.0, 0.5], "float32")
    y = apply(DropPath(RATE, seed=5), np.tile(x, (n, 1)), True)
    bound = 4 * np.abs(x) * np.sqrt(RATE / (1 - RATE) / n)
    assert np.all(np.abs(y.mean(axis=0) - x) < bound)


@pytest.mark.parametrize("training", [False, None])
def test_inference_is_the_identity(apply, training):
    x = np.random.default_rng(1).normal(size=(8, 5)).astype("float32")
    np.testing.assert_array_equal(apply(DropPath(0.9, seed=0), x, training), x)


def test_rate_zero_is_the_identity_in_training(apply):
    x = np.random.default_rng(1).normal(size=(8, 5)).astype("float32")
    np.testing.assert_array_equal(apply(DropPath(0.0), x, True), x)


def _pair(**kwargs):
    """A block with drop-path and the same block without it, sharing weights."""
    x = np.random.default_rng(2).normal(size=(400, 4)).astype("float32")
    with_drop = ResidualBlock(6, drop_path=0.5, **kwargs)
    plain = ResidualBlock(6, **kwargs)
    with_drop(x), plain(x)
    plain.set_weights(with_drop.get_weights())
    return x, with_drop, plain


@pytest.mark.parametrize("pre_activation", [False, True])
def test_residual_block_skips_the_branch_per_sample(pre_activation):
    x, block, plain = _pair(pre_activation=pre_activation)
    np.testing.assert_allclose(block(x), plain(x), rtol=1e-6)  # inference: unchanged
    shortcut = block.projection(x).numpy()
    relu = (lambda t: t) if pre_activation else (lambda t: np.maximum(t, 0))
    # The branch F(x): recover it from the plain block (identity shortcut would need
    # units == width; here the projection P is the shortcut).
    full = plain(x).numpy()
    branch = (full - shortcut) if pre_activation else None
    y = block(x, training=True).numpy()
    skipped = np.all(np.isclose(y, relu(shortcut), atol=1e-6), axis=1)
    assert 0.4 < skipped.mean() < 0.6
    if pre_activation:
        np.testing.assert_allclose(
            y[~skipped], shortcut[~skipped] + 2 * branch[~skipped], atol=1e-5
        )


def test_mlp_decays_the_rate_linearly_over_depth():
    model = mlp(4, [8, 8, 8, 8], residual=True, drop_path=0.2)
    rates = [layer.drop_path for layer in model.layers if isinstance(layer, ResidualBlock)]
    np.testing.assert_allclose(rates, [0.05, 0.1, 0.15, 0.2])
    assert [mlp(4, [8, 8], residual=True).layers[i].drop_path for i in (1, 2)] == [0.0, 0.0]
    with pytest.raises(ValueError, match="residual=True"):
        mlp(4, [8], drop_path=0.1)


def test_mlp_with_drop_path_trains_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    model = mlp(4, [8, 8], residual=True, drop_path=0.3)
    model.compile("sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert loaded.layers[2].drop_path == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("rate", "error"),
    [(1.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError), (True, TypeError)],
)
def test_rate_is_validated(rate, error):
    with pytest.raises(error, match="rate"):
        DropPath(rate)
    with pytest.raises(error, match="drop_path"):
        ResidualBlock(4, drop_path=rate)
