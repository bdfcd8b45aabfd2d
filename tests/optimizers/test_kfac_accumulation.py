"""KFAC under gradient accumulation: N micro-batches equal one N-times larger batch.

The factors (``A``, ``G``), the refresh counter and the weights after a few
updates of ``N`` accumulated micro-batches equal one batch ``N`` times
larger: on TensorFlow (Keras's ``gradient_accumulation_steps``), under
``MirroredStrategy`` on two logical CPU devices
(``nnkit.distribute.accumulate_gradients``) and on JAX (a subprocess). The
first update's factors are checked against their closed forms over the
whole batch. The adaptive step and the sampled Fisher are refused.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.distribute import accumulate_gradients
from nnkit.optimizers import KFAC
from tests.distribute._mirrored import mirrored_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N, MICRO, UPDATES = 4, 8, 5


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N * MICRO * UPDATES, 3)).astype("float32")
    return x, np.sin(x.sum(axis=1, keepdims=True)).astype("float32")


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(6, "tanh"), keras.layers.Dense(1)]
    )


def _kfac(model, **kwargs):
    return KFAC(0.05, model=model, damping=1e-2, refresh_every=2, statistics_decay=0.5,
                momentum=0.9, **kwargs)  # fmt: skip


def _train(*, steps, strategy=None, epochs=1, **kwargs):
    x, y = _data()
    scope = strategy.scope() if strategy is not None else tf.distribute.get_strategy().scope()
    with scope:
        model = _model()
        if steps and strategy is not None:
            optimizer = accumulate_gradients(_kfac(model), steps)
        else:
            optimizer = _kfac(model, gradient_accumulation_steps=steps, **kwargs)
        model.compile(optimizer, loss="mse")
    batch = MICRO if steps else N * MICRO
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    return model, optimizer


def _factors(optimizer):
    """The factor, curvature and counter variables in order (the accumulation's sums left out),
    keyed by their name without the layer path (which differs between models)."""
    kept = [
        v
        for v in optimizer.variables
        if v.name.endswith("_factor") or "factor_updates" in v.name or "curvature" in v.name
    ]
    return {f"{i}:{v.name.rsplit('_', 2)[-2:]}": np.asarray(v) for i, v in enumerate(kept)}


def _counter(optimizer):
    (value,) = [v for v in optimizer.variables if v.name.endswith("kfac_factor_updates")]
    return int(np.asarray(value))


def _max_difference(a, b):
    return max(
        float(np.abs(np.asarray(p) - np.asarray(q)).max()) for p, q in zip(a, b, strict=True)
    )


def test_micro_batches_equal_one_larger_batch():
    big_model, big = _train(steps=None)
    model, optimizer = _train(steps=N)
    assert int(optimizer.iterations) == int(big.iterations) == UPDATES
    # The refresh cadence and the bias correction count updates, not micro-batches.
    assert _counter(optimizer) == UPDATES
    want = _factors(big)
    got = _factors(optimizer)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert _max_difference(model.get_weights(), big_model.get_weights()) < 1e-5


def test_first_update_factors_are_the_whole_batch_statistics():
    """One update, β = 0 (no moving average): ``A`` and ``G`` in closed form over all N·b rows."""
    x, y = _data()
    rows = N * MICRO
    model = _model()
    w1, b1, w2, b2 = (np.asarray(w, dtype=np.float64) for w in model.get_weights())
    optimizer = KFAC(0.05, model=model, damping=1e-2, statistics_decay=0.0,
                     gradient_accumulation_steps=N)  # fmt: skip
    model.compile(optimizer, loss="mse")
    model.fit(x[:rows], y[:rows], batch_size=MICRO, epochs=1, shuffle=False, verbose=0)
    xs, ys = x[:rows].astype(np.float64), y[:rows].astype(np.float64)
    hidden = np.tanh(xs @ w1 + b1)
    out = hidden @ w2 + b2
    # Per-example gradients of the per-example loss (s − y)² with respect to the pre-activations.
    g_out = 2.0 * (out - ys)
    g_hidden = (g_out @ w2.T) * (1.0 - hidden**2)
    a1 = np.concatenate([xs, np.ones((rows, 1))], axis=1)
    a2 = np.concatenate([hidden, np.ones((rows, 1))], axis=1)
    want = [a1.T @ a1, g_hidden.T @ g_hidden, a2.T @ a2, g_out.T @ g_out]
    got = [np.asarray(v) for v in optimizer.variables if v.name.endswith("_factor")]
    assert len(got) == 4
    for i, (value, expected) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(value, expected / rows, rtol=1e-4, atol=1e-6, err_msg=str(i))
    assert int(optimizer.iterations) == 1


def test_under_mirrored_strategy_equal_one_device_larger_batch():
    big_model, big = _train(steps=None)
    model, optimizer = _train(steps=N, strategy=mirrored_strategy())
    assert int(optimizer.iterations) == UPDATES
    want, got = _factors(big), _factors(optimizer)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert _max_difference(model.get_weights(), big_model.get_weights()) < 2e-5


def test_a_resume_between_micro_batches_keeps_the_cycle(tmp_path):
    """The sums are optimizer variables: saved and loaded mid-cycle, the run goes on the same."""
    x, y = _data()
    _, reference = _train(steps=N, epochs=1)
    model = _model()
    optimizer = _kfac(model, gradient_accumulation_steps=N)
    model.compile(optimizer, loss="mse")
    # 6 micro-batches: one update and half a cycle.
    model.fit(x[: 6 * MICRO], y[: 6 * MICRO], batch_size=MICRO, shuffle=False, verbose=0)
    path = str(tmp_path / "mid.weights.h5")
    model.save_weights(path)
    resumed = _model()
    resumed_optimizer = _kfac(resumed, gradient_accumulation_steps=N)
    resumed.compile(resumed_optimizer, loss="mse")
    resumed.build((None, 3))
    resumed_optimizer.build(resumed.trainable_variables)
    resumed.load_weights(path)
    resumed.fit(x[6 * MICRO :], y[6 * MICRO :], batch_size=MICRO, shuffle=False, verbose=0)
    want, got = _factors(reference), _factors(resumed_optimizer)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize(
    "kwargs",
    [{"learning_rate": "adaptive"}, {"learning_rate": 0.1, "fisher": "sampled"}],
    ids=["adaptive", "sampled"],
)
def test_adaptive_step_and_sampled_fisher_are_refused(kwargs):
    model = _model()
    with pytest.raises(ValueError, match="only with a fixed learning rate and the empirical"):
        KFAC(model=model, gradient_accumulation_steps=2, **kwargs)
    optimizer = KFAC(model=model, **kwargs)
    with pytest.raises(ValueError, match="Received: .*gradient_accumulation_steps=2"):
        accumulate_gradients(optimizer, 2)
    assert not optimizer.gradient_accumulation_steps


def test_config_keeps_the_accumulation():
    optimizer = KFAC(0.1, gradient_accumulation_steps=3)
    config = optimizer.get_config()
    assert config["gradient_accumulation_steps"] == 3
    assert KFAC.from_config(config).gradient_accumulation_steps == 3


JAX_SCRIPT = textwrap.dedent(
    """
    import keras, numpy as np
    from nnkit.optimizers import KFAC

    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 3)).astype("float32")
    y = np.sin(x.sum(axis=1, keepdims=True)).astype("float32")

    def run(steps):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(6, "tanh"), keras.layers.Dense(1)]
        )
        optimizer = KFAC(0.05, model=model, damping=1e-2, refresh_every=2,
                         statistics_decay=0.5, momentum=0.9,
                         gradient_accumulation_steps=steps)
        model.compile(optimizer, loss="mse")
        model.fit(x, y, batch_size=8 if steps else 32, shuffle=False, verbose=0)
        factors = {str(i): np.asarray(v) for i, v in enumerate(
            [v for v in optimizer.variables
             if v.name.endswith("_factor") or "factor_updates" in v.name])}
        return model.get_weights(), factors, int(optimizer.iterations)

    big_w, big_f, big_i = run(None)
    w, f, i = run(4)
    assert i == big_i == 5, (i, big_i)
    assert int(f["0"]) == 5
    for name in big_f:
        np.testing.assert_allclose(f[name], big_f[name], rtol=1e-4, atol=1e-6, err_msg=name)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(w, big_w))
    assert diff < 1e-5, diff
    print("ok")
    """
)


@pytest.mark.slow
def test_jax_micro_batches_equal_one_larger_batch():
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"
