"""SparseCategoricalCrossentropy with label smoothing against the one-hot formula (numpy)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.losses import SparseCategoricalCrossentropy, sparse_categorical_crossentropy
from tests.losses.reference import keras_reduction

CLASSES = 5
RNG = np.random.default_rng(3)
LOGITS = RNG.normal(size=(12, CLASSES)).astype("float32") * 2.0
LABELS = RNG.integers(0, CLASSES, size=(12,)).astype("int32")
WEIGHTS = RNG.uniform(0.1, 2.0, size=(12,)).astype("float32")


def one_hot_smoothed(labels, logits, eps, from_logits=True):
    """−Σ_k q_k log p_k with q = (1 − ε)·onehot(y) + ε/C, the definition (float64)."""
    z = np.asarray(logits, "float64")
    if from_logits:
        log_p = (
            z
            - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - z.max(-1, keepdims=True)
        )
    else:
        log_p = np.log(z / z.sum(-1, keepdims=True))
    q = (1 - eps) * np.eye(z.shape[-1])[labels] + eps / z.shape[-1]
    return -(q * log_p).sum(-1)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("from_logits", [True, False])
def test_equals_the_one_hot_formula(eps, from_logits):
    pred = LOGITS if from_logits else softmax(LOGITS).astype("float32")
    want = one_hot_smoothed(LABELS, pred, eps, from_logits)
    per_sample = sparse_categorical_crossentropy(LABELS, pred, from_logits, eps)
    np.testing.assert_allclose(np.asarray(per_sample), want, rtol=1e-5, atol=1e-6)
    for reduction in ("sum_over_batch_size", "sum", "mean_with_sample_weight", "none"):
        loss = SparseCategoricalCrossentropy(from_logits, eps, reduction=reduction)
        np.testing.assert_allclose(
            np.asarray(loss(LABELS, pred, sample_weight=WEIGHTS)),
            keras_reduction(want, WEIGHTS, reduction),
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_compiled_equals_eager_and_keras_categorical(jit_compile):
    loss = SparseCategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    compiled = tf.function(lambda y, z: loss(y, z), jit_compile=jit_compile)
    got = float(compiled(tf.constant(LABELS), tf.constant(LOGITS)))
    keras_loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    keras_value = float(keras_loss(np.eye(CLASSES)[LABELS], LOGITS))
    assert got == pytest.approx(one_hot_smoothed(LABELS, LOGITS, 0.2).mean(), rel=1e-5)
    assert got == pytest.approx(keras_value, rel=1e-5)


def test_no_smoothing_equals_keras_sparse_loss_and_accepts_column_labels():
    ours = SparseCategoricalCrossentropy(from_logits=True)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert float(ours(LABELS[:, None], LOGITS)) == pytest.approx(
        float(keras_loss(LABELS, LOGITS)), rel=1e-6
    )


def test_class_axis():
    logits = np.moveaxis(LOGITS.reshape(3, 4, CLASSES), -1, 1)  # (3, C, 4)
    labels = LABELS.reshape(3, 4)
    got = sparse_categorical_crossentropy(labels, logits, True, 0.3, axis=1)
    want = one_hot_smoothed(LABELS, LOGITS, 0.3).reshape(3, 4)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_ignore_class_matches_keras():
    labels = LABELS.copy()
    labels[[1, 4, 7]] = 2  # some samples of the ignored class
    for reduction in ("sum_over_batch_size", "sum"):
        ours = SparseCategoricalCrossentropy(True, ignore_class=2, reduction=reduction)
        keras_loss = keras.losses.SparseCategoricalCrossentropy(
            True, ignore_class=2, reduction=reduction
        )
        assert float(ours(labels, LOGITS)) == pytest.approx(
            float(keras_loss(labels, LOGITS)), rel=1e-6
        )
    smoothed = SparseCategoricalCrossentropy(True, 0.1, ignore_class=2)
    valid = labels != 2
    want = one_hot_smoothed(labels[valid], LOGITS[valid], 0.1).mean()
    assert float(smoothed(labels, LOGITS)) == pytest.approx(want, rel=1e-5)


def test_config_is_a_superset_of_keras_and_loads_a_keras_config():
    keras_loss = keras.losses.SparseCategoricalCrossentropy(True, ignore_class=3, name="ce")
    ours = SparseCategoricalCrossentropy.from_config(keras_loss.get_config())
    assert (ours.from_logits, ours.ignore_class, ours.name) == (True, 3, "ce")
    config = SparseCategoricalCrossentropy(True, 0.1).get_config()
    assert set(keras_loss.get_config()) <= set(config)
    assert {"label_smoothing", "axis"} <= set(config)


def test_keras_with_label_smoothing_agrees_when_it_has_one():
    try:
        keras_loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, label_smoothing=0.2
        )
    except TypeError:
        pytest.skip(f"Keras {keras.__version__} has no label_smoothing here (added in 3.16)")
    ours = SparseCategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    assert float(ours(LABELS, LOGITS)) == pytest.approx(float(keras_loss(LABELS, LOGITS)), rel=1e-5)
    restored = keras.losses.SparseCategoricalCrossentropy.from_config(
        {k: v for k, v in ours.get_config().items() if k != "dtype"}
    )
    assert float(restored(LABELS, LOGITS)) == pytest.approx(float(ours(LABELS, LOGITS)), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"label_smoothing": -0.1}, ValueError, "label_smoothing=-0.1"),
        ({"label_smoothing": 1.5}, ValueError, "label_smoothing=1.5"),
        ({"label_smoothing": float("nan")}, ValueError, "label_smoothing"),
        ({"label_smoothing": True}, TypeError, "label_smoothing"),
        ({"from_logits": 1}, TypeError, "from_logits"),
        ({"axis": 1.5}, ValueError, "axis"),
        ({"ignore_class": "2"}, TypeError, "ignore_class"),
    ],
)
def test_arguments_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        SparseCategoricalCrossentropy(**kwargs)
    with pytest.raises(error, match=match):
        sparse_categorical_crossentropy(LABELS, LOGITS, **kwargs)
