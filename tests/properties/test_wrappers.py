"""Properties of the training wrappers (SAM, MixUp) over batch sizes, splits and input nests.

What must hold for every dataset size, batch size (1 included, ragged last
batches, batches shorter than ``num_batch_splits``) and input structure
(one array, a tuple, a dict): ``fit`` runs, the logged loss and every
weight stay finite and keep their shapes. Kept from issue 22: SAM with
``num_batch_splits=m`` split a batch of fewer than ``m`` rows into empty
parts (a raw ``TypeError`` on JAX, a NaN loss on TensorFlow); it now
splits it into one part per row.

The same properties run on JAX in ``test_jax.py``.
"""

import math

import keras
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nnkit.models import MixUp, SharpnessAwareMinimization


def _model(structure, normalization=False):
    if structure == "array":
        inputs = keras.Input((3,))
        hidden = inputs
    elif structure == "tuple":
        inputs = (keras.Input((3,)), keras.Input((2,)))
        hidden = keras.layers.Concatenate()(list(inputs))
    else:
        inputs = {"a": keras.Input((3,), name="a"), "b": keras.Input((2,), name="b")}
        hidden = keras.layers.Concatenate()([inputs["a"], inputs["b"]])
    if normalization:
        hidden = keras.layers.BatchNormalization()(hidden)
    outputs = keras.layers.Dense(2)(keras.layers.Dense(4, activation="tanh")(hidden))
    return keras.Model(inputs, outputs)


def _data(structure, rows):
    rng = np.random.default_rng(rows)
    a = rng.normal(size=(rows, 3)).astype("float32")
    b = rng.normal(size=(rows, 2)).astype("float32")
    x = {"array": a, "tuple": (a, b), "dict": {"a": a, "b": b}}[structure]
    y = rng.normal(size=(rows, 2)).astype("float32")
    return x, y


def _assert_sane(history, model):
    assert all(math.isfinite(loss) for loss in history.history["loss"]), history.history
    for weight in model.weights:
        assert bool(keras.ops.all(keras.ops.isfinite(weight.value))), weight.path


structures = st.sampled_from(["array", "tuple", "dict"])


@settings(max_examples=5)
@given(
    rows=st.integers(1, 11),
    batch_size=st.integers(1, 8),
    splits=st.integers(1, 5),
    adaptive=st.booleans(),
    structure=structures,
    normalization=st.booleans(),
)
# Issue 22: batches shorter than num_batch_splits (every batch, or the last one).
@example(rows=2, batch_size=2, splits=4, adaptive=False, structure="array", normalization=False)
@example(rows=9, batch_size=4, splits=4, adaptive=True, structure="array", normalization=False)
@example(rows=1, batch_size=1, splits=3, adaptive=False, structure="dict", normalization=False)
# A ragged last batch of 2 rows in a step TensorFlow retraces for any batch size: its
# empty parts wrote NaN into batch normalization's moving statistics.
@example(rows=10, batch_size=8, splits=4, adaptive=False, structure="array", normalization=True)
def test_sam_fits_any_batch(rows, batch_size, splits, adaptive, structure, normalization):
    keras.utils.set_random_seed(0)
    model = _model(structure, normalization)
    sam = SharpnessAwareMinimization(model, rho=0.05, adaptive=adaptive, num_batch_splits=splits)
    sam.compile(keras.optimizers.SGD(0.05), loss="mse")
    x, y = _data(structure, rows)
    history = sam.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    _assert_sane(history, model)
    assert int(sam.optimizer.iterations) == math.ceil(rows / batch_size)


@settings(max_examples=4)
@given(
    rows=st.integers(1, 11),
    batch_size=st.integers(1, 8),
    mode=st.just("mixup"),
    structure=structures,
)
@example(rows=1, batch_size=1, mode="mixup", structure="array")
# Ragged last batches (2 and 1 rows), with tuple and dict inputs.
@example(rows=10, batch_size=4, mode="mixup", structure="tuple")
@example(rows=9, batch_size=8, mode="mixup", structure="dict")
def test_mixup_fits_any_batch(rows, batch_size, mode, structure):
    keras.utils.set_random_seed(0)
    model = _model(structure)
    mixed = MixUp(model, alpha=0.2, mode=mode, seed=0)
    mixed.compile(keras.optimizers.SGD(0.05), loss="mse")
    x, y = _data(structure, rows)
    history = mixed.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    _assert_sane(history, model)
