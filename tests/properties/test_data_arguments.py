"""Properties of the data and list arguments: what is not data is refused up front, by name.

For every value that is not model inputs (a number, NaN, a string, a scalar
tensor, a list or dict of numbers), a data argument raises ``TypeError`` or
``ValueError`` at the call that received it, naming the argument and echoing
the value ("Received: name=..."); a list argument given a scalar tensor does
the same. Kept from issue 22: each of these got a raw Python or TensorFlow
error, or was accepted and failed later (SWA at the end of training, ``tune``
in every trial).
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nnkit.callbacks import BackupAndRestore, StochasticWeightAveraging, recompute_batch_norm
from nnkit.distribute import device_mesh
from nnkit.losses import SmoothL1
from nnkit.meta import ANIL, FewShotClassification, digits_tasks
from nnkit.models import mlp
from nnkit.schedules import MultiStepDecay
from nnkit.tuning.sweep import _check_callbacks

not_data = st.one_of(
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.lists(st.integers(0, 3), min_size=1, max_size=3),
    st.dictionaries(st.sampled_from("ab"), st.integers(0, 3), min_size=1),
    st.builds(tf.constant, st.floats(-1, 1)),
)


def _refused(call, name):
    with pytest.raises((TypeError, ValueError), match=rf"Received: {name}"):
        call()


@settings(max_examples=12)
@given(value=not_data)
@example(value=0)
@example(value=math.nan)
@example(value=[1, 2])
@example(value={"a": 1})
def test_stochastic_weight_averaging_refuses_non_data(value):
    _refused(lambda: StochasticWeightAveraging(1, batch_norm_data=value), "batch_norm_data")


@settings(max_examples=12)
@given(value=not_data)
@example(value=1.0)
def test_recompute_batch_norm_refuses_non_data(value):
    model = mlp(3, [4])
    _refused(lambda: recompute_batch_norm(model, value), "x")


def test_swa_accepts_arrays_nests_and_datasets():
    x = np.zeros((4, 3), "float32")
    for data in (x, (x, x), {"a": x}, tf.data.Dataset.from_tensor_slices(x).batch(2)):
        assert StochasticWeightAveraging(1, batch_norm_data=data).batch_norm_data is data
    with pytest.raises(ValueError, match="same number of rows"):
        StochasticWeightAveraging(1, batch_norm_data=(x, x[:2]))


@example(value=1.0)
@settings(max_examples=8)
@given(value=st.one_of(st.floats(), st.integers(), st.text(max_size=2)))
def test_few_shot_classification_refuses_non_arrays(value):
    _refused(lambda: FewShotClassification(value, [0, 1]), "x")


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: digits_tasks("train", rotations=[[1]]), "rotations"),
        (lambda: BackupAndRestore(backup_dir=tf.constant("runs")), "backup_dir"),
        (lambda: BackupAndRestore(backup_dir=tf.constant(1.0)), "backup_dir"),
        (lambda: SmoothL1(reduction=tf.constant("sum")), "reduction"),
        (lambda: mlp(3, widths=tf.constant(4)), "widths"),
        (lambda: MultiStepDecay(0.1, milestones=tf.constant(3)), "milestones"),
        (lambda: ANIL(mlp(3, [4]), head=tf.constant("dense")), "head"),
        (lambda: device_mesh(devices=[1, 2]), r"devices\[0\]"),
        (lambda: _check_callbacks([1, 2]), r"callbacks\[0\]"),
        (lambda: _check_callbacks(tf.constant(1)), "callbacks"),
    ],
)
def test_scalar_tensors_and_wrong_items_are_refused_by_name(call, name):
    _refused(call, name)


def test_tune_callbacks_hold_callbacks():
    callback = keras.callbacks.Callback()
    assert _check_callbacks([callback]) == [callback] and _check_callbacks(None) == []
