"""GradientNormMonitor under tf.distribute, on the JAX backend, and across a resume.

The mirrored tests use the two logical CPU devices that ``tests/conftest.py``
sets up. Expected values come from an independent run: the same model, weights
and global batches on one device (no strategy), or, on JAX, from the weights
themselves (plain SGD moves each weight by exactly ``-lr * g``).
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.callbacks import BackupAndRestore, GradientNormMonitor
from tests.distribute._mirrored import mirrored_strategy

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return x, y


def _build(optimizer="sgd", clipnorm=None):
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="tanh", name="hidden"),
            keras.layers.Dense(1, name="out"),
        ],
        name="net",
    )
    if optimizer == "sgd":
        optimizer = keras.optimizers.SGD(0.1, clipnorm=clipnorm)
    else:
        optimizer = keras.optimizers.Adam(0.01)
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _run(strategy, *, sample_every=1, optimizer="sgd", epochs=2):
    x, y = _data()
    if strategy is None:
        model = _build(optimizer)
    else:
        with strategy.scope():
            model = _build(optimizer)
    monitor = GradientNormMonitor(sample_every=sample_every)
    history = model.fit(
        x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0, callbacks=[monitor]
    )
    return model, monitor, history


def _mirrored():
    return mirrored_strategy(("CPU:0", "CPU:1"))


@pytest.mark.parametrize(("optimizer", "sample_every"), [("sgd", 1), ("adam", 3)])
def test_mirrored_norms_are_those_of_the_aggregated_gradients(optimizer, sample_every):
    single, expected, _ = _run(None, sample_every=sample_every, optimizer=optimizer)
    mirrored, monitor, history = _run(_mirrored(), sample_every=sample_every, optimizer=optimizer)
    assert monitor.history["steps"] == expected.history["steps"]
    assert len(monitor.history["steps"]) == len(range(0, 8, sample_every))
    for name in ("global_norm", "grad_norms", "weight_norms", "update_ratios"):
        np.testing.assert_allclose(
            monitor.history[name], expected.history[name], rtol=1e-5, atol=1e-7, err_msg=name
        )
    assert monitor.nonfinite_steps == 0
    for a, b in zip(mirrored.get_weights(), single.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert history.history["grad_norm"][-1] == pytest.approx(monitor.history["global_norm"][-1])


def test_mirrored_norm_of_the_first_step_is_the_global_batch_gradient():
    x, y = _data()
    reference = _build()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(reference(x[:16]) - y[:16]))
    grads = tape.gradient(loss, reference.trainable_variables)
    expected = np.sqrt(sum(float(np.sum(np.square(g.numpy()))) for g in grads))
    _, monitor, _ = _run(_mirrored(), epochs=1)
    assert monitor.history["global_norm"][0] == pytest.approx(expected, rel=1e-5)


def test_mirrored_removal_restores_the_optimizer():
    strategy = _mirrored()
    model, monitor, _ = _run(strategy, epochs=1)
    optimizer = model.optimizer
    assert "apply" not in vars(optimizer)
    assert "_all_reduce_sum_gradients" not in vars(optimizer)
    before = [w.copy() for w in model.get_weights()]
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # no monitor
    assert any(np.abs(a - b).max() > 0 for a, b in zip(model.get_weights(), before, strict=True))
    assert monitor.history["steps"] == [0, 1, 2, 3]


def test_mirrored_skip_is_refused_with_the_alternative():
    x, y = _data()
    with _mirrored().scope():
        model = _build()
    with pytest.raises(ValueError, match=r"on_nonfinite='skip'\) is not supported.*'stop'"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                  callbacks=[GradientNormMonitor(on_nonfinite="skip")])  # fmt: skip
    assert "apply" not in vars(model.optimizer)


class _Interrupted(Exception):
    pass


class _InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Interrupted(epoch)


def test_backup_and_restore_resumes_the_monitor(tmp_path):
    x, y = _data()

    def fit(model, monitor, extra=()):
        backup = BackupAndRestore(str(tmp_path / "backup"))
        return model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                         callbacks=[monitor, backup, *extra])  # fmt: skip

    reference = GradientNormMonitor(sample_every=3)
    _build("adam").fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                       callbacks=[reference])  # fmt: skip

    first = GradientNormMonitor(sample_every=3)
    with pytest.raises(_Interrupted):
        fit(_build("adam"), first, [_InterruptAt(1)])
    assert first.history["steps"] == [0, 3, 6]
    resumed = GradientNormMonitor(sample_every=3)  # a new process: fresh objects
    fit(_build("adam"), resumed)
    assert resumed.history["steps"] == reference.history["steps"] == [0, 3, 6, 9, 12, 15]
    for name in ("global_norm", "grad_norms", "update_ratios"):
        np.testing.assert_allclose(
            resumed.history[name], reference.history[name], rtol=1e-5, err_msg=name
        )
    got, want = resumed.report().to_dict(), reference.report().to_dict()
    assert (got["samples"], got["first_step"], got["last_step"]) == (6, 0, 15)
    assert [f["kind"] for f in got["flags"]] == [f["kind"] for f in want["flags"]]


_JAX_SCRIPT = textwrap.dedent(
    """
    import json, os, warnings
    import keras, numpy as np
    from nnkit.callbacks import GradientNormMonitor

    assert keras.backend.backend() == "jax"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    LR = 0.1

    def build(optimizer=None):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8,)),
                                  keras.layers.Dense(16, activation="tanh", name="hidden"),
                                  keras.layers.Dense(1, name="out")], name="net")
        model.compile(optimizer=optimizer or keras.optimizers.SGD(LR), loss="mse")
        return model

    out = {}
    # 1. SGD moves every weight by -lr * g: the norms follow from the weights.
    model = build()
    names = [w.path for w in model.trainable_variables]
    monitor = GradientNormMonitor(sample_every=1)
    w0 = [np.array(w) for w in model.get_weights()]
    model.fit(x[:16], y[:16], batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[monitor])
    w1 = model.get_weights()
    delta = {}
    for name, a, b in zip(names, w0, w1):
        layer = name.rpartition("/")[0]
        delta[layer] = delta.get(layer, 0.0) + float(np.sum(np.square(b - a)))
    out["expected_layers"] = {k: np.sqrt(v) / LR for k, v in delta.items()}
    out["expected_global"] = float(np.sqrt(sum(delta.values()))) / LR
    out["layers"] = monitor.layers
    out["grad_norms"] = monitor.history["grad_norms"]
    out["global_norm"] = monitor.history["global_norm"]
    out["update_ratios"] = monitor.history["update_ratios"]
    out["weight_norms"] = monitor.history["weight_norms"]
    out["w0_norms"] = {}
    for name, a in zip(names, w0):
        layer = name.rpartition("/")[0]
        out["w0_norms"][layer] = out["w0_norms"].get(layer, 0.0) + float(np.sum(a * a))

    # 2. A longer fit at the default cadence, with a checkpoint saved mid-fit.
    model = build(keras.optimizers.Adam(0.01))
    model.optimizer.build(model.trainable_variables)
    own = len(model.optimizer.variables)
    path = os.path.join(os.environ["OUT_DIR"], "mid.keras")
    monitor = GradientNormMonitor()
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                        callbacks=[monitor, keras.callbacks.ModelCheckpoint(path)])
    out["steps"] = monitor.history["steps"]
    out["log_keys"] = sorted(history.history)
    out["variables_after"] = [own, len(model.optimizer.variables)]
    out["patched_after"] = sorted(k for k in ("apply", "save_own_variables")
                                  if k in vars(model.optimizer))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = keras.models.load_model(path)
    out["loaded_variables"] = len(loaded.optimizer.variables)

    # 3. "skip": a NaN batch leaves weights and optimizer state untouched.
    bad = x.copy()
    bad[20] = np.nan
    model = build(keras.optimizers.Adam(0.01))
    monitor = GradientNormMonitor(sample_every=3, on_nonfinite="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(bad, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                  callbacks=[monitor])
    out["skip"] = {
        "finite": all(bool(np.isfinite(w).all()) for w in model.get_weights()),
        "iterations": int(model.optimizer.iterations),
        "nonfinite_steps": monitor.nonfinite_steps,
        "first_step": monitor.first_nonfinite_step,
    }

    # 4. "stop" ends training at the next check.
    model = build()
    monitor = GradientNormMonitor(sample_every=1, on_nonfinite="stop")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = model.fit(bad, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
                            callbacks=[monitor])
    out["stop_epochs"] = len(history.history["loss"])
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_jax_backend(tmp_path):
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", OUT_DIR=str(tmp_path), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT], env=env, capture_output=True, text=True,
        timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    out = json.loads(line[len("RESULT ") :])

    layers = out["layers"]
    assert layers == ["net/hidden", "net/out"]
    (grad_norms,) = out["grad_norms"]
    expected = [out["expected_layers"][k] for k in layers]
    np.testing.assert_allclose(grad_norms, expected, rtol=1e-4)
    assert out["global_norm"][0] == pytest.approx(out["expected_global"], rel=1e-4)
    (weight_norms,) = out["weight_norms"]
    np.testing.assert_allclose(
        weight_norms, [np.sqrt(out["w0_norms"][k]) for k in layers], rtol=1e-5
    )
    (ratios,) = out["update_ratios"]
    np.testing.assert_allclose(ratios, 0.1 * np.array(expected) / np.array(weight_norms), rtol=1e-4)

    assert out["steps"] == list(range(0, 32, 10))
    assert {"grad_norm", "grad_norm_min", "grad_norm_max", "nonfinite_grads"} <= set(
        out["log_keys"]
    )
    own, after = out["variables_after"]
    assert own == after == out["loaded_variables"]
    assert out["patched_after"] == []

    assert out["skip"] == {"finite": True, "iterations": 6, "nonfinite_steps": 2, "first_step": 1}
    assert out["stop_epochs"] == 1


def test_steps_per_execution_decides_the_cadence_in_graph():
    """One call runs several steps: the in-graph cadence gives the same samples."""
    x, y = _data()
    runs = {}
    for steps_per_execution in (1, 3):
        model = _build("adam")
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse",
                      steps_per_execution=steps_per_execution)  # fmt: skip
        monitor = GradientNormMonitor(sample_every=3)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
        runs[steps_per_execution] = monitor
    scheduled, in_graph = runs[1], runs[3]
    assert scheduled._hook is None and in_graph._hook is None
    assert scheduled.history["steps"] == in_graph.history["steps"] == list(range(0, 16, 3))
    for name in ("global_norm", "grad_norms", "update_ratios", "weight_norms"):
        np.testing.assert_allclose(
            in_graph.history[name], scheduled.history[name], rtol=1e-5, err_msg=name
        )
