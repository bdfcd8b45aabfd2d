"""One trace per model: ``GradientNormMonitor`` reuses its traced train functions across ``fit`` calls.

The count is of calls of the Python ``train_step``, which runs only when a
train function is traced (``tf.function`` on TensorFlow, ``jax.jit`` on JAX).
With ``steps_per_execution=1`` the monitor traces two steps, a plain one and
a sampling one (the host picks one per call), so a model's first monitored
``fit`` traces twice and later ones not at all; with ``steps_per_execution >
1`` it traces one step that decides in-graph.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from nnkit.callbacks import (
    EarlyStopping,
    GradientNormMonitor,
    LearningRateMonitor,
    ReduceLROnPlateau,
)
from nnkit.tuning import lr_find

TRACES = []


class Counted(keras.Sequential):
    def train_step(self, *args, **kwargs):
        TRACES.append(1)
        return super().train_step(*args, **kwargs)


def _model():
    keras.utils.set_random_seed(0)
    model = Counted([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)], name="net")
    model.compile(keras.optimizers.Adam(0.01), loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    return x, x @ np.ones((4, 1), "float32")


def _stack():
    return [
        EarlyStopping(monitor="loss", patience=5),
        ReduceLROnPlateau(monitor="loss", patience=5),
        LearningRateMonitor(),
        GradientNormMonitor(sample_every=2),
    ]


def test_fit_fit_fit_traces_once():
    x, y = _data()
    model = _model()
    TRACES.clear()
    monitor = GradientNormMonitor(sample_every=2)
    for _ in range(3):
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
    assert len(TRACES) == 2  # the plain step and the sampling step, once each
    # The reused function still measures, on the cadence of the optimizer's step.
    assert monitor.history["steps"] == [16, 18, 20, 22]
    assert int(model.optimizer.iterations.numpy()) == 24


def test_the_whole_stack_fresh_callbacks_every_fit_traces_once():
    x, y = _data()
    model = _model()
    TRACES.clear()
    for _ in range(3):
        stack = _stack()
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=stack)
    assert len(TRACES) == 2
    assert stack[-1].history["steps"] == [16, 18, 20, 22]


def test_lr_find_then_fit_traces_the_sweep_and_the_monitored_step_once_each():
    x, y = _data()
    model = _model()
    TRACES.clear()
    lr_find(model, x, y, batch_size=8, steps=12, learning_rates=(1e-4, 10.0))
    swept = len(TRACES)
    assert swept == 1
    monitor = GradientNormMonitor(sample_every=2)
    for _ in range(2):
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[monitor])
    assert len(TRACES) == swept + 2
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)  # the sweep's step, kept
    assert len(TRACES) == swept + 2


def test_a_change_the_trace_read_traces_again():
    x, y = _data()
    model = _model()
    TRACES.clear()
    monitor = GradientNormMonitor(sample_every=2)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[monitor])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")  # another optimizer
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[monitor])
    assert len(TRACES) == 4
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[GradientNormMonitor()])
    assert len(TRACES) == 6  # another cadence: traced again
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[monitor])
    assert len(TRACES) == 8  # only the last one is kept


_JAX_SCRIPT = textwrap.dedent(
    """
    import json
    import keras, numpy as np
    from nnkit.callbacks import (EarlyStopping, GradientNormMonitor, LearningRateMonitor,
                                 ReduceLROnPlateau)
    from nnkit.tuning import lr_find

    TRACES = []

    class Counted(keras.Sequential):
        def train_step(self, *args, **kwargs):
            TRACES.append(1)
            return super().train_step(*args, **kwargs)

    keras.utils.set_random_seed(0)
    model = Counted([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.01), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = x @ np.ones((4, 1), "float32")
    lr_find(model, x, y, batch_size=8, steps=12, learning_rates=(1e-4, 10.0))
    out = {"lr_find": len(TRACES)}
    for _ in range(3):
        stack = [EarlyStopping(monitor="loss", patience=5),
                 ReduceLROnPlateau(monitor="loss", patience=5), LearningRateMonitor(),
                 GradientNormMonitor(sample_every=2)]
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=stack)
    out["fits"] = len(TRACES)
    out["steps"] = stack[-1].history["steps"]
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_jax_traces_once_per_model():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT], env=env, capture_output=True, text=True,
        timeout=300, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    out = json.loads(line[len("RESULT ") :])
    assert out == {"lr_find": 1, "fits": 3, "steps": [16, 18, 20, 22]}


BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end")


class _Seen(keras.callbacks.Callback):
    """Records which batch hooks the watched callback holds on itself at each epoch end."""

    def __init__(self, watched):
        super().__init__()
        self.watched, self.seen = watched, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(sorted(h for h in BATCH_HOOKS if h in self.watched.__dict__))


@pytest.mark.parametrize(
    "on_nonfinite, bound", [("warn", []), ("skip", []), ("stop", ["on_train_batch_end"])]
)
def test_a_batch_hook_only_for_stop(on_nonfinite, bound):
    """No Python per batch by default: the class keeps Keras's no-op batch hooks."""
    for hook in BATCH_HOOKS:
        assert getattr(GradientNormMonitor, hook) is getattr(keras.callbacks.Callback, hook)
    model = _model()
    monitor = GradientNormMonitor(sample_every=2, on_nonfinite=on_nonfinite)
    seen = _Seen(monitor)
    x, y = np.ones((8, 4), "float32"), np.ones((8, 1), "float32")
    model.fit(x, y, batch_size=2, epochs=2, callbacks=[monitor, seen], verbose=0)
    assert seen.seen == [bound, bound]  # TensorFlow: the counter check at batch ends
    assert not any(h in monitor.__dict__ for h in BATCH_HOOKS)  # unbound at train end
    assert monitor.nonfinite_steps == 0 and monitor.history["steps"] == [0, 2, 4, 6]


def _compiled(steps_per_execution):
    keras.utils.set_random_seed(0)
    model = Counted([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)], name="net")
    model.compile(keras.optimizers.Adam(0.01), loss="mse", steps_per_execution=steps_per_execution)
    return model


def test_host_choice_and_in_graph_branch_record_the_same_samples():
    """The host's choice (one step per call) and the in-graph cadence (two per call) agree.

    7 steps an epoch (the last batch short), ``sample_every=3``: samples at
    the cadence's steps 0, 3, 6 and then, in epoch 2 (steps 7-13), 9 and 12;
    epoch 3 (14-20): 15, 18. Both runs train the same weights on the same
    batches, so every figure is the same up to float rounding.
    """
    rng = np.random.default_rng(1)
    x = rng.normal(size=(52, 4)).astype("float32")
    y = x @ np.arange(1.0, 5.0, dtype="float32")[:, None]
    histories, weights = [], []
    for steps_per_execution in (1, 2):
        model = _compiled(steps_per_execution)
        monitor = GradientNormMonitor(sample_every=3)
        model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[monitor])
        # Which design ran (trace counts depend on how Keras handles the short batch).
        assert (monitor._cadence is not None) == (steps_per_execution == 1)
        histories.append(monitor.history)
        weights.append(model.get_weights())
    one, two = histories
    assert one["steps"] == two["steps"] == [0, 3, 6, 9, 12, 15, 18]
    for name in ("global_norm", "grad_norms", "weight_norms", "update_ratios"):
        np.testing.assert_allclose(np.asarray(one[name]), np.asarray(two[name]), rtol=1e-5)
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_an_epoch_without_a_regular_sample_samples_its_last_step():
    """``sample_every`` longer than an epoch: the host samples the run's first and each epoch's last step."""
    x, y = _data()  # 4 steps an epoch
    model = _model()
    monitor = GradientNormMonitor(sample_every=100)
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[monitor])
    assert monitor.history["steps"] == [0, 7, 11]  # step 0; epoch 1 had one; epochs 2, 3: last
