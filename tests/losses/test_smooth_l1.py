"""SmoothL1 against the PyTorch formula written here in plain Python, and against Keras's Huber."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.losses import SmoothL1, smooth_l1
from tests.losses.reference import REDUCTIONS, keras_reduction


def smooth_l1_reference(y_true, y_pred, beta):
    """Per-sample smooth L1 (mean over the last axis), element by element in Python."""
    y_true, y_pred = np.asarray(y_true, "float64"), np.asarray(y_pred, "float64")
    out = np.zeros(y_pred.shape[:-1])
    for index in np.ndindex(out.shape):
        terms = []
        for t, p in zip(y_true[index], y_pred[index], strict=True):
            x = abs(p - t)
            terms.append(0.5 * x * x / beta if x < beta else x - 0.5 * beta)
        out[index] = sum(terms) / len(terms)
    return out


def _data(batch=6, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    y_true = rng.normal(size=(batch, dim)).astype("float32")
    y_pred = (y_true + rng.normal(scale=1.5, size=(batch, dim))).astype("float32")
    weights = rng.uniform(0.0, 2.0, size=(batch,)).astype("float32")
    return y_true, y_pred, weights


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS, ids=str)
def test_every_reduction_matches_the_closed_form(evaluate, reduction, weighted):
    y_true, y_pred, weights = _data()
    weights = weights if weighted else None
    got = evaluate(SmoothL1(0.7, reduction=reduction), y_true, y_pred, weights)
    want = keras_reduction(smooth_l1_reference(y_true, y_pred, 0.7), weights, reduction)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.1, 1.0, 3.0])
def test_functional_form_is_per_sample(beta):
    y_true, y_pred, _ = _data()
    got = np.asarray(smooth_l1(y_true, y_pred, beta=beta))
    if beta == 0.0:
        want = np.abs(y_pred - y_true).astype("float64").mean(-1)
    else:
        want = smooth_l1_reference(y_true, y_pred, beta)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_values_on_both_sides_of_beta():
    # |x| = 0.5 < 1: 0.5·0.25/1; |x| = 3: 3 - 0.5; |x| = beta exactly: linear branch = 0.5.
    got = np.asarray(smooth_l1([[0.0], [0.0], [0.0]], [[0.5], [-3.0], [1.0]], beta=1.0))
    np.testing.assert_allclose(got, [0.125, 2.5, 0.5], rtol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=str)
@pytest.mark.parametrize("beta", [0.25, 1.0, 2.5])
def test_equals_keras_huber_divided_by_beta(beta, reduction):
    y_true, y_pred, weights = _data(seed=1)
    huber = keras.losses.Huber(delta=beta, reduction=reduction)
    ours = SmoothL1(beta, reduction=reduction)
    np.testing.assert_allclose(
        np.asarray(ours(y_true, y_pred, sample_weight=weights)),
        np.asarray(huber(y_true, y_pred, sample_weight=weights)) / beta,
        rtol=1e-5,
        atol=1e-6,
    )


def test_beta_zero_is_keras_mean_absolute_error(evaluate):
    y_true, y_pred, weights = _data(seed=2)
    got = evaluate(SmoothL1(0.0), y_true, y_pred, weights)
    want = keras.losses.MeanAbsoluteError()(y_true, y_pred, sample_weight=weights)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6)


def test_large_beta_is_half_mse_over_beta():
    y_true, y_pred, _ = _data(seed=3)
    beta = 1e3  # larger than every error: the quadratic branch everywhere
    want = 0.5 * np.mean((y_pred.astype("float64") - y_true) ** 2) / beta
    np.testing.assert_allclose(float(SmoothL1(beta)(y_true, y_pred)), want, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_gradient_matches_the_derivative(beta):
    y_true = np.array([[0.0, 0.0, 0.0, 1.0]], "float32")
    y_pred = tf.Variable([[0.2, -0.9, 2.0, 1.0]])  # inside, outside, outside, exactly zero error
    with tf.GradientTape() as tape:
        loss = SmoothL1(beta)(y_true, y_pred)
    grad = tape.gradient(loss, y_pred).numpy()
    errors = [0.2, -0.9, 2.0, 0.0]
    slopes = [
        (x / beta if abs(x) < beta else math.copysign(1.0, x)) if x != 0.0 else 0.0 for x in errors
    ]
    np.testing.assert_allclose(grad, [[s / 4 for s in slopes]], rtol=1e-6)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=str)
def test_all_equal_inputs_and_a_single_sample_give_zero(evaluate, reduction):
    same = np.full((4, 3), 0.3, "float32")
    got = evaluate(SmoothL1(reduction=reduction), same, same, np.ones(4, "float32"))
    np.testing.assert_array_equal(got, np.zeros_like(got))
    one_true, one_pred = np.array([[1.0, -1.0]], "float32"), np.array([[3.0, -1.5]], "float32")
    got = evaluate(SmoothL1(reduction=reduction), one_true, one_pred, np.array([2.0], "float32"))
    per_sample = (1.5 + 0.125) / 2  # |2| - 0.5 and 0.5·0.5²
    np.testing.assert_allclose(got, keras_reduction([per_sample], [2.0], reduction), rtol=1e-6)


def test_trailing_axis_of_size_one_is_matched_like_keras():
    y_true = np.array([0.0, 1.0, 2.0], "float32")
    y_pred = np.array([[0.5], [1.0], [5.0]], "float32")
    got = np.asarray(SmoothL1(reduction="none")(y_true, y_pred))
    np.testing.assert_allclose(got, [0.125, 0.0, 2.5], rtol=1e-6)
    mse_shape = keras.losses.MeanSquaredError(reduction="none")(y_true, y_pred).shape
    assert got.shape == tuple(mse_shape)


def test_sequence_targets_give_one_value_per_timestep():
    y_true = np.zeros((2, 3, 4), "float32")
    y_pred = np.full((2, 3, 4), 2.0, "float32")
    got = np.asarray(SmoothL1(1.0, reduction="none")(y_true, y_pred))
    np.testing.assert_allclose(got, np.full((2, 3), 1.5), rtol=1e-6)


def test_dtype_is_respected():
    loss = SmoothL1(dtype="float64", reduction="none")
    out = loss(np.zeros((2, 2)), np.ones((2, 2)))
    assert keras.backend.standardize_dtype(out.dtype) == "float64"
    np.testing.assert_allclose(np.asarray(out), [0.5, 0.5])


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: SmoothL1(-1.0), ValueError, "beta=-1.0"),
        (lambda: SmoothL1(float("nan")), ValueError, "beta=nan"),
        (lambda: SmoothL1(float("inf")), ValueError, "beta=inf"),
        (lambda: SmoothL1(True), TypeError, "beta=True"),
        (lambda: SmoothL1("1.0"), TypeError, "beta='1.0'"),
        (lambda: smooth_l1([0.0], [1.0], beta=-0.5), ValueError, "beta=-0.5"),
    ],
)
def test_bad_arguments(make, error, fragment):
    with pytest.raises(error, match="Received") as info:
        make()
    assert fragment in str(info.value)
