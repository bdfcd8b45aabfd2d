"""MCDropout and mc_predict against closed forms written here."""

import keras
import numpy as np
import pytest

from nnkit.layers import DenseBlock, MCDropout, mc_predict

RATE = 0.3


def _check_drops_and_rescales(apply, training):
    layer = MCDropout(RATE, seed=3)
    x = np.ones((50, 40), "float32")
    first, second = apply(layer, x, training), apply(layer, x, training)
    for y in (first, second):
        # Inverted dropout: each unit is 0 or x / (1 - rate).
        np.testing.assert_allclose(np.unique(y), [0.0, 1 / (1 - RATE)], rtol=1e-6)
        assert (y == 0).mean() == pytest.approx(RATE, abs=0.05)
    assert not np.array_equal(first, second), "a new mask on every pass"


def test_drops_and_rescales_at_inference_too(apply):
    _check_drops_and_rescales(apply, training=False)


@pytest.mark.parametrize("training", [None, True])
def test_ignores_the_training_flag(training):
    _check_drops_and_rescales(lambda layer, x, t: np.asarray(layer(x, training=t)), training)


def test_rate_zero_is_the_identity():
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    np.testing.assert_array_equal(MCDropout(0.0)(x), x)


def test_noise_shape_shares_the_mask():
    y = np.asarray(MCDropout(0.5, noise_shape=(1, 30), seed=0)(np.ones((8, 30), "float32")))
    np.testing.assert_array_equal(y, np.broadcast_to(y[:1], y.shape))


def _linear_model(rate, in_dim=6, out_dim=2):
    model = keras.Sequential(
        [keras.Input((in_dim,)), MCDropout(rate, seed=7), keras.layers.Dense(out_dim)]
    )
    rng = np.random.default_rng(5)
    kernel = rng.normal(size=(in_dim, out_dim)).astype("float32")
    bias = rng.normal(size=(out_dim,)).astype("float32")
    model.layers[-1].set_weights([kernel, bias])
    return model, kernel, bias


def test_mean_and_std_match_the_closed_form_for_a_linear_model():
    passes, rate = 4000, 0.2
    model, kernel, bias = _linear_model(rate)
    x = np.random.default_rng(6).normal(size=(3, 6)).astype("float32")
    mean, std = mc_predict(model, x, passes=passes, seed=0)
    # y = (m ⊙ x / (1 - p)) W + b, m_i ~ Bernoulli(1 - p) independent:
    # E[y] = x W + b;  Var[y_k] = Σ_i x_i² W_ik² · p / (1 - p).
    want_mean = x @ kernel + bias
    want_std = np.sqrt((x**2) @ (kernel**2) * rate / (1 - rate))
    assert mean.shape == std.shape == (3, 2)
    np.testing.assert_array_less(np.abs(mean - want_mean), 5 * want_std / np.sqrt(passes))
    np.testing.assert_allclose(std, want_std, rtol=0.1)


def test_rate_zero_gives_zero_std_and_the_deterministic_prediction():
    model, kernel, bias = _linear_model(0.0)
    x = np.random.default_rng(2).normal(size=(5, 6)).astype("float32")
    mean, std = mc_predict(model, x, passes=4)
    np.testing.assert_allclose(mean, x @ kernel + bias, rtol=1e-5, atol=1e-6)
    # Zero up to float32 rounding: the passes are rows of one tiled batch, and a
    # matmul may round a row differently by its position in the batch (seen:
    # 1.2e-7 on 2 CPU cores with TensorFlow 2.21).
    np.testing.assert_allclose(std, np.zeros((5, 2)), atol=1e-6)


def test_seed_makes_calls_repeatable_and_leaves_the_generators_as_they_were():
    model, _, _ = _linear_model(0.5)
    x = np.ones((4, 6), "float32")
    state = np.asarray(model.layers[0].seed_generator.state)
    first = mc_predict(model, x, passes=5, seed=11)
    np.testing.assert_array_equal(model.layers[0].seed_generator.state, state)
    again = mc_predict(model, x, passes=5, seed=11)
    other = mc_predict(model, x, passes=5, seed=12)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    unseeded = [mc_predict(model, x, passes=5)[0] for _ in range(2)]
    assert not np.array_equal(*unseeded), "without a seed every call draws new masks"


def test_batches_and_passes_are_independent_draws():
    model, _, _ = _linear_model(0.5)
    x = np.ones((8, 6), "float32")  # identical rows
    mean, std = mc_predict(model, x, passes=3, batch_size=4, seed=0)
    assert len({tuple(row) for row in mean.round(5)}) == 8
    assert np.all(std > 0)


def test_other_layers_stay_in_inference_mode():
    model = keras.Sequential(
        [keras.Input((4,)), DenseBlock(8, normalization="batch", dropout=0.5), MCDropout(0.0)]
    )
    x = np.random.default_rng(3).normal(size=(6, 4)).astype("float32")
    model(x, training=True)  # moves the moving statistics off their start
    mean, std = mc_predict(model, x, passes=3)
    # Batch norm on moving statistics and plain dropout off: exactly predict().
    np.testing.assert_allclose(mean, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, 0.0, atol=1e-6)  # (x + x + x) / 3 may round off x


def test_multi_output_models_give_nested_moments():
    inputs = keras.Input((3,))
    hidden = MCDropout(0.5, seed=1)(inputs)
    model = keras.Model(
        inputs, {"a": keras.layers.Dense(2)(hidden), "b": keras.layers.Dense(1)(hidden)}
    )
    mean, std = mc_predict(model, np.ones((4, 3), "float32"), passes=6, seed=0)
    assert mean["a"].shape == std["a"].shape == (4, 2)
    assert mean["b"].shape == std["b"].shape == (4, 1)


def test_float16_outputs_give_float32_moments():
    model = keras.Sequential(
        [keras.Input((3,)), MCDropout(0.5, dtype="mixed_float16"),
         keras.layers.Dense(2, dtype="mixed_float16")]
    )  # fmt: skip
    mean, std = mc_predict(model, np.ones((4, 3), "float32"), passes=4, seed=0)
    assert mean.dtype == std.dtype == np.float32


def test_needs_an_mc_dropout_layer():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="no MCDropout layer.*Received: model="):
        mc_predict(model, np.ones((2, 3), "float32"))


def test_rejects_a_mask_shared_across_the_batch():
    model = keras.Sequential([keras.Input((3,)), MCDropout(0.5, noise_shape=(1, 3))])
    with pytest.raises(ValueError, match=r"Received: noise_shape=\(1, 3\)"):
        mc_predict(model, np.ones((2, 3), "float32"))
    shared_per_row = keras.Sequential([keras.Input((3,)), MCDropout(0.5, noise_shape=(None, 1))])
    mean, std = mc_predict(shared_per_row, np.ones((2, 3), "float32"), passes=8, seed=0)
    np.testing.assert_array_equal(mean, np.broadcast_to(mean[:, :1], mean.shape))  # per row


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"passes": 1}, ValueError, "passes=1"),
        ({"passes": 2.5}, ValueError, "passes=2.5"),
        ({"passes": True}, TypeError, "passes=True"),
        ({"seed": -1}, ValueError, "seed=-1"),
        ({"seed": "0"}, TypeError, "seed='0'"),
        ({"batch_size": True}, TypeError, "batch_size=True"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"batch_size": -1}, ValueError, "batch_size=-1"),
        ({"batch_size": 2.5}, ValueError, "batch_size=2.5"),
    ],
)
def test_mc_predict_bad_arguments(kwargs, error, fragment):
    model, _, _ = _linear_model(0.5)
    with pytest.raises(error, match="Received") as info:
        mc_predict(model, np.ones((2, 6), "float32"), **kwargs)
    assert fragment in str(info.value)


def test_mc_predict_names_batch_size_when_it_is_a_flag_or_zero():
    model, _, _ = _linear_model(0.5)
    with pytest.raises(
        TypeError, match="`batch_size` must be an integer.*Received: batch_size=True"
    ):
        mc_predict(model, np.ones((2, 6), "float32"), batch_size=True)
    with pytest.raises(ValueError, match="`batch_size` must be >= 1. Received: batch_size=0"):
        mc_predict(model, np.ones((2, 6), "float32"), batch_size=0)


def test_mc_predict_rejects_a_non_model():
    with pytest.raises(TypeError, match="Received: model="):
        mc_predict(MCDropout(0.5), np.ones((2, 3), "float32"))


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"rate": 1.0}, ValueError, "rate=1.0"),
        ({"rate": -0.5}, ValueError, "rate=-0.5"),
        ({"rate": float("nan")}, ValueError, "rate=nan"),
        ({"rate": True}, TypeError, "rate=True"),
        ({"rate": "0.5"}, TypeError, "rate='0.5'"),
        ({"rate": 0.5, "seed": -3}, ValueError, "seed=-3"),
        ({"rate": 0.5, "seed": 1.5}, ValueError, "seed=1.5"),
    ],
)
def test_layer_bad_arguments(kwargs, error, fragment):
    with pytest.raises(error, match="Received") as info:
        MCDropout(**kwargs)
    assert fragment in str(info.value)
