"""One sharded model trained by two JAX processes (4 CPU devices each) equals one process of 8.

``keras.distribution.initialize`` starts JAX's distributed runtime (the
coordinator on 127.0.0.1, the CPU collectives over gloo); both processes
build the same FSDP x TP plan over the job's 8 devices, each feeds its half
of every global batch, and the losses of 4 SGD steps must equal those of a
single process with 8 devices fed the whole batch. Every subprocess is
bounded by a timeout.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
SCRIPT = pathlib.Path(__file__).with_name("_multi_process_script.py")
TIMEOUT = 300


def _env(devices):
    return {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(ROOT),
    }


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(process_id, processes, coordinator, devices):
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(process_id), str(processes), coordinator],
        cwd=ROOT, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _result(process):
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"a process ran past {TIMEOUT} s:\n{err[-4000:]}")
    assert process.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs():
    pytest.importorskip("jax")
    coordinator = f"127.0.0.1:{_free_port()}"
    workers = [_start(i, 2, coordinator, 4) for i in range(2)]
    try:
        single = _result(_start(0, 1, "", 8))
        return single, [_result(worker) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()


@pytest.mark.slow
def test_two_processes_train_one_sharded_model_to_the_single_process_loss(runs):
    single, workers = runs
    assert (single["processes"], single["devices"], single["local_devices"]) == (1, 8, 8)
    for rank, worker in enumerate(workers):
        assert worker["process"] == rank
        assert (worker["processes"], worker["devices"], worker["local_devices"]) == (2, 8, 4)
        assert worker["sharded"] == single["sharded"] > 0  # the same plan, placed
        np.testing.assert_allclose(worker["losses"], single["losses"], rtol=1e-5)
    assert workers[0]["mesh"] == workers[1]["mesh"]  # one global mesh of both processes' devices
    assert single["losses"][-1] < single["losses"][0]  # it trained


CONFIGURATION_ERRORS = """
import json, keras
errors = []
for kw in [
    dict(job_addresses="127.0.0.1:1234,127.0.0.1:1235", num_processes=3, process_id=0),
    dict(job_addresses="127.0.0.1:1234", num_processes=2, process_id=2),
]:
    try:
        keras.distribution.initialize(**kw)
        errors.append(None)
    except ValueError as error:
        errors.append(str(error))
print(json.dumps(errors))
"""


@pytest.mark.slow
def test_a_wrong_process_count_or_id_fails_at_once_with_a_clear_message():
    pytest.importorskip("jax")
    completed = subprocess.run(
        [sys.executable, "-c", CONFIGURATION_ERRORS], cwd=ROOT, env=_env(4),
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    addresses, process_id = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "has 2 jobs, but num_processes is 3" in addresses
    assert "process_id < num_processes. Got process_id=2, num_processes=2" in process_id
