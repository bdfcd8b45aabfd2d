"""TripletLoss against a brute-force loop over anchors, positives and negatives."""

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.losses import TripletLoss, triplet_loss
from tests.losses.reference import REDUCTIONS, keras_reduction

MININGS = ["semi_hard", "hard"]
DISTANCES = ["euclidean", "squared_euclidean", "cosine"]


def distance_reference(a, b, kind):
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    if kind == "cosine":
        na, nb = math.sqrt(a @ a), math.sqrt(b @ b)
        return 1.0 - (a @ b) / (na * nb) if na > 0 and nb > 0 else 1.0
    squared = float(np.sum((a - b) ** 2))
    return squared if kind == "squared_euclidean" else math.sqrt(squared)


def triplet_reference(labels, embeddings, margin, mining, distance, soft):
    """Per-anchor loss, one anchor, positive and negative at a time."""
    labels = list(np.ravel(labels))
    n = len(labels)

    def d(i, j):
        return 0.0 if i == j else distance_reference(embeddings[i], embeddings[j], distance)

    def h(x):
        return math.log1p(math.exp(x)) if soft else max(x, 0.0)

    out = []
    for a in range(n):
        positives = [p for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [k for k in range(n) if labels[k] != labels[a]]
        if not positives or not negatives:
            out.append(0.0)
            continue
        if mining == "hard":
            hardest_p = max(d(a, p) for p in positives)
            hardest_n = min(d(a, k) for k in negatives)
            out.append(h(hardest_p - hardest_n + margin))
            continue
        terms = []
        for p in positives:
            farther = [d(a, k) for k in negatives if d(a, k) > d(a, p)]
            chosen = min(farther) if farther else max(d(a, k) for k in negatives)
            terms.append(h(d(a, p) - chosen + margin))
        out.append(sum(terms) / len(terms))
    return np.array(out)


def _batch(classes=3, per_class=4, dim=5, seed=0, singleton=False):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    if singleton:  # one anchor alone in its class: it has no positive
        labels = np.append(labels, classes)
    embeddings = rng.normal(size=(labels.size, dim)) + labels[:, None] * 0.4
    order = rng.permutation(labels.size)
    return labels[order].astype("int32"), embeddings[order].astype("float32")


@pytest.mark.parametrize("mining", MININGS)
def test_per_anchor_values_match_brute_force(evaluate, mining):
    labels, embeddings = _batch(singleton=True)
    cases = [(distance, soft) for distance in DISTANCES for soft in (False, True)]
    losses = [
        TripletLoss(0.5, mining=mining, distance=d, soft=s, reduction="none") for d, s in cases
    ]
    got = evaluate(lambda y, x: [loss(y, x) for loss in losses], labels, embeddings)
    for (distance, soft), value in zip(cases, got, strict=True):
        want = triplet_reference(labels, embeddings, 0.5, mining, distance, soft)
        assert want[labels == 3] == 0.0 and np.any(want > 0.0)  # label 3: the singleton anchor
        np.testing.assert_allclose(
            value, want, rtol=1e-5, atol=1e-5, err_msg=f"{distance=}, {soft=}"
        )


@pytest.mark.parametrize("mining", MININGS)
def test_every_reduction_weights_each_anchor(evaluate, mining):
    labels, embeddings = _batch(seed=1, singleton=True)
    weights = np.random.default_rng(1).uniform(0, 2, labels.size).astype("float32")
    losses = [TripletLoss(mining=mining, reduction=r) for r in REDUCTIONS]

    def every_reduction(y, x, w):
        return [[loss(y, x), loss(y, x, sample_weight=w)] for loss in losses]

    got = evaluate(every_reduction, labels, embeddings, weights)
    per_anchor = triplet_reference(labels, embeddings, 1.0, mining, "euclidean", False)
    for reduction, (unweighted, weighted) in zip(REDUCTIONS, got, strict=True):
        for value, w in ((unweighted, None), (weighted, weights)):
            np.testing.assert_allclose(
                value,
                keras_reduction(per_anchor, w, reduction),
                rtol=1e-5,
                atol=1e-5,
                err_msg=f"reduction={reduction!r}, weighted={w is not None}",
            )


@pytest.mark.parametrize("distance", DISTANCES)
def test_balanced_batches_give_tfa_semi_hard_pair_average(distance):
    """tfa averaged the semi-hard loss over anchor-positive pairs; in P × K batches that agrees."""
    labels, embeddings = _batch(classes=4, per_class=3, seed=2)
    pair_losses = []
    for a, p in itertools.permutations(range(labels.size), 2):
        if labels[a] != labels[p]:
            continue
        d_ap = distance_reference(embeddings[a], embeddings[p], distance)
        negatives = [
            distance_reference(embeddings[a], embeddings[k], distance)
            for k in range(labels.size)
            if labels[k] != labels[a]
        ]
        farther = [x for x in negatives if x > d_ap]
        chosen = min(farther) if farther else max(negatives)
        pair_losses.append(max(d_ap - chosen + 1.0, 0.0))
    got = float(TripletLoss(distance=distance)(labels, embeddings))
    np.testing.assert_allclose(got, np.mean(pair_losses), rtol=1e-5)


@pytest.mark.parametrize("mining", MININGS)
def test_labels_as_a_column_and_as_floats_give_the_same_loss(mining):
    labels, embeddings = _batch(seed=3)
    want = np.asarray(triplet_loss(labels, embeddings, mining=mining))
    for variant in (labels[:, None], labels.astype("float32"), labels.astype("int64")[:, None]):
        got = np.asarray(TripletLoss(mining=mining, reduction="none")(variant, embeddings))
        np.testing.assert_allclose(got, want, rtol=1e-6)


def _loss_and_gradient(loss, labels, embeddings):
    embeddings = tf.Variable(embeddings)
    with tf.GradientTape() as tape:
        value = loss(labels, embeddings)
    return np.asarray(value), tape.gradient(value, embeddings).numpy()


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mining", MININGS)
def test_single_class_and_single_sample_batches_cost_nothing(mining, distance):
    single_class = (np.zeros(5, "int32"), _batch(seed=4)[1][:5])
    single_sample = (np.array([2], "int32"), np.ones((1, 5), "float32"))
    for labels, embeddings in (single_class, single_sample):
        for reduction in REDUCTIONS:
            loss = TripletLoss(mining=mining, distance=distance, reduction=reduction)
            value, grad = _loss_and_gradient(loss, labels, embeddings)
            np.testing.assert_array_equal(value, np.zeros_like(value))
            np.testing.assert_array_equal(grad, np.zeros_like(grad))


@pytest.mark.parametrize("mining", MININGS)
def test_all_equal_embeddings_cost_the_margin(evaluate, mining):
    labels = np.array([0, 0, 1, 1, 2, 2], "int32")
    embeddings = np.tile(np.array([[0.3, -1.2, 2.0]], "float32"), (6, 1))
    cases = [(d, m, s) for d in DISTANCES for m in (0.0, 0.3) for s in (False, True)]
    losses = [
        TripletLoss(m, mining=mining, distance=d, soft=s, reduction="none") for d, m, s in cases
    ]
    got = evaluate(lambda y, x: [loss(y, x) for loss in losses], labels, embeddings)
    for (distance, margin, soft), value in zip(cases, got, strict=True):
        each = math.log1p(math.exp(margin)) if soft else margin
        np.testing.assert_allclose(
            value,
            np.full(6, each),
            rtol=1e-5,
            atol=1e-5,
            err_msg=f"{distance=}, {margin=}, {soft=}",
        )


@pytest.mark.parametrize("mining", MININGS)
def test_gradients_are_finite_where_embeddings_coincide(mining):
    # Duplicates within and across classes, and a zero vector (cosine's worst case).
    labels = np.array([0, 0, 0, 1, 1, 2], "int32")
    embeddings = np.array(
        [[1, 0, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 2, 0]], "float32"
    )
    losses = [TripletLoss(0.5, mining=mining, distance=d) for d in DISTANCES]
    values = []
    for distance, loss in zip(DISTANCES, losses, strict=True):
        value, grad = _loss_and_gradient(loss, labels, embeddings)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), distance
        values.append(value)

    def values_and_gradients(y, x):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            out = [loss(y, x) for loss in losses]
        return out, [tape.gradient(v, x) for v in out]

    compiled = tf.function(values_and_gradients, jit_compile=True, autograph=False)
    xla_values, xla_grads = compiled(tf.constant(labels), tf.constant(embeddings))
    np.testing.assert_allclose([v.numpy() for v in xla_values], values, rtol=1e-5)
    assert all(np.all(np.isfinite(g.numpy())) for g in xla_grads)


def test_euclidean_gradient_matches_the_formula():
    # Hard mining, one anchor-positive-negative triplet per anchor in 1-D:
    # anchor 0 at 0, positive at 1, negative at 1.5 → loss_0 = 1 - 1.5 + 1 = 0.5.
    labels = np.array([0, 0, 1], "int32")
    embeddings = np.array([[0.0], [1.0], [1.5]], "float32")
    value, grad = _loss_and_gradient(
        TripletLoss(1.0, mining="hard", reduction="none"), labels, embeddings
    )
    # anchor 1: d_ap = 1, d_an = 0.5 → 1.5; anchor 2 has no positive → 0.
    np.testing.assert_allclose(value, [0.5, 1.5, 0.0], rtol=1e-6)
    # Σ loss = (x1 - x0) - (x2 - x0) + 1  +  (x1 - x0) - (x2 - x1) + 1
    np.testing.assert_allclose(np.asarray(grad), [[-1.0], [3.0], [-2.0]], rtol=1e-6)


def test_half_precision_embeddings_are_mined_in_float32():
    labels, embeddings = _batch(seed=5)
    want = triplet_reference(labels, embeddings, 1.0, "semi_hard", "euclidean", False)
    got = triplet_loss(labels, embeddings.astype("float16"))
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-2, atol=2e-2)
    loss64 = TripletLoss(dtype="float64", reduction="none")(labels, embeddings)
    assert keras.backend.standardize_dtype(loss64.dtype) == "float64"


def test_training_separates_three_clusters():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0], [-0.5, 0.9], [-0.5, -0.9]])
    labels = np.repeat(np.arange(3), 30)
    signal = centres[labels] + rng.normal(scale=0.2, size=(90, 2))
    noise = rng.normal(scale=1.5, size=(90, 6))  # dominates distances before training
    x = np.concatenate([signal, noise], axis=1).astype("float32")

    def separation(model):
        e = model.predict(x, verbose=0)
        d = np.linalg.norm(e[:, None] - e[None], axis=-1)
        same = labels[:, None] == labels[None]
        off = ~np.eye(90, dtype=bool)
        return d[~same].mean() / d[same & off].mean()

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=TripletLoss(0.5, mining="semi_hard"),
        jit_compile=True,
    )
    before = separation(model)
    history = model.fit(x, labels, batch_size=30, epochs=15, verbose=0)
    after = separation(model)
    losses = history.history["loss"]
    assert losses[-1] < 0.2 * losses[0], losses
    assert after > 2.0 * before, (before, after)


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: triplet_loss([0, 1], [0.0, 1.0]), "y_pred.shape=(2,)"),
        (lambda: triplet_loss([[0, 1]], [[0.0], [1.0]]), "y_true.shape=(1, 2)"),
        (lambda: TripletLoss()(np.zeros((2, 1, 1)), np.zeros((2, 3))), "y_true.shape=(2, 1, 1)"),
    ],
)
def test_wrong_shapes_are_reported(call, fragment):
    with pytest.raises(ValueError, match="Received") as info:
        call()
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: TripletLoss(-0.1), ValueError, "margin=-0.1"),
        (lambda: TripletLoss(float("nan")), ValueError, "margin=nan"),
        (lambda: TripletLoss(True), TypeError, "margin=True"),
        (lambda: TripletLoss(mining="semihard"), ValueError, "mining='semihard'"),
        (lambda: TripletLoss(mining=None), ValueError, "mining=None"),
        (lambda: TripletLoss(distance="L2"), ValueError, "distance='L2'"),
        (lambda: TripletLoss(soft=1), TypeError, "soft=1"),
        (lambda: triplet_loss([0], [[0.0]], mining="all"), ValueError, "mining='all'"),
    ],
)
def test_bad_arguments(make, error, fragment):
    with pytest.raises(error, match="Received") as info:
        make()
    assert fragment in str(info.value)
