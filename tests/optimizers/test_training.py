"""Shampoo and SOAP inside ``model.fit``: compiled, saved, resumed, scheduled, monitored, mixed,
mirrored, and on JAX.

The numbers of a compiled ``fit`` are checked against the numpy implementations
of ``tests/optimizers/_reference.py`` on a linear least-squares problem (full
batch, so every step's gradient is ``2/(N·k) · Xᵀ(XW − Y)`` of the current
weights); everything else compares nnkit runs with each other.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from nnkit.callbacks import BackupAndRestore, GradientNormMonitor, ReduceLROnPlateau
from nnkit.optimizers import SOAP, Shampoo
from nnkit.schedules import CosineAnnealing
from tests.distribute._mirrored import mirrored_strategy
from tests.optimizers._reference import ShampooReference, SOAPReference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Cadences short enough that a few steps refresh the preconditioner several times.
SETTINGS = {
    "Shampoo": dict(refresh_every=2, start_preconditioning_step=2, relative_damping=1e-4),
    "SOAP": dict(refresh_every=2, start_preconditioning_step=2, weight_decay=0.01),
}
CLASSES = {"Shampoo": (Shampoo, ShampooReference), "SOAP": (SOAP, SOAPReference)}
N, FEATURES, UNITS = 32, 5, 3


def _least_squares():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES))
    y = x @ rng.normal(size=(FEATURES, UNITS)) + 0.1 * rng.normal(size=(N, UNITS))
    w0 = 0.3 * rng.normal(size=(FEATURES, UNITS))
    return x, y, w0


def _linear_model(optimizer, w0, jit_compile=False):
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(UNITS, use_bias=False)])
    model.compile(optimizer, loss="mse", jit_compile=jit_compile)
    model.layers[0].kernel.assign(w0.astype("float32"))
    return model


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_fit_matches_the_numpy_rule(name, jit_compile):
    cls, reference_cls = CLASSES[name]
    x, y, w0 = _least_squares()
    model = _linear_model(cls(0.05, **SETTINGS[name]), w0, jit_compile)
    steps = 7
    model.fit(x.astype("f4"), y.astype("f4"), batch_size=N, epochs=steps, shuffle=False, verbose=0)
    reference, w = reference_cls((FEATURES, UNITS), 0.05, **SETTINGS[name]), w0
    for _ in range(steps):
        w = reference.step(w, 2.0 / (N * UNITS) * x.T @ (x @ w - y))
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), w, rtol=1e-4, atol=1e-5)
    assert np.max(np.abs(w - w0)) > 0.1


def _data(rows=64, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6)).astype("float32")
    return x, np.tanh(x @ rng.normal(size=(6, 2))).astype("float32")


def _model(optimizer, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
    )
    model.compile(optimizer, loss="mse", jit_compile=False)
    return model


def _optimizer(name, learning_rate=0.02):
    return CLASSES[name][0](learning_rate, **SETTINGS[name])


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_save_and_load_round_trips_the_optimizer_state(name, tmp_path):
    x, y = _data()
    model = _model(_optimizer(name, CosineAnnealing(0.02, 40)))
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    saved = [w.numpy() for w in model.optimizer.variables]
    assert len(saved) > 4 and len(saved) == len(loaded.optimizer.variables)
    for a, b in zip(saved, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    # Training on from the reloaded state is training on from the original one.
    for m in (model, loaded):
        m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


class _Crash(Exception):
    pass


class _CrashAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Crash


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_backup_and_restore_resumes_exactly(name, tmp_path):
    """Interrupted at the end of epoch 2 and resumed: the run of an uninterrupted fit, plateau
    included. The backup due at that end is written at the next hook, so it never was: the
    resumed fit repeats epoch 2 from epoch 1's backup (optimizer state included)."""
    x, y = _data()

    def run(callbacks):
        model = _model(_optimizer(name, CosineAnnealing(0.05, 80)))
        plateau = ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=10.0)
        history = model.fit(
            x, y, batch_size=16, epochs=5, shuffle=False, verbose=0, callbacks=[plateau, *callbacks]
        )
        return model, history

    reference, history = run([])
    backup = str(tmp_path / "backup")
    with pytest.raises(_Crash):
        run([BackupAndRestore(backup), _CrashAt(2)])
    resumed, resumed_history = run([BackupAndRestore(backup)])
    assert resumed_history.epoch == [2, 3, 4]
    np.testing.assert_allclose(resumed_history.history["loss"], history.history["loss"][2:])
    for a, b in zip(reference.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    def scale(model):
        return model.optimizer.get_config()["learning_rate"]["config"]["scale"]

    # ReduceLROnPlateau's factor, through the schedule: every epoch after the first reduces.
    assert scale(resumed) == scale(reference) == 0.5**4


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_gradient_norm_monitor_only_measures(name, tmp_path):
    x, y = _data()
    plain = _model(_optimizer(name))
    plain.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    monitored = _model(_optimizer(name))
    monitor = GradientNormMonitor(sample_every=2)
    monitored.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
    report = monitor.report()
    assert len(report.steps) > 0 and np.all(np.asarray(report.grad_norms) > 0)
    for a, b in zip(plain.get_weights(), monitored.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.fixture
def policy():
    before = keras.config.dtype_policy()
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy(before)


@pytest.mark.parametrize("mixed", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_mixed_precision_keeps_statistics_in_float32(name, mixed, policy):
    policy(mixed)
    x, y = _data()
    model = _model(_optimizer(name))
    history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    optimizer = model.optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    assert type(optimizer).__name__ == name
    state = [w for w in optimizer.variables if "nnkit_optimizer_" in w.path]
    assert any("_statistic_" in w.path for w in state)
    assert {w.dtype for w in state} == {"float32"}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_replicas_hold_bitwise_identical_state(name):
    """Under MirroredStrategy on two logical CPUs every replica's copy of every optimizer
    variable (statistics, roots or bases, moments) is the same, bit for bit."""
    strategy = mirrored_strategy()
    x, y = _data()
    with strategy.scope():
        model = _model(_optimizer(name))
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)  # 12 steps, 6 refreshes
    checked = 0
    for variable in model.optimizer.variables + model.weights:
        copies = [
            np.asarray(c.numpy()) for c in strategy.experimental_local_results(variable.value)
        ]
        assert len(copies) == 2
        assert all(np.array_equal(copies[0], c) for c in copies[1:]), variable.path
        checked += 1
    bases = "_root_" if name == "Shampoo" else "_basis_"
    refreshed = [w for w in model.optimizer.variables if bases in w.path]
    assert refreshed and not np.allclose(refreshed[0].numpy(), np.eye(len(refreshed[0].numpy())))
    assert checked > 10


JAX_SCRIPT = """
import json, sys
import keras, numpy as np
from nnkit.optimizers import SOAP, Shampoo
from tests.optimizers._reference import ShampooReference, SOAPReference
from tests.optimizers import test_training as T

results = {}
x, y, w0 = T._least_squares()
for name in ("Shampoo", "SOAP"):
    cls, reference_cls = T.CLASSES[name]
    for jit in (True, False):
        model = T._linear_model(cls(0.05, **T.SETTINGS[name]), w0, jit_compile=jit)
        model.fit(x.astype("f4"), y.astype("f4"), batch_size=T.N, epochs=5, shuffle=False,
                  verbose=0)
        reference, w = reference_cls((T.FEATURES, T.UNITS), 0.05, **T.SETTINGS[name]), w0
        for _ in range(5):
            w = reference.step(w, 2.0 / (T.N * T.UNITS) * x.T @ (x @ w - y))
        results[f"{name}/jit={jit}"] = float(np.max(np.abs(model.layers[0].kernel.numpy() - w)))
    path = sys.argv[1] + f"/{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    same = all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(model.optimizer.variables, loaded.optimizer.variables))
    results[f"{name}/reloaded"] = same and len(loaded.optimizer.variables) > 4
print(json.dumps(results))
"""


@pytest.mark.slow
def test_jax_backend_fit_matches_the_numpy_rule_and_saves(tmp_path):
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(JAX_SCRIPT), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("Shampoo", "SOAP"):
        assert results[f"{name}/reloaded"] is True
        for jit in (True, False):
            assert results[f"{name}/jit={jit}"] < 1e-4, results
