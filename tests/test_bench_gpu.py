"""Smoke test of bench/gpu.py: ``--cpu-small`` runs on the JAX backend and ends with the JSON line."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


@pytest.mark.slow
def test_cpu_small_run_ends_with_one_json_object():
    pytest.importorskip("jax")
    root = BENCH.parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(root))
    done = subprocess.run(
        [sys.executable, str(BENCH), "--cpu-small"], env=env, capture_output=True, text=True,
        timeout=600, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["benchmark"] == "gpu"
    assert figures["device"].startswith("cpu")
    assert figures["errors"] == {}
    assert set(figures["configs"]) == {
        "bare", "stack", "monitor", "sam", "adam", "kfac", "shampoo", "soap"
    }  # fmt: skip
    assert set(figures["optimizer_ratio_vs_adam"]) == {"kfac", "shampoo", "soap"}
    for key in ("bare_steps_per_second", "stack_ratio", "monitor_ratio", "sam_ratio"):
        assert figures[key] > 0, key
    assert figures["settings"]["cpu_small"] is True
