"""Run one of this folder's JAX scripts in a subprocess on 8 logical CPU devices.

The backend and the device count must be chosen before JAX starts, so each
test module's scripted run happens in a fresh interpreter; the script prints
its figures as one JSON object on its last line.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


def run_jax_script(name, *, timeout):
    """The JSON object the script ``name`` (in this folder) prints last; its stderr on failure."""
    pytest.importorskip("jax")
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(ROOT),
    }
    script = pathlib.Path(__file__).with_name(name)
    completed = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])
