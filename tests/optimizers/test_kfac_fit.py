"""KFAC inside ``fit``: saving, resuming, schedules, callbacks, mixed precision, replicas, JAX."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from nnkit import schedules
from nnkit.callbacks import BackupAndRestore, GradientNormMonitor, ReduceLROnPlateau
from nnkit.optimizers import KFAC
from tests.distribute._mirrored import mirrored_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, np.tanh(x[:, :2] * 1.5 - x[:, 2:4]).astype("float32")


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
    )


def _kfac(model, learning_rate=0.05, **kwargs):
    return KFAC(learning_rate, model=model, refresh_every=3, **kwargs)


def test_save_and_load_round_trips_the_optimizer_state(tmp_path):
    x, y = _data()
    model = _model()
    optimizer = _kfac(model)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    path = tmp_path / "kfac.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    # Without registration the model is a plain Keras model with the plain weights.
    assert len(loaded.weights) == 4
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert isinstance(loaded.optimizer, KFAC)
    loaded.optimizer.register(loaded)
    saved, restored = optimizer.variables, loaded.optimizer.variables
    assert len(saved) == len(restored) == 2 + 4 + 1 + 2 * 4  # iterations, lr, momenta, counter,
    for a, b in zip(saved, restored, strict=True):  # and A, G, two inverses per layer
        assert a.shape == b.shape and a.dtype == b.dtype, (a.name, b.name)
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.name)
    # Training continues identically from the loaded state.
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


def test_resumes_with_backup_and_restore(tmp_path):
    x, y = _data(seed=1)
    reference = _model(seed=2)
    reference.compile(optimizer=_kfac(reference), loss="mse")
    reference.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)
    backup = str(tmp_path / "backup")
    model = _model(seed=2)
    model.compile(optimizer=_kfac(model), loss="mse")
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                  callbacks=[BackupAndRestore(backup), _Interrupt()])  # fmt: skip
    resumed = _model(seed=3)
    resumed.compile(optimizer=_kfac(resumed), loss="mse")
    resumed.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                callbacks=[BackupAndRestore(backup)])  # fmt: skip
    for a, b in zip(reference.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_schedule_reduce_lr_on_plateau_and_gradient_norm_monitor():
    x, y = _data(seed=4)
    model = _model(seed=5)
    schedule = schedules.Warmup(schedules.CosineAnnealing(0.05, 40), 4)
    model.compile(optimizer=_kfac(model, schedule), loss="mse", jit_compile=True)
    reduce = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0,
                        callbacks=[reduce, GradientNormMonitor(sample_every=2)])  # fmt: skip
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert int(model.optimizer.iterations) == 12


def test_mixed_precision_keeps_the_factors_in_float32():
    x, y = _data(seed=6)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model(seed=7)
        optimizer = _kfac(model)
        model.compile(optimizer=optimizer, loss="mse")
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    factors = [
        v for v in optimizer.variables if v.name.endswith("_factor") or "curvature" in v.name
    ]
    assert factors and all(v.dtype == "float32" for v in factors)
    assert all(np.all(np.isfinite(v.numpy())) for v in factors)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_mirrored_replicas_are_identical_and_match_one_device():
    x, y = _data(seed=8)
    single = _model(seed=9)
    single.compile(optimizer=_kfac(single), loss="mse")
    single.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    strategy = mirrored_strategy()
    with strategy.scope():
        mirrored = _model(seed=9)
        optimizer = _kfac(mirrored)
        mirrored.compile(optimizer=optimizer, loss="mse")
    mirrored.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    for variable in [*mirrored.weights, *optimizer.variables]:
        first, *others = [c.numpy() for c in variable.value.values]
        for other in others:
            np.testing.assert_array_equal(first, other, err_msg=variable.path)
    for a, b in zip(single.get_weights(), mirrored.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


JAX_SCRIPT = textwrap.dedent(
    """
    import keras, numpy as np
    from nnkit.optimizers import KFAC
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 3)).astype("float32")
    y = (x @ rng.normal(size=(3, 2)) + 0.3 * rng.normal(size=(48, 2))).astype("float32")
    design = np.concatenate([x, np.ones((48, 1), "float32")], axis=1).astype("float64")
    solution = np.linalg.lstsq(design, y.astype("float64"), rcond=None)[0]
    for jit in (False, True):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        optimizer = KFAC(1.0, model=model, damping=1e-10, damping_type="tikhonov",
                         momentum=0.0, statistics_decay=0.0, refresh_every=1, kl_clip=None,
                         output_fisher="mean_squared_error")
        model.compile(optimizer=optimizer, loss="mse", jit_compile=jit)
        model.fit(x, y, batch_size=48, epochs=1, verbose=0)
        got = np.concatenate([np.asarray(model.layers[0].kernel),
                              np.asarray(model.layers[0].bias)[None]])
        np.testing.assert_allclose(got, solution, atol=2e-4)
        model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        assert int(optimizer.iterations) == 7
    print("ok")
    """
)


@pytest.mark.slow
def test_jax_backend_least_squares_and_fit():
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", JAX_SCRIPT],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"
