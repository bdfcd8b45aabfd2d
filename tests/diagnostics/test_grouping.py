import keras
import pytest

import nnkit.layers as LY
from nnkit.diagnostics import VariableGroups, group_variables
from nnkit.diagnostics.grouping import check_groups, variable_path


def test_groups_by_layer_in_order_of_first_appearance():
    paths = ["m/a/kernel", "m/a/bias", "m/b/kernel", "m/a/extra", "m/c/kernel"]
    groups = group_variables(paths)
    assert groups == VariableGroups(("m/a", "m/b", "m/c"), (0, 0, 1, 0, 2))
    assert groups.size == 3


def test_by_variable_is_one_group_per_variable_with_unique_names():
    groups = group_variables(["m/a/kernel", "m/a/bias", "m/a/kernel"], by="variable")
    assert groups.names == ("m/a/kernel", "m/a/bias", "m/a/kernel#2")
    assert groups.index == (0, 1, 2)


@pytest.mark.parametrize(
    "path, expected",
    [("iteration", "iteration"), ("/kernel", "/kernel"), ("a/b/c/d", "a/b/c")],
)
def test_unusual_paths_still_group(path, expected):
    assert group_variables([path]).names == (expected,)


def test_groups_a_real_model_by_layer_and_sublayer():
    model = keras.Sequential(  # explicit names: Keras numbers unnamed layers globally
        [
            keras.Input((3,)),
            LY.DenseBlock(4, normalization="batch", name="dense_block"),
            keras.layers.Dense(2, name="dense"),
        ],
        name="net",
    )
    groups = group_variables(model.trainable_variables)
    assert groups.names == ("net/dense_block/dense", "net/dense_block/norm", "net/dense")
    assert groups.index == (0, 1, 1, 2, 2)


def test_optimizer_variables_group_too():
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.build([keras.Variable([1.0], name="w")])
    groups = group_variables(optimizer.variables)
    assert len(groups.index) == len(optimizer.variables)
    assert "sgd" in groups.names[0]


def test_tf_variable_name_loses_output_suffix():
    import tensorflow as tf

    assert variable_path(tf.Variable(1.0, name="dense/kernel")) == "dense/kernel"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"variables": ["a/b"], "by": "model"}, ValueError, "`by` must be one of"),
        ({"variables": "a/b"}, TypeError, "`variables` must be a sequence"),
        ({"variables": [3]}, TypeError, "Received: variable=3"),
        ({"variables": [""]}, ValueError, "must not be empty"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        group_variables(**kwargs)


def test_check_groups_rejects_mismatch():
    groups = group_variables(["a/k", "b/k"])
    with pytest.raises(ValueError, match="covers 2 variables but `grads` has 3"):
        check_groups(groups, 3, "`grads`")
    with pytest.raises(TypeError, match="must be a VariableGroups"):
        check_groups(("a",), 1, "`grads`")
    with pytest.raises(ValueError, match="group numbers in"):
        check_groups(VariableGroups(("a",), (1,)), 1, "`grads`")
