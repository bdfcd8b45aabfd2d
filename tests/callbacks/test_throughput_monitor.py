"""nnkit.callbacks.ThroughputMonitor: figures against closed forms with a scripted clock."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from nnkit.callbacks import ThroughputMonitor, _device_facts
from nnkit.callbacks.throughput_monitor import sequence_length, throughput_figures

SAMPLES, BATCH = 32, 8
STEPS = SAMPLES // BATCH  # 4 steps per epoch


class Clock:
    """Returns the scripted times in order, one per read."""

    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def _model(inputs=4, outputs=2):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(outputs)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    return model


def _fit(monitor, epochs=3, model=None, **kwargs):
    model = model or _model()
    x, y = np.ones((SAMPLES, 4), "float32"), np.zeros((SAMPLES, 2), "float32")
    return model.fit(
        x, y, batch_size=BATCH, epochs=epochs, callbacks=[monitor], verbose=0, **kwargs
    )


def test_figures_closed_forms():
    out = throughput_figures(2.0, 10, 16, 128, 1e9, 4e10)
    assert out["samples_per_second"] == pytest.approx(10 * 16 / 2.0)
    assert out["tokens_per_second"] == pytest.approx(10 * 16 * 128 / 2.0)
    assert out["flops_per_second"] == pytest.approx(10 * 1e9 / 2.0)
    assert out["mfu"] == pytest.approx((10 * 1e9 / 2.0) / 4e10)  # 0.125
    bare = throughput_figures(2.0, 10, 16, None, None, 4e10)
    assert bare["tokens_per_second"] is None and bare["flops_per_second"] is None
    assert bare["mfu"] is None


def test_epoch_and_window_figures_with_a_scripted_clock(monkeypatch):
    # Two reads per epoch (begin, end): epochs of 2, 4 and 1 seconds.
    monkeypatch.setattr(ThroughputMonitor, "_clock", Clock([0.0, 2.0, 10.0, 14.0, 20.0, 21.0]))
    monitor = ThroughputMonitor(BATCH, window=2, flops_per_step=1000, peak_flops=1e5)
    history = _fit(monitor).history
    seconds = [2.0, 4.0, 1.0]
    assert history["samples_per_second"] == pytest.approx([SAMPLES / t for t in seconds])
    window = [SAMPLES / 2.0, 2 * SAMPLES / 6.0, 2 * SAMPLES / 5.0]
    assert history["samples_per_second_window"] == pytest.approx(window)
    assert history["flops_per_second"] == pytest.approx([STEPS * 1000 / t for t in seconds])
    assert history["mfu"] == pytest.approx([STEPS * 1000 / t / 1e5 for t in seconds])
    assert "tokens_per_second" not in history  # a (batch, features) input: no sequence axis
    assert "peak_memory_bytes" not in history  # CPU reports no memory statistics
    assert monitor.figures["peak_memory_bytes"] is None
    assert monitor.get_state() == {"epochs": [[4.0, STEPS], [1.0, STEPS]]}
    assert monitor.flops_source == "given" and monitor.peak_source == "given"


def test_validation_time_is_not_counted(monkeypatch):
    # Reads: epoch begin, validation begin (the train part's end); the epoch end reads none.
    monkeypatch.setattr(ThroughputMonitor, "_clock", Clock([0.0, 2.0, 5.0, 9.0]))
    monitor = ThroughputMonitor(BATCH)
    model = _model()
    x, y = np.ones((40, 4), "float32"), np.zeros((40, 2), "float32")
    history = model.fit(
        x, y, batch_size=BATCH, epochs=2, validation_split=0.2, callbacks=[monitor], verbose=0
    ).history
    assert history["samples_per_second"] == pytest.approx([SAMPLES / 2.0, SAMPLES / 4.0])


def test_tokens_given_and_inferred(monkeypatch):
    monkeypatch.setattr(ThroughputMonitor, "_clock", Clock([0.0, 2.0]))
    monitor = ThroughputMonitor(BATCH, tokens_per_sample=64)
    history = _fit(monitor, epochs=1).history
    assert history["tokens_per_second"] == pytest.approx([SAMPLES * 64 / 2.0])
    ids = keras.Sequential([keras.Input((12,), dtype="int32"), keras.layers.Embedding(10, 3)])
    assert sequence_length(ids) == 12
    seq = keras.Sequential([keras.Input((7, 5)), keras.layers.Dense(2)])
    assert sequence_length(seq) == 7
    assert sequence_length(_model()) is None


def test_analytic_flops_of_a_dense_model_on_tensorflow():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the analytic count is the TensorFlow path; JAX's compiled count is below")
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, "relu"), keras.layers.Dense(4)]
    )
    model.compile("sgd", loss="mse")
    monitor = ThroughputMonitor(BATCH)
    x, y = np.ones((SAMPLES, 16), "float32"), np.zeros((SAMPLES, 4), "float32")
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[monitor], verbose=0)
    assert monitor.flops_source == "analytic"
    assert monitor.flops_per_step == 3 * 2 * (16 * 32 + 32 * 4) * BATCH


def test_peak_table():
    h100 = _device_facts.peak_flops_per_device("NVIDIA H100 80GB HBM3", "bfloat16")
    assert h100 == 989.4e12
    assert _device_facts.peak_flops_per_device("NVIDIA H100 PCIe", "float32") == 378e12
    assert _device_facts.peak_flops_per_device("NVIDIA H200", "float16") == 989.4e12
    assert _device_facts.peak_flops_per_device("NVIDIA A100-SXM4-80GB", "float32") == 156e12
    assert _device_facts.peak_flops_per_device("TPU v5 lite", "bfloat16") == 197e12
    assert _device_facts.peak_flops_per_device("TPU v4", "bfloat16") == 275e12
    assert _device_facts.peak_flops_per_device("cpu", "float32") is None
    assert _device_facts.peak_flops_per_device(None, "float32") is None


def test_no_peak_on_cpu_logs_no_mfu():
    monitor = ThroughputMonitor(BATCH)
    history = _fit(monitor, epochs=1).history
    assert "mfu" not in history and monitor.peak_source is None
    assert history["samples_per_second"][0] > 0


def test_state_resumes_the_window(monkeypatch):
    monkeypatch.setattr(ThroughputMonitor, "_clock", Clock([0.0, 4.0]))
    monitor = ThroughputMonitor(BATCH, window=3)
    monitor.set_state({"epochs": [[1.0, 4], [3.0, 4], [2.0, 4], [9.0, 4]]})
    assert monitor.epochs == [(3.0, 4), (2.0, 4), (9.0, 4)]  # the last `window`
    monitor.on_train_begin = lambda logs=None: None  # keep the restored state (as a backup does)
    monitor.set_model(_model())
    monitor.set_params({"epochs": 1, "steps": STEPS})
    monitor._steps_before = None
    monitor.on_epoch_begin(0)
    monitor.model.optimizer.iterations.assign(STEPS)
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert logs["samples_per_second_window"] == pytest.approx(3 * SAMPLES / (2.0 + 9.0 + 4.0))
    with pytest.raises(ValueError, match="lacks 'epochs'"):
        monitor.set_state({})


def test_it_changes_nothing():
    keras.utils.set_random_seed(0)
    plain = _model()
    _fit(keras.callbacks.Callback(), model=plain)
    watched = _model()
    _fit(ThroughputMonitor(BATCH), model=watched)
    for a, b in zip(plain.get_weights(), watched.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 1.5}, ValueError, "batch_size"),
        ({"batch_size": True}, TypeError, "batch_size"),
        ({"batch_size": 8, "window": 0}, ValueError, "window"),
        ({"batch_size": 8, "tokens_per_sample": 0}, ValueError, "tokens_per_sample"),
        ({"batch_size": 8, "peak_flops": -1.0}, ValueError, "peak_flops"),
        ({"batch_size": 8, "flops_per_step": float("nan")}, ValueError, "flops_per_step"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ThroughputMonitor(**kwargs)


JAX_SCRIPT = textwrap.dedent(
    """
    import json, keras, numpy as np
    from nnkit.callbacks import ThroughputMonitor
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, use_bias=False),
                              keras.layers.Dense(32, use_bias=False)])
    model.compile("sgd", loss="mse")
    monitor = ThroughputMonitor(16, peak_flops=1e12)
    x, y = np.ones((64, 64), "float32"), np.zeros((64, 32), "float32")
    history = model.fit(x, y, batch_size=16, epochs=2, callbacks=[monitor], verbose=0)
    out = {"flops": monitor.flops_per_step, "source": monitor.flops_source,
           "mfu": history.history["mfu"], "fps": history.history["flops_per_second"],
           "peak": monitor.figures["peak_memory_bytes"]}
    keras.distribution.set_distribution(keras.distribution.DataParallel())  # 8 devices
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, use_bias=False),
                              keras.layers.Dense(32, use_bias=False)])
    model.compile("sgd", loss="mse")
    monitor = ThroughputMonitor(16, peak_flops=1e12)
    history = model.fit(x, y, batch_size=16, epochs=1, callbacks=[monitor], verbose=0)
    out["parallel"] = {"flops": monitor.flops_per_step, "mfu": history.history["mfu"],
                       "fps": history.history["flops_per_second"]}
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_compiled_flops_on_jax():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["source"] == "compiled"
    closed = 2 * (64 * 128 + 128 * 32) * 16 * 3  # forward, input and weight gradients
    # XLA also counts the squared outputs of its stand-in loss (16·32 elementwise products).
    assert abs(out["flops"] - closed) <= 2 * 16 * 32
    assert out["mfu"] == pytest.approx([f / 1e12 for f in out["fps"]])
    assert out["peak"] is None  # CPU
    # Under data parallelism over 8 devices: the whole step's count, against 8 devices' peak.
    parallel = out["parallel"]
    assert parallel["flops"] == out["flops"]
    assert parallel["mfu"] == pytest.approx([f / (8 * 1e12) for f in parallel["fps"]])
