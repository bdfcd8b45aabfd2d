"""OneShotSupernet: a path equals its standalone model, paths are uniform, evaluation is exact."""

import numpy as np
import pytest

from nnkit.search import OneShotSupernet, conv1d_space, residual_mlp_space

LENGTH = 12


def small_space(**overrides):
    options = dict(
        stages=(1, 2, 3), channels=(2, 4), kernels=(3, 5), head=("avg", "max", "flatten")
    )
    return conv1d_space(**{**options, **overrides})


def data(rows=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, LENGTH)).astype("float32"), rng.integers(3, size=rows)


def randomize(supernet, seed):
    """Non-zero biases too, so a wrongly sliced bias would show."""
    rng = np.random.default_rng(seed)
    supernet.model.set_weights(
        [rng.normal(scale=0.5, size=w.shape).astype("float32") for w in supernet.model.weights]
    )


ARCHS = [
    # one stage, plain, avg head
    {"stages": 1, "stage_0_channels": 2, "stage_0_kernel": 3, "downsample": "max",
     "residual": False, "head": "avg"},
    # residual with a projection then an identity shortcut (4 -> 4), strided, flatten head
    {"stages": 3, "stage_0_channels": 4, "stage_0_kernel": 5, "stage_1_channels": 4,
     "stage_1_kernel": 3, "stage_2_channels": 2, "stage_2_kernel": 5, "downsample": "stride",
     "residual": True, "head": "flatten"},
    # residual, max-pooled, narrower then wider, max head
    {"stages": 2, "stage_0_channels": 2, "stage_0_kernel": 3, "stage_1_channels": 4,
     "stage_1_kernel": 5, "downsample": "max", "residual": True, "head": "max"},
    # plain, strided, flatten at depth 2
    {"stages": 2, "stage_0_channels": 4, "stage_0_kernel": 5, "stage_1_channels": 2,
     "stage_1_kernel": 3, "downsample": "stride", "residual": False, "head": "flatten"},
]  # fmt: skip


@pytest.mark.parametrize("arch", ARCHS, ids=range(len(ARCHS)))
def test_a_path_equals_the_standalone_model_with_the_sliced_weights(arch):
    supernet = OneShotSupernet(small_space(), (LENGTH,), 3, seed=1)
    randomize(supernet, seed=2)
    x, _ = data()
    standalone = supernet.path_model(arch)
    # The standalone model is the space's own builder (keras.layers), not the supernet's ops.
    assert len(standalone.weights) == len(supernet.model.path_weights(arch))
    np.testing.assert_allclose(
        supernet.logits(arch, x), standalone.predict(x, verbose=0), rtol=1e-4, atol=1e-5
    )


def test_a_batch_of_mixed_paths_gives_each_row_its_own_architecture():
    supernet = OneShotSupernet(small_space(), (LENGTH,), 3, seed=1)
    randomize(supernet, seed=3)
    x, _ = data(rows=8)
    paths = np.array([supernet.index(ARCHS[i % 2]) for i in range(8)])
    mixed = supernet.model.predict({"x": x, "path": paths}, verbose=0)
    for i in range(2):
        np.testing.assert_allclose(
            mixed[i::2], supernet.logits(ARCHS[i], x[i::2]), rtol=1e-5, atol=1e-6
        )


def test_sampled_paths_are_uniform_over_architectures_not_over_choices():
    space = conv1d_space(
        stages=(1, 2), channels=(8, 16), kernels=(5,), downsample=("max",),
        residual=(False,), head=("avg",),
    )  # fmt: skip
    supernet = OneShotSupernet(space, (LENGTH,), 3)
    assert len(supernet.architectures) == 6  # 2 one-stage + 4 two-stage
    counts = np.bincount(supernet.sample_paths(6000, seed=0), minlength=6)
    # Each count is Binomial(6000, 1/6): mean 1000, sd ~29; 5 sd either side.
    assert counts.min() > 850 and counts.max() < 1150, counts
    one_stage = sum(counts[p] for p, a in enumerate(supernet.architectures) if a["stages"] == 1)
    assert 1850 < one_stage < 2150  # 1/3 of the draws, not the 1/2 of a per-choice draw
    np.testing.assert_array_equal(supernet.sample_paths(50, 7), supernet.sample_paths(50, 7))


def test_training_moves_the_weights_and_evaluate_is_deterministic():
    supernet = OneShotSupernet(small_space(), (LENGTH,), 3, seed=0)
    x, y = data(rows=64)
    before = [w.copy() for w in supernet.model.get_weights()]
    history = supernet.train(x, y, epochs=2, batch_size=16, seed=0)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])
    after = supernet.model.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    first = [supernet.evaluate(arch, x, y) for arch in ARCHS]
    second = [supernet.evaluate(arch, x, y) for arch in ARCHS]
    assert first == second
    # The accuracy is the argmax agreement of the path's logits, counted here.
    logits = supernet.logits(ARCHS[1], x)
    assert first[1] == np.mean(np.argmax(logits, axis=-1) == y)


def test_the_same_seeds_give_the_same_supernet():
    x, y = data(rows=32)
    runs = []
    for _ in range(2):
        supernet = OneShotSupernet(small_space(), (LENGTH,), 3, seed=4)
        supernet.train(x, y, epochs=1, batch_size=16, seed=5)
        runs.append(supernet.logits(ARCHS[2], x))
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-6, atol=1e-6)


def test_bad_arguments_are_refused_with_the_received_value():
    with pytest.raises(ValueError, match="conv1d_space"):
        OneShotSupernet(residual_mlp_space(), (LENGTH,), 3)
    with pytest.raises(TypeError, match="Received: space=3"):
        OneShotSupernet(3, (LENGTH,), 3)
    with pytest.raises(ValueError, match="odd"):
        OneShotSupernet(small_space(kernels=(3, 4)), (LENGTH,), 3)
    with pytest.raises(ValueError, match="input_shape"):
        OneShotSupernet(small_space(), (4, 4, 4), 3)
    with pytest.raises(ValueError, match="num_classes=0"):
        OneShotSupernet(small_space(), (LENGTH,), 0)
    supernet = OneShotSupernet(small_space(), (LENGTH,), 3)
    with pytest.raises(ValueError, match="Received: arch"):
        supernet.evaluate({"stages": 9}, *data())
    x, y = data()
    with pytest.raises(ValueError, match="len"):
        supernet.train(x, y[:3], epochs=1)
    with pytest.raises(ValueError, match="epochs=0"):
        supernet.train(x, y, epochs=0)
