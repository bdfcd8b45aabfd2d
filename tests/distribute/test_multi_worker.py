"""nnkit.distribute.multi_worker: ``fit`` under MultiWorkerMirroredStrategy (keras-team/keras#20585).

The fast tests probe and patch Keras in this process. The slow ones run two
real worker processes on 127.0.0.1 (plain subprocesses with ``TF_CONFIG``;
TensorFlow's multi_process_runner does not work under pytest) and compare
them with a single-process run on the same global batches.
"""

import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.tensorflow import trainer

from nnkit._keras import multi_worker as keras_multi_worker
from nnkit.callbacks import _backup_files as files
from nnkit.distribute import (
    fix_multi_worker_fit,
    multi_worker_fit_is_broken,
    remove_multi_worker_fit_fix,
)
from tests.distribute import _multi_worker_script as script
from tests.distribute._mirrored import mirrored_strategy

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = pathlib.Path(script.__file__).resolve()
TIMEOUT = 150  # seconds for one two-worker run (TensorFlow start-up included)
# Two workers sum two half-batch gradients where one process averages the whole batch.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture
def unpatched():
    """Keras's own functions during the test, and again after it."""
    remove_multi_worker_fit_fix()
    yield
    remove_multi_worker_fit_fix()


def _keras_functions():
    cls = keras_multi_worker.trainer_class(trainer)
    return vars(cls)["_maybe_symbolic_build"], trainer.reduce_per_replica


def test_probe_finds_both_failures_in_this_keras(unpatched):
    assert multi_worker_fit_is_broken()
    names = [name for _, name, _ in keras_multi_worker.broken_parts()]
    assert names == ["_maybe_symbolic_build", "reduce_per_replica"]


def test_fix_is_idempotent_and_removable(unpatched, caplog):
    originals = _keras_functions()
    with caplog.at_level(logging.INFO, logger="nnkit.distribute"):
        assert fix_multi_worker_fit() is True
    assert "keras-team/keras#20585" in caplog.text
    patched = _keras_functions()
    assert [f.__wrapped__ for f in patched] == list(originals)
    assert not multi_worker_fit_is_broken()  # the probe passes on the patched functions
    assert fix_multi_worker_fit() is False  # nothing left to patch
    assert _keras_functions() == patched  # not wrapped twice
    assert remove_multi_worker_fit_fix() is True
    assert _keras_functions() == originals
    assert remove_multi_worker_fit_fix() is False
    assert multi_worker_fit_is_broken()


def _mirrored_fit():
    strategy = mirrored_strategy()
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.1), loss="mse", metrics=["mae"])
    x = np.arange(24, dtype="float32").reshape(8, 3) / 24
    history = model.fit(x, x.sum(axis=1), batch_size=4, epochs=2, shuffle=False, verbose=0)
    return model.get_weights(), history.history


def test_keras_is_unchanged_outside_multi_worker_mode(unpatched):
    strategy = mirrored_strategy()

    def replica_number():
        context = tf.distribute.get_replica_context()
        return tf.cast(context.replica_id_in_sync_group, "float32") + 1.0

    def reduced(reduce):
        values = {"loss": strategy.run(replica_number)}  # 1.0 and 2.0
        return {r: float(reduce(values, strategy, r)["loss"]) for r in ("auto", "sum", "first")}

    keras_own, (weights, history) = reduced(trainer.reduce_per_replica), _mirrored_fit()
    fix_multi_worker_fit()
    expected = {"auto": 1.5, "sum": 3.0, "first": 1.0}
    assert reduced(trainer.reduce_per_replica) == keras_own == expected
    # A mirrored fit through the patched functions: the same, to the bit.
    patched_weights, patched_history = _mirrored_fit()
    for got, want in zip(patched_weights, weights, strict=True):
        np.testing.assert_array_equal(got, want)
    assert patched_history == history


def test_a_keras_the_probe_does_not_fit_is_left_alone(unpatched, monkeypatch, caplog):
    def changed(values, strategy, reduction):
        raise RuntimeError("a future Keras")

    monkeypatch.setattr(trainer, "reduce_per_replica", changed)
    with caplog.at_level(logging.WARNING, logger="nnkit.distribute"):
        names = [name for _, name, _ in keras_multi_worker.broken_parts()]
    assert names == ["_maybe_symbolic_build"]
    assert (
        "could not probe Keras's reduce_per_replica (RuntimeError: a future Keras)" in caplog.text
    )


# -- two worker processes -----------------------------------------------------


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_pair(workdir, tag, *args, expect=0):
    """Run two workers with ``args``; kill both when one fails or time runs out.

    Returns each worker's JSON summary (``None`` for a worker that exited
    with ``expect`` but printed none).
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "TMPDIR": str(workdir / "tmp"),  # where the non-chief worker writes its saves
    }
    (workdir / "tmp").mkdir(exist_ok=True)
    (workdir / "out").mkdir(exist_ok=True)
    procs, files = [], []
    try:
        for index in range(2):
            config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            out = open(workdir / f"{tag}-{index}.out", "w")  # noqa: SIM115 - closed below
            err = open(workdir / f"{tag}-{index}.err", "w")  # noqa: SIM115
            files += [out, err]
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(SCRIPT), str(workdir / "out"), *args],
                    env={**env, "TF_CONFIG": json.dumps(config)},
                    cwd=ROOT,
                    stdout=out,
                    stderr=err,
                )
            )
        deadline = time.monotonic() + TIMEOUT
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.returncode not in (None, expect) for p in procs):
                break  # one failed: the other would wait for it in a collective
            running = next(p for p in procs if p.poll() is None)
            try:
                running.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.close()
    codes = [p.returncode for p in procs]
    if codes != [expect, expect]:
        logs = "\n".join(
            f"--- worker {i} (exit {code}):\n" + (workdir / f"{tag}-{i}.err").read_text()[-3000:]
            for i, code in enumerate(codes)
        )
        pytest.fail(f"workers exited with {codes}, expected {expect}:\n{logs}")
    summaries = []
    for index in range(2):
        lines = (workdir / f"{tag}-{index}.out").read_text().splitlines()
        summaries.append(json.loads(lines[-1]) if lines else None)
    return summaries


def _weights(workdir, index):
    with np.load(workdir / "out" / f"worker-{index}.npz") as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


@pytest.fixture(scope="module")
def reference():
    """The single-process run on the same global batches: (weights, losses)."""
    model, history = script.train(tf.distribute.get_strategy())
    return model.get_weights(), history.history["loss"]


def _assert_equal_to_reference(workdir, reference):
    first, second = _weights(workdir, 0), _weights(workdir, 1)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)  # the workers hold the same weights
    for got, expected in zip(first, reference[0], strict=True):
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.slow
def test_two_workers_train_like_one_process(tmp_path, reference):
    summaries = _run_pair(tmp_path, "fit")
    assert [s["task"] for s in summaries] == ["worker-0", "worker-1"]
    assert [s["chief"] for s in summaries] == [True, False]
    assert {s["replicas"] for s in summaries} == {2}
    for summary in summaries:
        assert summary["epochs"] == list(range(script.EPOCHS))
        np.testing.assert_allclose(summary["loss"], reference[1], rtol=RTOL)
    _assert_equal_to_reference(tmp_path, reference)


@pytest.mark.slow
def test_two_workers_interrupted_and_resumed_continue_correctly(tmp_path, reference):
    shared = tmp_path / "shared"
    _run_pair(
        tmp_path, "interrupted", "--backup", str(shared), "--interrupt-after", "1",
        expect=script.INTERRUPTED,
    )  # fmt: skip
    # The chief wrote the backup of epoch 1 to the shared directory, and nothing else did.
    names = sorted(os.listdir(shared))
    assert files.MANIFEST in names and not any(n.startswith(".nnkit-tmp") for n in names)
    manifest = json.loads((shared / files.MANIFEST).read_text())
    assert (manifest["epoch"], manifest["batch"]) == (2, 0)
    # Worker 1 made the same save into its own temporary directory (left by the crash).
    (own,) = [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("nnkit-worker-")]
    assert own.name.startswith("nnkit-worker-1-")
    assert sorted(os.listdir(own)) == sorted(os.listdir(shared))

    summaries = _run_pair(tmp_path, "resumed", "--backup", str(shared))
    for summary in summaries:
        assert summary["epochs"] == list(range(2, script.EPOCHS))  # resumed after epoch 1
        np.testing.assert_allclose(summary["loss"], reference[1][2:], rtol=RTOL)
    _assert_equal_to_reference(tmp_path, reference)
    assert not shared.exists()  # the chief deleted it (delete_checkpoint)
    assert not own.exists()  # worker 1 deleted its own
