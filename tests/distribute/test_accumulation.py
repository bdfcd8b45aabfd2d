"""nnkit.distribute.accumulate_gradients: N micro-batches equal one N-times larger batch.

Under ``MirroredStrategy`` on two logical CPU devices (where Keras's own
``gradient_accumulation_steps`` fails) and on one device, with SGD, Adam,
nnkit's Shampoo and SOAP and an nnkit schedule; the refusals; a resume
between micro-batches.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit import optimizers as nnkit_optimizers
from nnkit.callbacks import BackupAndRestore
from nnkit.distribute import (
    accumulate_gradients,
    clip_after_aggregation,
    remove_accumulation_patch,
)
from nnkit.distribute.accumulation import accumulates_gradients
from nnkit.schedules import CosineAnnealing
from tests.distribute._mirrored import mirrored_strategy

N, MICRO = 4, 8  # micro-batches per update, micro-batch size


class AtLastMicroBatch(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule(j·N + N − 1)`` at update ``j``: what Keras evaluates under accumulation."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, step):
        return self.schedule(step * N + N - 1)


def _optimizer(name, updates, accumulate):
    if name == "sgd":
        # Keras evaluates a schedule at its raw counter, which counts micro-batches.
        schedule = CosineAnnealing(0.1, total_steps=updates * N)
        return keras.optimizers.SGD(
            schedule if accumulate else AtLastMicroBatch(schedule), momentum=0.9
        )
    if name == "adam":
        return keras.optimizers.Adam(0.01, global_clipnorm=0.5)
    if name == "shampoo":
        return nnkit_optimizers.Shampoo(0.01)
    return nnkit_optimizers.SOAP(0.01)


def _train(name, *, accumulate, strategy, updates):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N * MICRO * updates, 3)).astype("float32")
    y = np.sin(x.sum(axis=1, keepdims=True))
    scope = strategy.scope() if strategy is not None else tf.distribute.get_strategy().scope()
    with scope:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(8, "tanh"), keras.layers.Dense(1)]
        )
        optimizer = _optimizer(name, updates, accumulate)
        if accumulate:
            accumulate_gradients(optimizer, N)
        model.compile(optimizer, loss="mse")
    batch = MICRO if accumulate else N * MICRO
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == updates  # the step counts updates
    return model.get_weights()


def _max_difference(a, b):
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b, strict=True))


# SOAP's eigenbases amplify float round-off (two devices and one differed by 0.08
# after 20 updates without accumulation), so it is compared over 1 update.
@pytest.mark.parametrize(
    ("name", "updates"), [("sgd", 20), ("adam", 20), ("shampoo", 20), ("soap", 1)]
)
def test_micro_batches_under_mirrored_equal_one_larger_batch(name, updates):
    reference = _train(name, accumulate=False, strategy=None, updates=updates)
    mirrored = _train(name, accumulate=True, strategy=mirrored_strategy(), updates=updates)
    assert _max_difference(mirrored, reference) < 2e-5
    one_device = _train(name, accumulate=True, strategy=None, updates=updates)  # Keras's own
    assert _max_difference(one_device, reference) < 2e-5


def test_keras_alone_still_fails_under_mirrored_and_the_patch_is_removable():
    strategy = mirrored_strategy()
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        optimizer = accumulate_gradients(keras.optimizers.SGD(0.1), 2)
        assert accumulates_gradients(optimizer)
        remove_accumulation_patch(optimizer)
        assert not accumulates_gradients(optimizer)
        model.compile(optimizer, loss="mse")
    with pytest.raises(RuntimeError, match="merge_call"):
        model.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=4, verbose=0)


def test_refusals_and_arguments():
    with pytest.raises(TypeError, match="Keras optimizer"):
        accumulate_gradients("sgd", 2)
    with pytest.raises(ValueError, match="Received: steps=1"):
        accumulate_gradients(keras.optimizers.SGD(), 1)
    with pytest.raises(ValueError, match="Received: steps=None"):
        accumulate_gradients(keras.optimizers.SGD())
    assert (
        accumulate_gradients(
            keras.optimizers.SGD(gradient_accumulation_steps=3)
        ).gradient_accumulation_steps
        == 3
    )
    with pytest.raises(ValueError, match="only with a fixed learning rate and the empirical"):
        accumulate_gradients(nnkit_optimizers.KFAC(), 2)  # the adaptive step
    built = keras.optimizers.SGD()
    built.build([keras.Variable(np.ones(2, "float32"))])
    with pytest.raises(ValueError, match="built with gradient_accumulation_steps=None"):
        accumulate_gradients(built, 2)
    clipped = clip_after_aggregation(keras.optimizers.SGD(global_clipnorm=1.0))
    with pytest.raises(ValueError, match="remove_clip_after_aggregation"):
        accumulate_gradients(clipped, 2)
    with pytest.raises(ValueError, match="LossScaleOptimizer"):
        accumulate_gradients(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()), 2)


def test_a_backup_between_micro_batches_resumes_exactly(tmp_path):
    """3 steps per epoch, 2 micro-batches per update: epochs end mid-cycle, accumulators saved."""

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 3:
                raise RuntimeError("interrupted")

    def run(backup_dir, *extra):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(4, "tanh"), keras.layers.Dense(1)]
        )
        model.compile(accumulate_gradients(keras.optimizers.Adam(0.05), 2), loss="mse")
        x = np.random.default_rng(1).normal(size=(12, 3)).astype("float32")
        callbacks = [BackupAndRestore(backup_dir), *extra]
        model.fit(
            x, x[:, :1], batch_size=4, epochs=6, shuffle=False, verbose=0, callbacks=callbacks
        )
        return model.get_weights(), int(model.optimizer.iterations.numpy())

    reference, updates = run(str(tmp_path / "a"))
    with pytest.raises(RuntimeError, match="interrupted"):
        run(str(tmp_path / "b"), Interrupt())
    resumed, resumed_updates = run(str(tmp_path / "b"))
    assert updates == resumed_updates == 9  # 18 micro-batches
    assert _max_difference(resumed, reference) == 0.0


def test_gradient_norm_monitor_reports_each_micro_batch_gradient_under_mirrored():
    from nnkit.callbacks import GradientNormMonitor

    x = np.random.default_rng(2).normal(size=(16, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    strategy = mirrored_strategy()
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(accumulate_gradients(keras.optimizers.SGD(0.1), 2), loss="mse")
    kernel, bias = (w.copy() for w in model.get_weights())
    monitor = GradientNormMonitor(sample_every=1)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[monitor])
    # Micro-batch 0 at the initial weights: d/dw mean((xw + b - y)^2), in closed form.
    xb, yb = x[:4].astype("float64"), y[:4].astype("float64")
    residual = xb @ kernel + bias - yb
    grad = np.concatenate([(2 / 4) * xb.T @ residual, [(2 / 4) * residual.sum(axis=0)]])
    assert monitor.history["steps"][0] == 0
    np.testing.assert_allclose(monitor.history["global_norm"][0], np.linalg.norm(grad), rtol=1e-5)


JAX_SCRIPT = """
import keras, numpy as np
from nnkit.distribute import accumulate_gradients
from nnkit.optimizers import Shampoo
x = np.random.default_rng(0).normal(size=(320, 3)).astype("float32")
y = np.sin(x.sum(1, keepdims=True))
def run(make, accumulate):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, "tanh"), keras.layers.Dense(1)])
    optimizer = accumulate_gradients(make(), 4) if accumulate else make()
    model.compile(optimizer, loss="mse")
    model.fit(x, y, batch_size=8 if accumulate else 32, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()
for make in (lambda: keras.optimizers.Adam(0.01), lambda: Shampoo(0.01)):
    a, b = run(make, True), run(make, False)
    print(keras.backend.backend(), max(float(abs(p - q).max()) for p, q in zip(a, b)))
"""


@pytest.mark.slow
def test_on_jax_keras_accumulation_is_kept_and_exact():
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("jax ")]
    assert len(rows) == 2 and all(float(d) < 2e-5 for _, d in rows), done.stdout
