"""Back up and restore a run: weights, epoch, and the state of nnkit's stateful callbacks."""

import contextlib
import hashlib
import io
import json
import os
import tempfile
import warnings

import keras
import numpy as np
from keras.src.utils import file_utils

from nnkit import _validation as v
from nnkit.callbacks._base import CallbackMixin
from nnkit.callbacks._stateful import session_for

STATE_FILE = "callback_state.json"
ARRAYS_FILE = "callback_state.npz"
# Keras's file names (keras.callbacks.BackupAndRestore).
WEIGHTS_FILE = "latest.weights.h5"
METADATA_FILE = "training_metadata.json"
FORMAT_VERSION = 1

# In the JSON, {"__ndarrays__": ["a0", "a1"]} stands for a list of arrays and
# {"__ndarray__": "a2"} for one array, stored under those names in the .npz.
_LIST_TAG = "__ndarrays__"
_ARRAY_TAG = "__ndarray__"


class _StateFileError(ValueError):
    """The callback-state files are missing, unreadable or do not match the weights."""


def _write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (temp file + ``os.replace``) on local disks."""
    if file_utils.is_remote_path(path):  # gfile: no atomic rename to rely on
        with file_utils.File(path, "wb") as f:
            f.write(data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_bytes(path):
    with file_utils.File(path, "rb") as f:
        return f.read()


def _copy(src, dst):
    if file_utils.is_remote_path(src) or file_utils.is_remote_path(dst):
        file_utils.copy(src, dst)
    else:
        _write_bytes(dst, _read_bytes(src))


def _file_paths(directory, suffix=""):
    """The attributes naming the backup files, for the files in ``directory`` (+ ``suffix``)."""
    weights = file_utils.join(directory, WEIGHTS_FILE) + suffix
    metadata = file_utils.join(directory, METADATA_FILE) + suffix
    return {
        "backup_dir": directory,
        "_weights_path": weights,
        "_prev_weights_path": f"{weights}.bkp",
        "_training_metadata_path": metadata,
        "_prev_training_metadata_path": f"{metadata}.bkp",
        "_state_path": file_utils.join(directory, STATE_FILE) + suffix,
        "_arrays_path": file_utils.join(directory, ARRAYS_FILE) + suffix,
    }


def _is_array_list(value):
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(a, np.ndarray) for a in value)
    )


def _encode(states):
    """Split ``{key: state}`` into a JSON-plain dict and ``{name: array}``."""
    arrays = {}
    plain = {}
    for key, state in states.items():
        v.check_instance(f"{key}.get_state()", state, dict, "a dict")
        entry = {}
        for field, value in state.items():
            if isinstance(value, np.ndarray):
                name = f"a{len(arrays)}"
                arrays[name] = value
                entry[field] = {_ARRAY_TAG: name}
            elif _is_array_list(value):
                names = []
                for array in value:
                    name = f"a{len(arrays)}"
                    arrays[name] = array
                    names.append(name)
                entry[field] = {_LIST_TAG: names}
            else:
                entry[field] = v.check_json_plain(f"{key}.get_state()[{field!r}]", value)
        plain[key] = entry
    return plain, arrays


def _decode(plain, arrays):
    states = {}
    for key, entry in plain.items():
        state = {}
        for field, value in entry.items():
            if isinstance(value, dict) and set(value) == {_LIST_TAG}:
                value = [arrays[name] for name in value[_LIST_TAG]]
            elif isinstance(value, dict) and set(value) == {_ARRAY_TAG}:
                value = arrays[value[_ARRAY_TAG]]
            state[field] = value
        states[key] = state
    return states


@keras.saving.register_keras_serializable(package="nnkit")
class BackupAndRestore(CallbackMixin, keras.callbacks.BackupAndRestore):
    """Back up weights, epoch and nnkit callback state; resume a run exactly where it stopped.

    Use it instead of ``keras.callbacks.BackupAndRestore`` (same arguments,
    same weight files) when the run also uses nnkit's stateful callbacks
    (``EarlyStopping``, ``ReduceLROnPlateau``, ...). Keras's version restores
    the weights and the epoch but no callback state, so after a resume
    ``EarlyStopping`` forgets its best value and restarts its patience
    (keras-team/keras#14862); with this one, an interrupted and resumed run
    makes the same decisions as one that was never interrupted, wherever the
    callback sits in the list.

    What it does: at each save (every epoch, or every ``save_freq`` batches)
    it writes the weights and ``{"epoch", "batch"}`` as Keras does, then the
    state of every stateful callback of the run (``get_state()``), tagged with
    the same ``epoch``/``batch``. A stateful callback placed after this one
    in the list changes its state after the save; it asks for a rewrite of the
    state file (``_write_callback_state``), accepted until this callback's
    next hook, so the file matches the weights beside it. (One gap is left:
    a crash between the save and such a later callback, inside the same
    hook, leaves that callback one epoch behind; listing this callback last
    closes it.) At
    ``on_train_begin`` it loads the weights and the epoch, reads the state file
    and hands each state to its callback (keyed ``ClassName:ordinal`` in list
    order, so use the same callback list when resuming).

    Files in ``backup_dir``: Keras's ``latest.weights.h5`` and
    ``training_metadata.json``; ``callback_state.json`` (format version,
    epoch, batch, SHA-256 of the array file, and each callback's state as
    JSON) and ``callback_state.npz`` (arrays, e.g. best weights, referenced
    from the JSON as ``{"__ndarrays__": ["a0", ...]}`` for a list of arrays
    or ``{"__ndarray__": "a2"}`` for one), each written
    atomically (temp file + ``os.replace``) on local disks. With
    ``double_checkpoint`` every file also has a ``.bkp`` copy of the previous
    save, and a missing, unreadable or mismatched state falls back to the
    whole previous save, as Keras does for unreadable weights. Restoring
    never writes to ``backup_dir``, not even then (the ``.bkp`` files are
    read where they are, and the next save keeps them as its ``.bkp``).

    Under several workers (``MultiWorkerMirroredStrategy``, the TensorFlow
    backend; on JAX, several processes), ``backup_dir`` must be a directory
    every worker can read, e.g. on a shared file system. Every worker
    restores from it; only the chief writes to it; every other worker runs
    the same saves into a temporary directory of its own
    (``nnkit.distribute.worker_directory``), deleted at the end of training,
    and never deletes ``backup_dir`` (the chief does, with
    ``delete_checkpoint``). As in Keras 2, all workers run the same code and
    none of them races the chief for the files.

    Args:
        backup_dir: Directory for the backup files (``str`` or path-like),
            used by this run only. Required.
        save_freq: ``"epoch"`` to save at every epoch end, or an int ``>= 1``
            to save every that many batches (Keras then restarts the
            interrupted epoch from the saved weights). Defaults to
            ``"epoch"``.
        double_checkpoint: Keep the previous save too (``.bkp`` files) and
            fall back to it when the latest one cannot be read. Defaults to
            ``False``.
        delete_checkpoint: Delete ``backup_dir`` when training ends normally.
            Defaults to ``True``.

    Raises:
        TypeError: If an argument has the wrong type (``save_freq=False`` is
            refused: Keras would then save after every batch), or at a save
            if a callback's ``get_state()`` holds values that are neither JSON
            types nor numpy arrays (e.g. ``np.float32``).
        ValueError: If ``backup_dir`` is empty or ``save_freq`` is neither
            ``"epoch"`` nor an int ``>= 1``; at ``on_train_begin`` if the
            callback-state file is missing, unreadable or does not match the
            weights and there is no usable ``.bkp`` save.

    Example:
    >>> import tempfile, keras, numpy as np
    >>> from nnkit.callbacks import BackupAndRestore, EarlyStopping
    >>> backup_dir = tempfile.mkdtemp()
    >>> class Interrupt(keras.callbacks.Callback):
    ...     def on_epoch_end(self, epoch, logs=None):
    ...         if epoch == 1:
    ...             raise RuntimeError("interrupted")
    >>> def run(*extra):
    ...     keras.utils.set_random_seed(0)
    ...     model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    ...     model.compile(keras.optimizers.SGD(0.1), loss="mse")
    ...     stop = EarlyStopping("loss", min_delta=1.0, patience=2)
    ...     callbacks = [BackupAndRestore(backup_dir), stop, *extra]
    ...     x, y = np.ones((8, 2)), np.zeros((8, 1))
    ...     history = model.fit(x, y, epochs=10, callbacks=callbacks, verbose=0)
    ...     return history.epoch, stop.stopped_epoch
    >>> try:
    ...     run(Interrupt())
    ... except RuntimeError:
    ...     pass
    >>> run()  # resumes at epoch 2 and still stops at epoch 2, not 4
    ([2], 2)

    References:
        Keras ``keras.callbacks.BackupAndRestore``; keras-team/keras#14862
        (callback state is not restored).
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        double_checkpoint=False,
        delete_checkpoint=True,
    ):
        if isinstance(backup_dir, os.PathLike):
            backup_dir = os.fspath(backup_dir)
        backup_dir = v.check_str("backup_dir", backup_dir)
        if save_freq != "epoch":
            if isinstance(save_freq, str):
                raise ValueError(
                    f"`save_freq` must be 'epoch' or an int >= 1. Received: save_freq={save_freq!r}"
                )
            save_freq = v.check_positive_int("save_freq", save_freq)
        double_checkpoint = v.check_bool("double_checkpoint", double_checkpoint)
        delete_checkpoint = v.check_bool("delete_checkpoint", delete_checkpoint)
        super().__init__(
            backup_dir,
            save_freq=save_freq,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )
        self._state_path = file_utils.join(backup_dir, STATE_FILE)
        self._arrays_path = file_utils.join(backup_dir, ARRAYS_FILE)
        # Batch-end hooks do nothing with epoch saves: safe to dispatch asynchronously.
        self.async_safe = save_freq == "epoch"
        self._reset_run()

    def _reset_run(self):
        self._before = frozenset()  # session keys of stateful callbacks listed before this one
        self._position = None  # (epoch, batch) of the last save in this run
        self._accepting = False  # whether state changes belong to the last save
        self._write_dir = self.backup_dir  # where this process saves (see _worker_directory)
        self._fell_back = False  # restored from the .bkp files; the latest ones are unreadable

    @contextlib.contextmanager
    def _files_in(self, directory, suffix=""):
        """Point ``backup_dir`` and the file paths at ``directory`` (and ``suffix``) for a while.

        Keras's methods read and write the files through these attributes.
        """
        paths = _file_paths(directory, suffix)
        saved = {name: getattr(self, name) for name in paths}
        for name, path in paths.items():
            setattr(self, name, path)
        try:
            yield
        finally:
            for name, path in saved.items():
                setattr(self, name, path)

    def _worker_directory(self):
        """``backup_dir`` on the chief; a temporary directory of its own on any other worker."""
        from nnkit.distribute import workers  # lazily: TensorFlow only on its backend

        strategy = getattr(self.model, "distribute_strategy", None)  # TensorFlow backend
        return workers.worker_directory(self.backup_dir, strategy)

    # -- hooks ------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._reset_run()
        session = session_for(self)
        if session is not None:
            self._before = frozenset(session.callbacks)
            session.backup = self
        states = self._load_all()  # every worker reads the shared directory
        self._write_dir = self._worker_directory()
        if states and session is not None:
            session.restore(states)

    def on_epoch_begin(self, epoch, logs=None):
        self._accepting = False
        self._warn_unclaimed_states()
        # Keras only sets this at epoch ends, so a batch save in the first epoch
        # of a resumed run would record epoch 0.
        self._current_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._accepting = False

    def on_train_batch_end(self, batch, logs=None):
        self._accepting = False
        super().on_train_batch_end(batch, logs)

    def on_test_begin(self, logs=None):
        self._accepting = False

    def on_epoch_end(self, epoch, logs=None):
        self._accepting = False
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        self._accepting = False
        session = session_for(self, create=False)
        if session is not None and session.backup is self:
            session.backup = None
        if self._write_dir == self.backup_dir:
            super().on_train_end(logs)  # deletes backup_dir with delete_checkpoint
        elif file_utils.exists(self._write_dir):
            file_utils.rmtree(self._write_dir)  # not the chief: backup_dir is the chief's

    def _warn_unclaimed_states(self):
        """Every callback has had its ``on_train_begin`` now: say which states found no owner."""
        session = session_for(self, create=False)
        if session is None or not session.restored:
            return
        keys = sorted(session.restored)
        session.restored.clear()
        warnings.warn(
            f"BackupAndRestore restored state for {keys} from {self.backup_dir!r}, but this "
            "run has no such callbacks (keys are ClassName:ordinal in list order), so that "
            "state is not used. Pass the same callbacks as the interrupted run to resume it.",
            stacklevel=2,
        )

    # -- saving -----------------------------------------------------------------

    def _save_model(self):
        with self._files_in(self._write_dir):
            if not file_utils.exists(self.backup_dir):
                file_utils.makedirs(self.backup_dir)
            # After a restore from the .bkp files the latest files are the unreadable
            # ones: keep the .bkp files (the save restored) instead of copying them over.
            copy_previous = self.double_checkpoint and not self._fell_back
            if copy_previous:
                for path in (self._state_path, self._arrays_path):
                    if file_utils.exists(path):
                        _copy(path, f"{path}.bkp")
            double_checkpoint, self.double_checkpoint = self.double_checkpoint, copy_previous
            try:
                super()._save_model()  # copies weights and metadata to .bkp when told
            finally:
                self.double_checkpoint = double_checkpoint
            self._fell_back = False
            self._position = (self._current_epoch, self._last_batch_seen)
            self._accepting = True
            self._write_state_files()

    def _write_callback_state(self, callback=None):
        """Rewrite the state file after ``callback`` changed its state.

        Accepted only from callbacks after this one in the list, between a save
        and this callback's next hook: a change made before the save is already
        in it, and a later one belongs to the next save.
        """
        if not self._accepting:
            return
        if callback is not None:
            session = session_for(self, create=False)
            if session is None or session.key_for(callback) in self._before:
                return
        with self._files_in(self._write_dir):
            self._write_state_files()

    def _write_state_files(self):
        session = session_for(self, create=False)
        states = session.states() if session is not None else {}
        plain, arrays = _encode(states)
        digest = None
        if arrays:
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            data = buffer.getvalue()
            digest = hashlib.sha256(data).hexdigest()
            _write_bytes(self._arrays_path, data)
        epoch, batch = self._position
        document = {
            "format_version": FORMAT_VERSION,
            "epoch": epoch,
            "batch": batch,
            "arrays_sha256": digest,
            "callbacks": plain,
        }
        _write_bytes(self._state_path, json.dumps(document, indent=1).encode("utf-8"))

    # -- loading ----------------------------------------------------------------

    def _load_all(self):
        """Load weights and epoch (Keras) and read the callback states; fall back to ``.bkp``.

        Writes nothing to ``backup_dir``: several workers may be reading it at once.
        """
        try:
            return self._load_files()
        except (OSError, _StateFileError) as error:
            previous = [
                f"{path}.bkp"
                for path in (self._weights_path, self._training_metadata_path, self._state_path)
            ]
            if not all(file_utils.exists(path) for path in previous):
                if isinstance(error, _StateFileError):
                    raise ValueError(
                        f"Cannot resume from the backup in {self.backup_dir!r}: {error} "
                        "The weights there cannot be resumed consistently without it. "
                        "Delete the directory to start over (or use "
                        "double_checkpoint=True to keep a fallback)."
                    ) from None
                raise
            try:
                states = self._load_files(".bkp")
            except _StateFileError as second:
                raise ValueError(
                    f"Cannot resume from the backup in {self.backup_dir!r}: the latest save "
                    f"was unreadable ({error}) and so is the previous one ({second}). "
                    "Delete the directory to start over."
                ) from None
            self._fell_back = True
            return states

    def _load_files(self, suffix=""):
        """Load the weights and epoch and read the states of the files ending in ``suffix``."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._files_in(self.backup_dir, suffix))
            if suffix and file_utils.exists(self._weights_path):
                # Keras loads weights only from a file named *.weights.h5: load a local copy.
                local = stack.enter_context(tempfile.TemporaryDirectory(prefix="nnkit-"))
                copy = os.path.join(local, WEIGHTS_FILE)
                _copy(self._weights_path, copy)
                self._weights_path = copy  # until _files_in ends
            self._load_model()
            return self._read_states()

    def _read_states(self):
        state_path, arrays_path = self._state_path, self._arrays_path
        if not file_utils.exists(self._training_metadata_path):
            return {}  # nothing was saved: a fresh start
        with file_utils.File(self._training_metadata_path, "r") as f:
            metadata = json.loads(f.read())
        if not file_utils.exists(state_path):
            raise _StateFileError(
                f"{state_path!r} is missing (a backup written by keras.callbacks."
                "BackupAndRestore, or an interrupted save)."
            )
        try:
            document = json.loads(_read_bytes(state_path).decode("utf-8"))
            position = (document["epoch"], document["batch"])
            version = document["format_version"]
            plain = document["callbacks"]
            digest = document["arrays_sha256"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise _StateFileError(f"{state_path!r} is unreadable ({error!r}).") from None
        if version != FORMAT_VERSION:
            raise _StateFileError(
                f"{state_path!r} has format_version={version!r}; this nnkit reads {FORMAT_VERSION}."
            )
        if position != (metadata["epoch"], metadata.get("batch", 0)):
            raise _StateFileError(
                f"{state_path!r} was written for epoch/batch {position}, but the weights are "
                f"from {(metadata['epoch'], metadata.get('batch', 0))} (an interrupted save)."
            )
        arrays = {}
        if digest is not None:
            try:
                data = _read_bytes(arrays_path)
            except OSError as error:
                raise _StateFileError(f"{arrays_path!r} is unreadable ({error!r}).") from None
            if hashlib.sha256(data).hexdigest() != digest:
                raise _StateFileError(
                    f"{arrays_path!r} does not match {state_path!r} (SHA-256 differs)."
                )
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        try:
            return _decode(plain, arrays)
        except (AttributeError, KeyError, TypeError) as error:
            raise _StateFileError(f"{state_path!r} is malformed ({error!r}).") from None

    # -- config and copies ------------------------------------------------------

    def get_config(self):
        return {
            "backup_dir": self.backup_dir,
            "save_freq": self.save_freq,
            "double_checkpoint": self.double_checkpoint,
            "delete_checkpoint": self.delete_checkpoint,
        }
