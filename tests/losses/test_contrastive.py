"""ContrastiveLoss against the Hadsell et al. formula written here pair by pair."""

import numpy as np
import pytest
import tensorflow as tf

from nnkit.losses import ContrastiveLoss, contrastive_loss
from tests.losses.reference import REDUCTIONS, keras_reduction


def contrastive_reference(labels, distances, margin):
    """One value per pair, in plain Python."""
    out = []
    for y, d in zip(np.ravel(labels), np.ravel(distances), strict=True):
        y, d = float(y), float(d)
        out.append(y * d**2 + (1.0 - y) * max(margin - d, 0.0) ** 2)
    return np.array(out)


def _data(batch=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=(batch,)).astype("float32")
    distances = rng.uniform(0.0, 2.5, size=(batch,)).astype("float32")
    weights = rng.uniform(0.0, 2.0, size=(batch,)).astype("float32")
    return labels, distances, weights


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS, ids=str)
def test_every_reduction_matches_the_closed_form(evaluate, reduction, weighted):
    labels, distances, weights = _data()
    weights = weights if weighted else None
    got = evaluate(ContrastiveLoss(1.5, reduction=reduction), labels, distances, weights)
    want = keras_reduction(contrastive_reference(labels, distances, 1.5), weights, reduction)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_hand_computed_values():
    # similar at 0.5 → 0.25; dissimilar at 0.25 → 0.75² ; dissimilar past the margin → 0.
    got = np.asarray(contrastive_loss([1, 0, 0, 1], [0.5, 0.25, 2.0, 0.0]))
    np.testing.assert_allclose(got, [0.25, 0.5625, 0.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize(
    "labels_shape, distances_shape", [((8,), (8, 1)), ((8, 1), (8,)), ((8, 1), (8, 1))]
)
def test_column_shapes_give_one_value_per_pair(labels_shape, distances_shape):
    labels, distances, _ = _data()
    got = np.asarray(
        contrastive_loss(labels.reshape(labels_shape), distances.reshape(distances_shape))
    )
    assert got.shape == (8,)
    np.testing.assert_allclose(got, contrastive_reference(labels, distances, 1.0), rtol=1e-5)


def test_zero_margin_keeps_only_the_pull_on_similar_pairs(evaluate):
    labels, distances, weights = _data(seed=1)
    got = evaluate(ContrastiveLoss(0.0, reduction="none"), labels, distances, weights)
    np.testing.assert_allclose(got, labels * distances.astype("float64") ** 2 * weights, rtol=1e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=str)
def test_all_equal_inputs_and_a_single_sample(evaluate, reduction):
    # Every pair at the same distance 0.4: similar pairs cost 0.16, dissimilar (1 - 0.4)² = 0.36.
    labels = np.array([1, 0, 1, 0], "float32")
    got = evaluate(ContrastiveLoss(reduction=reduction), labels, np.full(4, 0.4, "float32"), None)
    np.testing.assert_allclose(
        got, keras_reduction([0.16, 0.36, 0.16, 0.36], None, reduction), rtol=1e-5
    )
    # Zero distances on dissimilar pairs cost margin² each.
    got = evaluate(
        ContrastiveLoss(2.0, reduction=reduction),
        np.zeros(1, "float32"),
        np.zeros(1, "float32"),
        np.array([3.0], "float32"),
    )
    np.testing.assert_allclose(got, keras_reduction([4.0], [3.0], reduction), rtol=1e-6)


def test_gradient_with_respect_to_the_distance_is_finite_and_correct():
    labels = tf.constant([1.0, 1.0, 0.0, 0.0, 0.0])
    distances = tf.Variable([0.0, 0.7, 0.0, 0.4, 1.0])  # includes d = 0 and d = margin
    with tf.GradientTape() as tape:
        loss = ContrastiveLoss(1.0, reduction="sum")(labels, distances)
    grad = tape.gradient(loss, distances).numpy()
    # d/dd: 2d for similar pairs, -2·max(m - d, 0) for dissimilar ones.
    np.testing.assert_allclose(grad, [0.0, 1.4, -2.0, -1.2, 0.0], rtol=1e-6)


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: ContrastiveLoss(-0.5), ValueError, "margin=-0.5"),
        (lambda: ContrastiveLoss(float("inf")), ValueError, "margin=inf"),
        (lambda: ContrastiveLoss(float("nan")), ValueError, "margin=nan"),
        (lambda: ContrastiveLoss(False), TypeError, "margin=False"),
        (lambda: ContrastiveLoss(None), TypeError, "margin=None"),
        (lambda: contrastive_loss([1], [0.5], margin=-1), ValueError, "margin=-1"),
    ],
)
def test_bad_arguments(make, error, fragment):
    with pytest.raises(error, match="Received") as info:
        make()
    assert fragment in str(info.value)
