"""nnkit.distribute.workers: the chief writes to the shared directory, the others to their own."""

import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import types

import pytest
import tensorflow as tf

from nnkit.distribute import is_chief, remove_worker_directory, worker_directory
from tests.distribute._mirrored import mirrored_strategy


class _Extended:
    def __init__(self, chief):
        self.should_checkpoint = chief


class _Worker(tf.distribute.MultiWorkerMirroredStrategy):
    """Task ``index`` of a two-worker cluster, as this process would see it (no cluster made)."""

    def __init__(self, index, task_type="worker", chief=None):
        self._extended = _Extended(index == 0 if chief is None else chief)
        self._resolver = types.SimpleNamespace(task_type=task_type, task_id=index)

    @property
    def cluster_resolver(self):
        return self._resolver


@pytest.fixture
def tmp_dir(monkeypatch, tmp_path):
    """``tempfile.gettempdir()`` points into ``tmp_path`` during the test."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def test_one_process_is_the_chief_and_writes_where_asked(tmp_dir, tmp_path):
    shared = str(tmp_path / "shared")
    for strategy in (None, tf.distribute.get_strategy(), mirrored_strategy()):
        assert is_chief(strategy) is True
        assert worker_directory(shared, strategy) == shared
        assert remove_worker_directory(shared, strategy) is False
    assert worker_directory(pathlib.Path(shared)) == shared  # path-like
    assert is_chief(_Worker(0)) and is_chief(_Worker(0, "chief"))
    assert not os.path.exists(shared) and not os.listdir(tmp_dir)  # nothing created


def test_other_workers_write_to_a_temporary_directory_of_their_own(tmp_dir, tmp_path):
    shared = tmp_path / "shared"
    worker = _Worker(1)
    assert is_chief(worker) is False
    own = worker_directory(str(shared), worker)
    assert os.path.dirname(own) == str(tmp_dir)
    assert os.path.basename(own).startswith("nnkit-worker-1-") and os.path.isdir(own)
    assert not shared.exists()
    # Fixed per shared directory and task: a restarted worker writes to the same place.
    assert worker_directory(shared, worker) == own
    assert worker_directory(str(tmp_path / "other"), worker) != own
    assert worker_directory(shared, _Worker(2)) != own
    assert worker_directory(shared, _Worker(1, "chief", chief=False)) != own
    pathlib.Path(own, "file").write_text("x")
    assert remove_worker_directory(shared, worker) is True
    assert not os.path.exists(own)
    assert remove_worker_directory(shared, worker) is False


@pytest.mark.parametrize(
    "call, error, received",
    [
        (lambda: is_chief("mirrored"), TypeError, "strategy='mirrored'"),
        (lambda: worker_directory(None), TypeError, "directory=None"),
        (lambda: worker_directory(""), ValueError, "directory=''"),
        (lambda: remove_worker_directory(3), TypeError, "directory=3"),
        (lambda: worker_directory("d", strategy=object()), TypeError, "strategy=<object"),
    ],
)
def test_validation(call, error, received):
    with pytest.raises(error, match=f"Received: {received}"):
        call()


def test_jax_backend_without_tensorflow(tmp_path):
    """On JAX the chief is process 0; the multi-worker fix has nothing to patch there."""
    pytest.importorskip("jax")
    code = """
        import sys, tempfile
        sys.modules["tensorflow"] = None  # as if TensorFlow were not installed
        import jax
        import nnkit.distribute as nd
        tempfile.tempdir = sys.argv[1]
        print(nd.is_chief(), nd.worker_directory("shared") == "shared")
        print(nd.multi_worker_fit_is_broken(), nd.fix_multi_worker_fit(),
              nd.remove_multi_worker_fit_fix())
        jax.process_index = lambda: 1  # process 1 of a multi-host run
        own = nd.worker_directory("shared")
        print(nd.is_chief(), own.startswith(tempfile.tempdir + "/nnkit-process-1-"))
        print(nd.remove_worker_directory("shared"))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:-1] == [
        "True True",
        "False False False",
        "False True",
        "True",
    ]
