"""SharpnessAwareMinimization: SAM and adaptive SAM against closed forms on a quadratic.

The reference (``tests/models/_sam_reference.py``) solves each step with
numpy; here it is checked eagerly, in a compiled ``fit`` with and without
XLA, with m-sharpness, under ``MirroredStrategy`` (ε per replica), with
nnkit's schedules, ``GradientNormMonitor`` and ``BackupAndRestore``, after a
save/load round trip, and on JAX (a subprocess running the same checks).
"""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from nnkit.callbacks import BackupAndRestore, GradientNormMonitor
from nnkit.models import SharpnessAwareMinimization
from nnkit.schedules import StepDecay
from tests.distribute._mirrored import mirrored_strategy
from tests.models import _sam_reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize(
    "compile_kwargs",
    [{"run_eagerly": True}, {"jit_compile": False}, {"jit_compile": True}],
    ids=["eager", "graph", "xla"],
)
def test_update_matches_the_closed_form(adaptive, compile_kwargs):
    ref.check_quadratic(adaptive, **compile_kwargs)


def test_perturbation_is_rho_along_the_normalized_gradient():
    """One step by hand: θ' = θ − η ∇L(θ + ρ g/‖g‖), and ‖ε‖ = ρ exactly."""
    x, y = ref.data()
    theta = ref.initial_theta()
    g = ref.grad(theta, x, y)
    eps = ref.RHO * g / np.linalg.norm(g)
    assert math.isclose(np.linalg.norm(eps), ref.RHO)
    sam = ref.sam_model()
    sam.fit(x, y, batch_size=ref.ROWS, epochs=1, shuffle=False, verbose=0)
    want = theta - 0.1 * ref.grad(theta + eps, x, y)
    np.testing.assert_allclose(ref.theta_of(sam.model), want, rtol=2e-5, atol=1e-6)
    # SAM differs from plain gradient descent here (the test would not see a no-op).
    assert np.abs(want - (theta - 0.1 * g)).max() > 1e-3


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_num_batch_splits_gives_each_part_its_own_perturbation(adaptive):
    ref.check_quadratic(adaptive, splits=2, steps=2, jit_compile=False)
    # m-sharpness is not the same as one perturbation for the batch.
    one, _ = ref.expected_run(1, [0.1], adaptive, splits=1)
    two, _ = ref.expected_run(1, [0.1], adaptive, splits=2)
    assert np.abs(one - two).max() > 1e-4


def test_batch_norm_statistics_are_updated_by_the_first_pass_only():
    ref.check_batch_norm_first_pass_only()


def test_mirrored_strategy_perturbs_per_replica():
    """Two replicas of 4 rows each train like one device with num_batch_splits=2."""
    x, y = ref.data()
    strategy = mirrored_strategy()
    with strategy.scope():
        sam = ref.sam_model(jit_compile=False)
    history = sam.fit(x, y, batch_size=ref.ROWS, epochs=2, shuffle=False, verbose=0)
    want, _ = ref.expected_run(2, [0.1, 0.1], adaptive=False, splits=2)
    np.testing.assert_allclose(ref.theta_of(sam.model), want, rtol=2e-5, atol=1e-6)
    a = np.hstack([x, np.ones((ref.ROWS, 1))])
    first_loss = np.mean((a @ ref.initial_theta() - y[:, 0]) ** 2)  # the global batch's
    assert history.history["loss"][0] == pytest.approx(first_loss, rel=2e-5)


def test_schedule_and_gradient_norm_monitor_see_the_perturbed_gradient():
    """The rate follows the schedule; the monitor reports ‖g'‖ = ‖∇L(θ + ε)‖, not ‖g‖."""
    x, y = ref.data()
    sam = SharpnessAwareMinimization(ref.linear_model(), rho=ref.RHO)
    sam.compile(keras.optimizers.SGD(StepDecay(0.1, 1, 0.5)), loss="mse")
    monitor = GradientNormMonitor(1)
    history = sam.fit(
        x, y, batch_size=ref.ROWS, epochs=3, shuffle=False, verbose=0, callbacks=[monitor]
    )
    want, norms = ref.expected_run(3, [0.1, 0.05, 0.025], adaptive=False)
    np.testing.assert_allclose(ref.theta_of(sam.model), want, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(history.history["grad_norm"], norms, rtol=1e-4)


class _Interrupted(Exception):
    pass


class _InterruptAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Interrupted


def test_backup_and_restore_resumes_the_same_run(tmp_path):
    x, y = ref.data()

    def model():
        sam = SharpnessAwareMinimization(ref.linear_model(), rho=ref.RHO, adaptive=True)
        sam.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        return sam

    def fit(sam, *callbacks):
        return sam.fit(
            x, y, batch_size=4, epochs=4, shuffle=False, verbose=0, callbacks=list(callbacks)
        )

    reference = model()
    reference_history = fit(reference)
    first = model()
    with pytest.raises(_Interrupted):
        fit(first, BackupAndRestore(str(tmp_path)), _InterruptAfter(1))
    resumed = model()
    history = fit(resumed, BackupAndRestore(str(tmp_path)))
    assert history.epoch == [1, 2, 3]  # the interrupted epoch is rerun, as for any model
    np.testing.assert_allclose(
        history.history["loss"], reference_history.history["loss"][1:], rtol=1e-6
    )
    np.testing.assert_allclose(
        ref.theta_of(resumed.model), ref.theta_of(reference.model), rtol=1e-6, atol=1e-7
    )


def test_save_and_load_round_trip(tmp_path):
    x, y = ref.data()
    sam = ref.sam_model(adaptive=True, splits=2)
    sam.fit(x, y, batch_size=ref.ROWS, epochs=1, verbose=0)
    path = str(tmp_path / "sam.keras")
    sam.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, SharpnessAwareMinimization)
    assert (loaded.rho, loaded.adaptive, loaded.num_batch_splits) == (ref.RHO, True, 2)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), sam.predict(x, verbose=0), rtol=1e-6)
    config = sam.get_config()
    assert SharpnessAwareMinimization.from_config(config).get_config() == config


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rho": 0.0}, ValueError, r"rho=0"),
        ({"rho": -0.1}, ValueError, r"rho"),
        ({"rho": float("nan")}, ValueError, r"rho"),
        ({"rho": float("inf")}, ValueError, r"rho"),
        ({"rho": True}, TypeError, r"rho"),
        ({"rho": "0.05"}, TypeError, r"rho"),
        ({"adaptive": 1}, TypeError, r"adaptive"),
        ({"num_batch_splits": 0}, ValueError, r"num_batch_splits=0"),
        ({"num_batch_splits": 1.5}, ValueError, r"num_batch_splits=1.5"),
        ({"num_batch_splits": "2"}, TypeError, r"num_batch_splits"),
    ],
)
def test_arguments_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        SharpnessAwareMinimization(ref.linear_model(), **kwargs)


def test_model_must_be_a_keras_model():
    with pytest.raises(TypeError, match="model"):
        SharpnessAwareMinimization(keras.layers.Dense(1))


def test_jax_backend_matches_the_closed_forms():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    code = "from tests.models import _sam_reference as r; r.check_all(); print('ok')"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"
