"""recipes/distributed_digits.py: a short mirrored run on two logical CPU devices.

The recipe splits the CPU before TensorFlow starts (``--devices``), so it
runs in a fresh process; its argument checks run in this one.
"""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

RECIPE = pathlib.Path(__file__).resolve().parents[2] / "recipes" / "distributed_digits.py"
DIGITS, TEST_FRACTION = 1797, 0.25


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("distributed_digits", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_mirrored_on_two_logical_devices(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "TPU_NAME")}
    result = subprocess.run(
        [
            sys.executable, str(RECIPE), "--strategy", "mirrored", "--devices", "2",
            "--epochs", "2", "--per-replica-batch-size", "16", "--base-batch-size", "16",
            "--learning-rate", "0.05", "--out", str(out), "--verbose", "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"},
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert "MirroredStrategy with 2 replica(s): requested (kind='mirrored')" in result.stdout
    assert "distribution readiness under MirroredStrategy (2 replicas): no findings" in (
        result.stdout
    )
    assert (summary["strategy"], summary["replicas"], summary["chief"]) == (
        "MirroredStrategy",
        2,
        True,
    )
    assert summary["global_batch_size"] == 32  # 16 per replica
    train_examples = DIGITS - math.ceil(TEST_FRACTION * DIGITS)
    assert summary["steps_per_epoch"] == train_examples // 32  # the partial batch is dropped
    assert summary["warmup_steps"] == summary["steps_per_epoch"]
    assert summary["learning_rate"] == pytest.approx(0.05 * 32 / 16, rel=1e-6)  # linear rule
    assert summary["readiness"] == {
        "strategy": "MirroredStrategy",
        "num_replicas": 2,
        "ok": True,
        "findings": [],
    }
    assert summary["epochs_run"] == len(summary["loss"]) == 2
    assert summary["loss"][1] < summary["loss"][0]
    assert summary["test_accuracy"] > 0.8
    assert json.loads((out / "metrics.json").read_text()) == summary


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--devices", "0"], "--devices must be >= 1, got 0"),
        (["--devices", "2", "--strategy", "multiworker"], "--devices applies to"),
        (["--epochs", "2", "--warmup-epochs", "2"], "--warmup-epochs must be in"),
        (["--per-replica-batch-size", "0"], "--per-replica-batch-size must be >= 1"),
        (["--learning-rate", "0"], "--learning-rate must be > 0"),
        (["--strategy", "parameter_server"], "invalid choice"),
    ],
)
def test_argument_errors(recipe, capsys, argv, message):
    with pytest.raises(SystemExit):
        recipe.parse_args(argv)
    assert message in capsys.readouterr().err


def test_devices_need_a_fresh_process(recipe):
    import tensorflow as tf

    assert len(tf.config.list_logical_devices("CPU")) == 2  # initialized (conftest's split)
    with pytest.raises(SystemExit, match="run the recipe as a fresh process"):
        recipe.split_cpu(3)
    assert len(tf.config.list_logical_devices("CPU")) == 2
