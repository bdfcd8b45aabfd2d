"""Which worker writes checkpoints, and where the others write.

Under ``MultiWorkerMirroredStrategy`` every worker runs the same script, so a
callback that saves to a shared directory would have every worker write the
same files at once. The Keras 2 design, kept here: the **chief** (the
``chief`` task, else worker 0) writes to the shared location; every other
worker runs the same save into a temporary directory of its own, which is
deleted afterwards, so all workers execute the same code and none of them
races the chief. All workers read (restore) from the shared location.

TensorFlow is imported only inside the functions that need it. On the JAX
backend (no ``tf.distribute`` strategy), the chief is process 0
(``jax.process_index()``); on any other backend every process is a chief.
"""

import hashlib
import os
import shutil
import tempfile

import keras

from nnkit import _validation as v


def _tf_strategy(strategy):
    """``strategy`` checked, or the current ``tf.distribute`` strategy; ``None`` off TensorFlow."""
    if strategy is None:
        if keras.backend.backend() != "tensorflow":
            return None
        import tensorflow as tf

        return tf.distribute.get_strategy()
    import tensorflow as tf

    return v.check_instance(
        "strategy", strategy, tf.distribute.Strategy, "a tf.distribute.Strategy"
    )


def _task(strategy):
    """``(is chief, task type, task index)`` of this process."""
    strategy = _tf_strategy(strategy)
    if strategy is None:
        if keras.backend.backend() == "jax":
            import jax

            index = jax.process_index()
            return index == 0, "process", index
        return True, "process", 0
    chief = bool(strategy.extended.should_checkpoint)
    resolver = strategy.cluster_resolver
    if resolver is None or resolver.task_type is None:
        return chief, "worker", 0
    return chief, resolver.task_type, int(resolver.task_id or 0)


def _temporary_directory(directory, task_type, index):
    key = directory if "://" in directory else os.path.abspath(directory)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"nnkit-{task_type}-{index}-{digest}")


def _check_directory(directory):
    if isinstance(directory, os.PathLike):
        directory = os.fspath(directory)
    return v.check_str("directory", directory)


def is_chief(strategy=None):
    """Whether this process is the one that writes checkpoints (the chief).

    Under ``MultiWorkerMirroredStrategy`` the chief is the ``chief`` task of
    ``TF_CONFIG``, or worker 0 when there is none
    (``strategy.extended.should_checkpoint``). Under every other strategy,
    and with no strategy, the one process is the chief. On the JAX backend
    with ``strategy=None``, the chief is process 0.

    Args:
        strategy: A ``tf.distribute.Strategy``, or ``None`` for the current
            one (``tf.distribute.get_strategy()``; on the JAX backend the
            process index decides). Defaults to ``None``.

    Returns:
        True for the chief, False for every other worker.

    Raises:
        TypeError: If ``strategy`` is not a ``tf.distribute.Strategy`` or None.

    Example:
    >>> from nnkit.distribute import is_chief
    >>> is_chief()  # one process, no cluster
    True
    """
    return _task(strategy)[0]


def worker_directory(directory, strategy=None):
    """The directory this worker writes its checkpoints to: the shared one on the chief only.

    Use it for any callback that saves during ``fit`` under
    ``MultiWorkerMirroredStrategy``, e.g. ``keras.callbacks.ModelCheckpoint``
    (``nnkit.callbacks.BackupAndRestore`` does it itself). On the chief (and
    whenever there is one worker) it returns ``directory``. On every other
    worker it returns a temporary directory of its own on local disk,
    ``<tempdir>/nnkit-<task type>-<task index>-<hash of directory>``, and
    creates it: the worker runs the same save there, so that every worker
    executes the same code, but nothing reads it. Its name is fixed, so a
    restarted worker writes to the same place; delete it with
    ``remove_worker_directory`` when training ends.

    Args:
        directory: The shared directory the chief writes to and every worker
            reads from (``str`` or path-like). Required.
        strategy: As for ``is_chief``. Defaults to ``None``.

    Returns:
        The directory to write to, a ``str``.

    Raises:
        TypeError: If ``directory`` is not a string or path-like, or
            ``strategy`` not a strategy.
        ValueError: If ``directory`` is empty.

    Example:
    >>> from nnkit.distribute import worker_directory
    >>> worker_directory("/shared/run1")  # the chief writes to the shared directory
    '/shared/run1'
    """
    directory = _check_directory(directory)
    chief, task_type, index = _task(strategy)
    if chief:
        return directory
    path = _temporary_directory(directory, task_type, index)
    os.makedirs(path, exist_ok=True)
    return path


def remove_worker_directory(directory, strategy=None):
    """Delete this worker's temporary directory for ``directory``; nothing on the chief.

    The counterpart of ``worker_directory``, for after ``fit``: it never
    deletes ``directory`` itself (what the chief wrote there stays, to be
    deleted by whoever owns it).

    Args:
        directory: The shared directory given to ``worker_directory``.
            Required.
        strategy: As for ``is_chief``. Defaults to ``None``.

    Returns:
        True when a temporary directory was deleted.

    Raises:
        TypeError: If ``directory`` is not a string or path-like, or
            ``strategy`` not a strategy.
        ValueError: If ``directory`` is empty.

    Example:
    >>> from nnkit.distribute import remove_worker_directory
    >>> remove_worker_directory("/shared/run1")  # the chief has none
    False
    """
    directory = _check_directory(directory)
    chief, task_type, index = _task(strategy)
    path = _temporary_directory(directory, task_type, index)
    if chief or not os.path.isdir(path):
        return False
    shutil.rmtree(path)
    return True
