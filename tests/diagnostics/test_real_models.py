"""The issue's acceptance tests: real models trained by a small GradientTape loop.

The loop feeds ``gradient_norms`` and ``update_ratios`` inside a compiled
step, as the monitoring callback will, and hands the samples to ``diagnose``.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import nnkit.layers as LY
from nnkit.diagnostics import (
    describe_layers,
    diagnose,
    gradient_norms,
    group_variables,
    update_ratios,
)
from nnkit.initializers import for_activation

DEPTH, WIDTH, STEPS = 10, 16, 12


def _train(model, optimizer, steps=STEPS, jit_compile=False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (0.5 * x[:, :1] + np.sin(x[:, 1:2])).astype("float32")
    variables = model.trainable_variables
    groups = group_variables(variables)

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = ops.mean(ops.square(model(x, training=True) - y))
        grads = tape.gradient(loss, variables)
        norms = gradient_norms(grads, variables, groups=groups)
        before = [ops.copy(v) for v in variables]
        optimizer.apply(grads, variables)
        ratios = update_ratios(before, [ops.copy(v) for v in variables], groups=groups)
        return norms.global_norm, norms.group_norms, norms.nonfinite, ratios

    samples = [[np.asarray(t) for t in step(x, y)] for _ in range(steps)]
    total, group, nonfinite, ratios = (np.stack(s) for s in zip(*samples, strict=True))
    return diagnose(
        np.arange(steps),
        groups.names,
        group,
        update_ratios=ratios,
        global_norms=total,
        nonfinite=nonfinite,
        layer_info=describe_layers(model),
    )


def _sigmoid_mlp():
    small = keras.initializers.RandomNormal(stddev=0.01)
    hidden = [
        keras.layers.Dense(WIDTH, "sigmoid", kernel_initializer=small, name=f"d{k}")
        for k in range(DEPTH)
    ]
    output = keras.layers.Dense(1, name="out")
    return keras.Sequential([keras.Input((8,)), *hidden, output], name="sigmoid")


def _relu_he_bn_mlp():
    hidden = [
        LY.DenseBlock(WIDTH, activation="relu", normalization="batch",
                      kernel_initializer=for_activation("relu"), name=f"b{k}")
        for k in range(DEPTH)
    ]  # fmt: skip
    output = keras.layers.Dense(1, name="out")
    return keras.Sequential([keras.Input((8,)), *hidden, output], name="relu")


@pytest.mark.parametrize("jit_compile", [False, True])
def test_deep_sigmoid_mlp_is_flagged_vanishing_in_its_early_layers(jit_compile):
    report = _train(_sigmoid_mlp(), keras.optimizers.SGD(0.1), jit_compile=jit_compile)
    vanishing = report.flagged("vanishing")
    early = [f"sigmoid/d{k}" for k in range(DEPTH // 2)]
    assert set(early) <= set(vanishing), str(report)
    assert not report.flagged("exploding") and not report.flagged("nonfinite")
    first = next(f for f in report.flags if f.layer == early[0])
    assert first.first_step == 0
    advice = report.suggestions[0]
    for phrase in ("sigmoid", "He initialization", "batch normalization", "residual"):
        assert phrase in advice


def test_same_depth_relu_he_batchnorm_is_not_flagged():
    report = _train(_relu_he_bn_mlp(), keras.optimizers.SGD(0.01))
    assert report.healthy, str(report)
    assert len(report.layers) == 2 * DEPTH + 1  # dense + norm per block, and the output


def test_too_high_learning_rate_is_flagged_exploding():
    model = keras.Sequential(
        [keras.Input((8,))]
        + [keras.layers.Dense(WIDTH, "relu", kernel_initializer="he_normal") for _ in range(3)]
        + [keras.layers.Dense(1)]
    )
    report = _train(model, keras.optimizers.SGD(5.0))
    kinds = {f.kind for f in report.flags}
    assert "exploding" in kinds, str(report)
    assert "global_clipnorm" in " ".join(report.suggestions)


def test_describe_layers_of_the_test_models():
    info = describe_layers(_sigmoid_mlp())
    assert list(info) == [*(f"sigmoid/d{k}" for k in range(DEPTH)), "sigmoid/out"]
    assert info["sigmoid/d0"] == {
        "class": "Dense",
        "activation": "sigmoid",
        "normalization": False,
        "initializer": "RandomNormal",
    }
    block = describe_layers(_relu_he_bn_mlp())["relu/b0"]
    assert block == {"class": "DenseBlock", "activation": "relu", "normalization": True,
                     "initializer": "HeNormal"}  # fmt: skip


def test_describe_layers_attributes_activation_layers_and_walks_nested_models():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, name="a"), keras.layers.Activation("tanh")],
        name="inner",
    )
    outer = keras.Sequential(
        [keras.Input((4,)), inner, keras.layers.Dense(1, name="b")], name="outer"
    )
    info = describe_layers(outer)
    assert [(k, i["activation"]) for k, i in info.items()] == [
        ("inner/a", "tanh"),
        ("outer/b", "linear"),
    ]
    groups = group_variables(outer.trainable_variables)
    assert set(groups.names) == set(info)


def test_describe_layers_rejects_bad_models():
    with pytest.raises(TypeError, match="must be a keras.Model"):
        describe_layers(keras.layers.Dense(2))
    with pytest.raises(ValueError, match="must be built"):
        describe_layers(keras.Sequential([keras.layers.Dense(2)]))
