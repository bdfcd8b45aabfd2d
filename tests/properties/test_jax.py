"""The backend-independent property tests again, on JAX, in a subprocess (``KERAS_BACKEND=jax``).

The backend is fixed when Keras is first imported, so a subset of the
properties (written with ``keras`` and numpy only) runs once more under
pytest in a fresh process with the same Hypothesis profile: SAM, whose short
batches crashed on JAX only, and the optimizers (Shampoo, SOAP, K-FAC) over
kernel shapes and block sizes (about 25 s on two cores in all).
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


@pytest.mark.slow
def test_properties_hold_on_jax():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    files = ["tests/properties/test_wrappers.py", "tests/properties/test_optimizers.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files,
         "-k", "sam_fits or shampoo_and_soap or kfac_fits"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1]
