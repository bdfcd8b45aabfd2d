"""Norms against numpy.linalg.norm on known arrays, eagerly, in tf.function and under XLA."""

import math

import numpy as np
import pytest
import tensorflow as tf

from nnkit.diagnostics import (
    first_nonfinite_group,
    gradient_norms,
    group_variables,
    update_ratios,
    weight_norms,
)

PATHS = ["m/a/kernel", "m/a/bias", "m/b/kernel", "m/c/kernel", "m/c/bias"]
GROUPS = group_variables(PATHS)  # a: 0, 1; b: 2; c: 3, 4


def _arrays(dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (4,), (4, 2), (2, 1), (1,)]
    return [rng.normal(scale=2.0, size=s).astype(dtype) for s in shapes]


def _reference(arrays):
    """Closed forms with numpy: sqrt of sums of squared Frobenius norms per group."""
    flat = [np.asarray(a, np.float64).ravel() for a in arrays]
    group = [
        np.linalg.norm(np.concatenate([flat[0], flat[1]])),
        np.linalg.norm(flat[2]),
        np.linalg.norm(np.concatenate([flat[3], flat[4]])),
    ]
    return np.linalg.norm(np.concatenate(flat)), np.array(group)


def _numpy(norms):
    return [np.asarray(t) for t in norms]


def test_gradient_norms_match_numpy(run):
    grads = _arrays()
    total, group, counts = _numpy(
        run(lambda *g: tuple(gradient_norms(list(g), PATHS, groups=GROUPS)), *grads)
    )
    expected_total, expected_group = _reference(grads)
    assert total.dtype == np.float32 and group.shape == (3,) and counts.dtype == np.int32
    np.testing.assert_allclose(total, expected_total, rtol=1e-6)
    np.testing.assert_allclose(group, expected_group, rtol=1e-6)
    np.testing.assert_array_equal(counts, [0, 0, 0])
    # The global norm is the norm of the group norms.
    assert math.isclose(float(total), float(np.linalg.norm(group)), rel_tol=1e-6)


def test_groups_default_to_layers_of_the_variables():
    grads = _arrays()
    norms = gradient_norms(grads, PATHS)
    np.testing.assert_allclose(np.asarray(norms.group_norms), _reference(grads)[1], rtol=1e-6)


def test_float16_gradients_are_summed_in_float32(run):
    # 300**2 * 4 overflows float16 (max 65504); the norm itself (600) does not.
    grads = [np.full((2, 2), 300.0, "float16"), np.full((4,), 1.0, "float16")]
    total, group, _ = _numpy(
        run(lambda a, b: tuple(gradient_norms([a, b], ["x/k", "y/k"])), *grads)
    )
    assert total.dtype == np.float32
    np.testing.assert_allclose(group, [600.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(total, math.sqrt(600.0**2 + 4.0), rtol=1e-6)


def test_none_gradients_count_as_zero(run):
    grads = _arrays()

    def fn(*g):
        return tuple(gradient_norms([g[0], None, g[2], None, None], PATHS, groups=GROUPS))

    total, group, counts = _numpy(run(fn, *grads))
    expected = [np.linalg.norm(grads[0]), np.linalg.norm(grads[2]), 0.0]
    np.testing.assert_allclose(group, expected, rtol=1e-6)
    np.testing.assert_allclose(total, np.linalg.norm(expected), rtol=1e-6)
    np.testing.assert_array_equal(counts, [0, 0, 0])


@pytest.mark.parametrize(
    "injected, expected_counts, first",
    [
        ({2: [(0, 0)]}, [0, 1, 0], 1),
        ({4: [(0,)], 0: [(1, 1), (2, 3)]}, [2, 0, 1], 0),
        ({3: [(0, 0), (1, 0)]}, [0, 0, 2], 2),
        ({}, [0, 0, 0], -1),
    ],
)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_counts_and_first_group(run, injected, expected_counts, first, value):
    grads = _arrays()
    for i, positions in injected.items():
        for position in positions:
            grads[i][position] = value

    def fn(*g):
        norms = gradient_norms(list(g), PATHS, groups=GROUPS)
        return norms.nonfinite, norms.group_norms, first_nonfinite_group(norms.nonfinite)

    counts, group, index = _numpy(run(fn, *grads))
    np.testing.assert_array_equal(counts, expected_counts)
    assert int(index) == first
    bad = np.array(expected_counts) > 0
    assert np.all(~np.isfinite(group[bad])) and np.all(np.isfinite(group[~bad]))


def test_first_nonfinite_group_on_numpy_and_edge_cases():
    assert int(first_nonfinite_group(np.array([0, 0, 5], "int32"))) == 2
    assert int(first_nonfinite_group(np.array([0.0, 1.0, 1.0], "float32"))) == 1
    assert int(first_nonfinite_group(np.zeros((0,), "int32"))) == -1
    with pytest.raises(ValueError, match="one-dimensional"):
        first_nonfinite_group(np.zeros((2, 2)))


def test_weight_norms_match_numpy(run):
    weights = _arrays(seed=1)
    result = np.asarray(run(lambda *w: weight_norms(list(w), groups=GROUPS), *weights))
    np.testing.assert_allclose(result, _reference(weights)[1], rtol=1e-6)


def test_weight_norms_of_real_variables():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    result = np.asarray(weight_norms(model.trainable_variables))
    expected = [
        np.linalg.norm(np.concatenate([np.ravel(w) for w in layer.get_weights()]))
        for layer in model.layers
    ]
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_update_ratios_match_numpy(run):
    before = _arrays(seed=2)
    deltas = _arrays(seed=3)
    after = [b + 1e-3 * d for b, d in zip(before, deltas, strict=True)]
    result = np.asarray(
        run(lambda *t: update_ratios(list(t[:5]), list(t[5:]), groups=GROUPS), *before, *after)
    )
    step = [a.astype(np.float64) - b for a, b in zip(after, before, strict=True)]
    np.testing.assert_allclose(result, _reference(step)[1] / _reference(before)[1], rtol=1e-4)


def test_update_ratio_of_zero_weights_uses_epsilon():
    before = [np.zeros(3, "float32"), np.zeros(2, "float32")]
    after = [np.zeros(3, "float32"), np.array([3.0, 4.0], "float32")]
    groups = group_variables(["a/k", "b/k"])
    result = np.asarray(update_ratios(before, after, groups=groups, epsilon=1e-2))
    np.testing.assert_allclose(result, [0.0, 5.0 / 1e-2], rtol=1e-6)


def test_update_ratios_in_a_training_step(run):
    import keras
    from keras import ops

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    variables = model.trainable_variables
    groups = group_variables(variables)
    grads = [np.ones((3, 2), "float32"), np.ones((2,), "float32")]
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(variables)
    start = [np.asarray(v) for v in variables]

    def step(*g):
        before = [ops.copy(v) for v in variables]
        optimizer.apply(list(g), variables)
        return update_ratios(before, [ops.copy(v) for v in variables], groups=groups)

    result = float(np.asarray(run(step, *grads))[0])
    # SGD moves every element by 0.01: ||Δw|| = 0.01 * sqrt(8).
    expected = 0.01 * math.sqrt(8) / np.linalg.norm(np.concatenate([w.ravel() for w in start]))
    assert math.isclose(result, expected, rel_tol=1e-4)


def test_indexed_slices_use_their_values():
    values = tf.constant([[3.0, 4.0]])
    sparse = tf.IndexedSlices(values, tf.constant([1]), dense_shape=tf.constant([5, 2]))
    norms = gradient_norms([sparse], ["emb/embeddings"])
    assert math.isclose(float(norms.global_norm), 5.0, rel_tol=1e-6)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: gradient_norms([1.0], ["a/k", "b/k"]), ValueError, "same length"),
        (lambda: gradient_norms(1.0, ["a/k"]), TypeError, "`grads` must be a list"),
        (lambda: gradient_norms([1.0], ["a/k"], groups=("a",)), TypeError, "VariableGroups"),
        (lambda: update_ratios([1.0], [1.0, 2.0], groups=None), ValueError, "same length"),
        (lambda: update_ratios([1.0], [1.0], epsilon=0.0), ValueError, "`epsilon` must be > 0"),
        (lambda: update_ratios([1.0], [1.0], epsilon=True), TypeError, "epsilon=True"),
        (lambda: weight_norms([1.0]), TypeError, "Keras variable"),
    ],
)
def test_rejects_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_tiny_gradients_do_not_underflow_to_zero(run):
    # 1e-25 squared is 1e-50, far below float32's smallest number: a plain
    # sum of squares reads 0. The exact norms follow from sqrt(n) * 1e-25.
    grads = [np.full((4, 5), 1e-25, "float32"), np.full((5,), 3e-30, "float32")]
    names = ["deep/kernel", "deep/bias"]
    norms = run(lambda: gradient_norms(grads, names))
    layer = math.sqrt(20 * 1e-50 + 5 * 9e-60)
    np.testing.assert_allclose(np.asarray(norms.group_norms), [layer], rtol=1e-5)
    assert float(norms.global_norm) == pytest.approx(layer, rel=1e-5)
    assert float(norms.global_norm) > 0
