"""Global batch, learning-rate scaling and the tf.data pipeline, against closed forms."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.distribute import (
    global_batch_size,
    input_pipeline,
    per_replica_batch_size,
    scale_learning_rate,
)
from nnkit.distribute.data_parallel import _pipeline_plan
from nnkit.schedules import Constant, Scaled, StepDecay, Warmup
from nnkit.testing import assert_round_trip

CPUS = ["CPU:0", "CPU:1"]


@pytest.fixture(scope="module")
def mirrored():
    return tf.distribute.MirroredStrategy(CPUS)


# -- global batch ---------------------------------------------------------------------------


def test_global_and_per_replica_batch(mirrored):
    assert global_batch_size(16) == 16
    assert per_replica_batch_size(16) == 16
    assert global_batch_size(16, mirrored) == 32
    assert per_replica_batch_size(32, mirrored) == 16
    with mirrored.scope():  # None: the strategy in scope
        assert global_batch_size(16) == 32
        assert per_replica_batch_size(64) == 32


def test_uneven_split_echoes_both_numbers(mirrored):
    with pytest.raises(ValueError, match=r"number of replicas \(2\).*global_batch=33.*e\.g\. 34"):
        per_replica_batch_size(33, mirrored)


def test_batch_argument_errors(mirrored):
    with pytest.raises(ValueError, match="per_replica_batch=0"):
        global_batch_size(0)
    with pytest.raises(ValueError, match="whole number"):
        global_batch_size(2.5)
    with pytest.raises(TypeError, match="integer"):
        per_replica_batch_size(True)
    with pytest.raises(TypeError, match="Received: strategy='mirrored'"):
        global_batch_size(8, "mirrored")
    with pytest.raises(TypeError, match="tf.distribute.Strategy"):
        global_batch_size(8, tf.distribute.MirroredStrategy)
    with pytest.raises(ValueError, match="MultiWorkerMirroredStrategy"):
        global_batch_size(8, tf.distribute.experimental.ParameterServerStrategy)
    with pytest.raises(ValueError, match="only on the JAX backend"):
        per_replica_batch_size(8, keras.distribution.DataParallel(devices=["cpu:0", "cpu:1"]))


# -- learning-rate scaling ------------------------------------------------------------------


def _values(schedule, steps):
    """The schedule at ``steps``: eagerly, in a tf.function and under XLA."""
    eager = np.array([float(schedule(t)) for t in steps])
    graph_fn = tf.function(lambda t: schedule(t))
    graph = np.array([float(graph_fn(tf.constant(t, tf.int64))) for t in steps])
    xla = tf.function(lambda t: schedule(t), jit_compile=True)(tf.constant(steps, tf.int64))
    np.testing.assert_allclose(graph, eager, rtol=1e-6)
    np.testing.assert_allclose(xla.numpy(), eager, rtol=1e-6)
    return eager


@pytest.mark.parametrize(
    ("base_batch", "global_batch"), [(256, 1024), (32, 256), (100, 300), (512, 128)]
)
def test_linear_and_sqrt_rules(base_batch, global_batch):
    steps = [0, 1, 50, 10_000]
    eta = 0.1
    linear = scale_learning_rate(eta, base_batch, global_batch)
    root = scale_learning_rate(eta, base_batch, global_batch, rule="sqrt")
    assert isinstance(linear, Constant) and isinstance(root, Constant)
    np.testing.assert_allclose(_values(linear, steps), eta * global_batch / base_batch, rtol=1e-6)
    np.testing.assert_allclose(
        _values(root, steps), eta * math.sqrt(global_batch / base_batch), rtol=1e-6
    )


@pytest.mark.parametrize("rule", ["linear", "sqrt"])
def test_gradual_warmup_from_the_base_rate(rule):
    eta, k, w = 0.1, 8, 40
    factor = k if rule == "linear" else math.sqrt(k)
    lr = scale_learning_rate(eta, 32, 32 * k, rule=rule, warmup_steps=w)
    assert isinstance(lr, Warmup)
    steps = [0, 1, 10, 20, 39, 40, 41, 1000]
    want = [eta + (factor * eta - eta) * t / w if t < w else factor * eta for t in steps]
    got = _values(lr, steps)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.all(np.diff(got[:6]) > 0)  # the ramp rises to the scaled rate


def test_a_schedule_is_scaled_and_warmed_up():
    base = StepDecay(0.1, step_size=100, factor=0.5)
    k, w = 4, 20
    lr = scale_learning_rate(base, 64, 64 * k, warmup_steps=w)
    assert isinstance(lr, Warmup) and isinstance(lr.schedule, Scaled)
    steps = [0, 10, 19, 20, 119, 120, 500]
    want = [
        0.1 + (k * 0.1 - 0.1) * t / w if t < w else k * 0.1 * 0.5 ** ((t - w) // 100) for t in steps
    ]
    np.testing.assert_allclose(_values(lr, steps), want, rtol=1e-6)


def test_a_keras_schedule_is_scaled_without_warmup():
    base = keras.optimizers.schedules.ExponentialDecay(0.2, decay_steps=10, decay_rate=0.5)
    lr = scale_learning_rate(base, 128, 512, rule="sqrt")
    assert isinstance(lr, Scaled)
    steps = [0, 5, 10, 30]
    want = [2.0 * 0.2 * 0.5 ** (t / 10) for t in steps]
    np.testing.assert_allclose(_values(lr, steps), want, rtol=1e-6)


def test_the_result_round_trips():
    for lr in (
        scale_learning_rate(0.1, 256, 1024),
        scale_learning_rate(0.1, 256, 1024, warmup_steps=5),
        scale_learning_rate(StepDecay(0.1, 10), 256, 1024, warmup_steps=5),
    ):
        restored = assert_round_trip(lr)
        assert [float(restored(t)) for t in (0, 3, 5, 30)] == pytest.approx(
            [float(lr(t)) for t in (0, 3, 5, 30)]
        )


def test_scaling_argument_errors():
    with pytest.raises(ValueError, match="base_lr=0"):
        scale_learning_rate(0, 256, 1024)
    with pytest.raises(TypeError, match="Received: base_lr='0.1'"):
        scale_learning_rate("0.1", 256, 1024)
    with pytest.raises(ValueError, match="base_batch_size=0"):
        scale_learning_rate(0.1, 0, 1024)
    with pytest.raises(ValueError, match="whole number"):
        scale_learning_rate(0.1, 256, 1024.5)
    with pytest.raises(ValueError, match="'linear', 'sqrt'.*Received: rule='cubic'"):
        scale_learning_rate(0.1, 256, 1024, rule="cubic")
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        scale_learning_rate(0.1, 256, 1024, warmup_steps=-1)
    with pytest.raises(TypeError, match="Received: base_lr=np.True_"):
        scale_learning_rate(np.bool_(True), 256, 1024)
    with pytest.raises(
        ValueError, match="`base_lr` must be a finite number. Received: base_lr=np.float32"
    ):
        scale_learning_rate(np.float32("inf"), 256, 1024)
    with pytest.raises(
        ValueError, match=r"`warmup_steps` must be at most 2\*\*53.*warmup_steps=1e\+308"
    ):
        scale_learning_rate(0.1, 256, 1024, warmup_steps=1e308)


def test_numpy_scalars_are_accepted_like_python_numbers():
    # np.float32(0.5) used to raise "must be a number".
    lr = scale_learning_rate(
        np.float32(0.5), np.int64(256), np.array(1024), warmup_steps=np.int32(4)
    )
    reference = scale_learning_rate(0.5, 256, 1024, warmup_steps=4)
    assert [float(lr(t)) for t in (0, 2, 4, 50)] == pytest.approx([0.5, 1.25, 2.0, 2.0])
    assert lr.get_config() == reference.get_config()


# -- input pipeline -------------------------------------------------------------------------


def _stages(dataset):
    """Class names of the pipeline's datasets, from the last stage back to the source."""
    names = []
    while dataset is not None:
        names.append(type(dataset).__name__)
        inputs = dataset._inputs()
        dataset = inputs[0] if inputs else None
    return names


def _policy(dataset):
    return dataset.options().experimental_distribute.auto_shard_policy


def _arrays(n=10):
    x = np.arange(n * 3, dtype="float32").reshape(n, 3)
    return x, np.arange(n, dtype="float32")


def test_batches_are_global_and_the_remainder_is_kept_on_one_replica():
    x, y = _arrays()
    dataset = input_pipeline(x, y, global_batch_size=4, shuffle=False)
    batches = list(dataset)
    assert [int(b[0].shape[0]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)


def test_the_remainder_is_dropped_under_several_replicas(mirrored):
    x, y = _arrays()
    dropped = input_pipeline(x, y, global_batch_size=4, strategy=mirrored, seed=0)
    assert [int(b[0].shape[0]) for b in dropped] == [4, 4]
    assert dropped.element_spec[0].shape.as_list() == [4, 3]  # static: fine for TPUs
    with mirrored.scope():  # None: the strategy in scope
        in_scope = input_pipeline(x, y, global_batch_size=4, seed=0)
    assert [int(b[0].shape[0]) for b in in_scope] == [4, 4]
    kept = input_pipeline(x, y, global_batch_size=4, strategy=mirrored, drop_remainder=False)
    assert [int(b[0].shape[0]) for b in kept] == [4, 4, 2]
    with pytest.raises(ValueError, match="global_batch=5"):
        input_pipeline(x, y, global_batch_size=5, strategy=mirrored)


def test_shuffle_is_a_seeded_permutation_reshuffled_each_epoch():
    x, y = _arrays(20)
    dataset = input_pipeline(x, y, global_batch_size=5, seed=7)
    first = np.concatenate([b[1] for b in dataset])
    second = np.concatenate([b[1] for b in dataset])
    again = np.concatenate([b[1] for b in input_pipeline(x, y, global_batch_size=5, seed=7)])
    np.testing.assert_array_equal(np.sort(first), y)  # every example once per epoch
    np.testing.assert_array_equal(np.sort(second), y)
    assert not np.array_equal(first, y) and not np.array_equal(first, second)
    np.testing.assert_array_equal(first, again)  # same seed, same order
    # Inputs stay paired with their targets.
    for xb, yb in dataset:
        np.testing.assert_array_equal(xb.numpy()[:, 0], 3 * yb.numpy())


def test_stages_and_options():
    x, y = _arrays()
    default = input_pipeline(x, y, global_batch_size=4)
    assert _stages(default) == [
        "_OptionsDataset",
        "_PrefetchDataset",
        "_BatchDataset",
        "_ShuffleDataset",
        "_TensorSliceDataset",
    ]
    assert _policy(default) == tf.data.experimental.AutoShardPolicy.DATA
    plain = input_pipeline(
        x, y, global_batch_size=4, shuffle=False, prefetch=0, cache=True, auto_shard_policy="off"
    )
    assert _stages(plain) == [
        "_OptionsDataset",
        "_BatchDataset",
        "CacheDataset",
        "_TensorSliceDataset",
    ]
    assert _policy(plain) == tf.data.experimental.AutoShardPolicy.OFF
    buffered = input_pipeline(x, y, global_batch_size=4, shuffle=3, prefetch=tf.data.AUTOTUNE)
    assert "_PrefetchDataset" in _stages(buffered) and "_ShuffleDataset" in _stages(buffered)


def test_several_inputs_as_a_dict_or_a_list():
    x, y = _arrays()
    dataset = input_pipeline({"a": x, "b": y[:, None]}, y, global_batch_size=5, shuffle=False)
    (xb, yb), _ = list(dataset)
    assert xb["a"].shape == (5, 3) and xb["b"].shape == (5, 1) and yb.shape == (5,)
    # A list is several inputs (as in Keras), not one tensor to stack.
    dataset = input_pipeline([x, y[:, None]], y, global_batch_size=5, shuffle=False)
    ((first, second), yb), _ = list(dataset)
    assert first.shape == (5, 3) and second.shape == (5, 1)
    np.testing.assert_array_equal(second.numpy()[:, 0], yb.numpy())


def test_a_dataset_source(tmp_path):
    x, y = _arrays()
    source = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = input_pipeline(source, global_batch_size=4, seed=0, cache=str(tmp_path / "cache"))
    assert _policy(dataset) == tf.data.experimental.AutoShardPolicy.AUTO
    assert sorted(np.concatenate([b[1] for b in dataset]).tolist()) == y.tolist()
    by_file = input_pipeline(source, global_batch_size=4, auto_shard_policy="file")
    assert _policy(by_file) == tf.data.experimental.AutoShardPolicy.FILE
    unknown_size = source.filter(lambda a, b: b >= 0)
    with pytest.raises(ValueError, match="pass a buffer size.*cardinality=-2"):
        input_pipeline(unknown_size, global_batch_size=4)
    assert len(list(input_pipeline(unknown_size, global_batch_size=4, shuffle=10))) == 3


def test_pipeline_argument_errors():
    x, y = _arrays()
    source = tf.data.Dataset.from_tensor_slices((x, y))
    with pytest.raises(ValueError, match="same number of samples. Received: 10 in x, 9 in y"):
        input_pipeline(x, y[:9], global_batch_size=2)
    with pytest.raises(ValueError, match="leading sizes"):
        input_pipeline({"a": x, "b": y[:9]}, global_batch_size=2)
    with pytest.raises(ValueError, match="`y` must be None"):
        input_pipeline(source, y, global_batch_size=2)
    with pytest.raises(ValueError, match="'file' needs a dataset read from several files"):
        input_pipeline(x, y, global_batch_size=2, auto_shard_policy="file")
    with pytest.raises(ValueError, match="Received: auto_shard_policy='DATA'"):
        input_pipeline(x, y, global_batch_size=2, auto_shard_policy="DATA")
    with pytest.raises(ValueError, match="global_batch_size=0"):
        input_pipeline(x, y, global_batch_size=0)
    with pytest.raises(ValueError, match="shuffle=0"):
        input_pipeline(x, y, global_batch_size=2, shuffle=0)
    with pytest.raises(ValueError, match="Received: prefetch='fast'"):
        input_pipeline(x, y, global_batch_size=2, prefetch="fast")
    with pytest.raises(ValueError, match="prefetch=-2"):
        input_pipeline(x, y, global_batch_size=2, prefetch=-2)
    with pytest.raises(TypeError, match="Received: cache=1"):
        input_pipeline(x, y, global_batch_size=2, cache=1)
    with pytest.raises(TypeError, match="drop_remainder"):
        input_pipeline(x, y, global_batch_size=2, drop_remainder=1)
    with pytest.raises(TypeError, match="seed"):
        input_pipeline(x, y, global_batch_size=2, seed="0")


# The defaults, decided without a cluster: (arguments, expected (drop_remainder, policy)).
PLANS = [
    ({}, (False, "DATA")),
    ({"replicas": 2}, (True, "DATA")),
    ({"replicas": 2, "drop_remainder": False}, (False, "DATA")),
    ({"in_memory": False}, (False, "AUTO")),
    ({"in_memory": False, "auto_shard_policy": "file", "workers": 2}, (False, "FILE")),
    ({"workers": 2, "replicas": 4, "seed": 0}, (True, "DATA")),
    ({"workers": 2, "replicas": 2, "shuffle": False}, (True, "DATA")),
    ({"workers": 2, "auto_shard_policy": "off"}, (False, "OFF")),
]


@pytest.mark.parametrize(("arguments", "expected"), PLANS)
def test_pipeline_defaults(arguments, expected):
    plan = {
        "in_memory": True,
        "replicas": 1,
        "workers": 1,
        "shuffle": True,
        "seed": None,
        "drop_remainder": None,
        "auto_shard_policy": "auto",
    }
    assert _pipeline_plan(**{**plan, **arguments}) == expected


@pytest.mark.parametrize("in_memory", [True, False])
def test_shuffled_multi_worker_pipeline_sharded_by_element_needs_a_seed(in_memory):
    with pytest.raises(ValueError, match="2 workers.*needs a `seed`.*Received: seed=None"):
        _pipeline_plan(
            in_memory=in_memory,
            replicas=2,
            workers=2,
            shuffle=True,
            seed=None,
            drop_remainder=None,
            auto_shard_policy="auto",
        )


# -- fit under MirroredStrategy ---------------------------------------------------------------


def _train(strategy, x, y, lr, global_batch, drop_remainder=None):
    steps = []

    class CountSteps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)

    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr()), loss="mse")
    # Unshuffled: a reshuffled dataset's order depends on how many iterators were made
    # from it, and fit makes a different number under a strategy than without one.
    dataset = input_pipeline(
        x, y, global_batch_size=global_batch, shuffle=False, drop_remainder=drop_remainder,
        strategy=strategy,
    )  # fmt: skip
    # The pipeline shuffles; fit's own shuffle=True would only warn (Keras 3.15).
    model.fit(dataset, epochs=2, verbose=0, shuffle=False, callbacks=[CountSteps()])
    return [w.numpy() for w in model.weights], len(steps)


def test_fit_under_mirrored_equals_one_device_on_the_same_global_batch(mirrored):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(36, 3)).astype("float32")
    y = (x @ rng.normal(size=(3, 2))).astype("float32")

    def lr():  # the rate for 2 replicas of 8, tuned for one device with a batch of 8
        return scale_learning_rate(StepDecay(0.05, step_size=3, factor=0.5), 8, 16, warmup_steps=2)

    two, steps_two = _train(mirrored, x, y, lr, global_batch_size(8, mirrored))
    one, steps_one = _train(tf.distribute.get_strategy(), x, y, lr, 16, drop_remainder=True)
    assert steps_two == steps_one == 2 * 2  # 36 // 16 full batches per epoch, 2 epochs
    for a, b in zip(two, one, strict=True):
        assert not np.allclose(b, 0.0)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
