"""Back up and restore a run: weights, optimizer, epoch, random state and every nnkit callback's state."""

import os
import shutil
import warnings

import keras

from nnkit import _io
from nnkit import _validation as v
from nnkit._arrays import quiet_keras_numpy2
from nnkit._keras import fit as keras_fit
from nnkit.callbacks import _backup_files as files
from nnkit.callbacks._base import CallbackMixin
from nnkit.callbacks._stateful import session_for

#: The hooks that may write a save due after an epoch's end (the epoch's end
#: hooks of other callbacks may still change state) or after a batch's end.
_AFTER_EPOCH = frozenset({"on_epoch_begin", "on_train_batch_begin", "on_train_end"})
_AFTER_BATCH = frozenset({"on_train_batch_begin", "on_epoch_end", "on_epoch_begin", "on_train_end"})


def _check_backup_dir(backup_dir):
    if isinstance(backup_dir, os.PathLike):
        backup_dir = os.fspath(backup_dir)
    if backup_dir is None or (isinstance(backup_dir, str) and not backup_dir):
        # Keras raises ValueError here; code that catches it keeps working.
        raise ValueError(
            "`backup_dir` must name a directory for the backup files. "
            f"Received: backup_dir={backup_dir!r}"
        )
    return v.check_str("backup_dir", backup_dir)


@keras.saving.register_keras_serializable(package="nnkit")
class BackupAndRestore(CallbackMixin, keras.callbacks.Callback):
    """Back up a run and resume it exactly where it stopped, callback state included.

    Use it instead of ``keras.callbacks.BackupAndRestore`` (same arguments)
    when the run also uses nnkit's stateful callbacks (``EarlyStopping``,
    ``ReduceLROnPlateau``, ``GradientNormMonitor``, ...). Keras's version
    restores the weights and the epoch but no callback state, so after a
    resume ``EarlyStopping`` forgets its best value and restarts its patience
    (keras-team/keras#14862); with this one, an interrupted and resumed run
    makes the same decisions as one that was never interrupted.

    What a backup holds: the model's weights and the optimizer's variables
    (``model.save_weights``), the epoch and batch to resume at, the state of
    every stateful callback of the run (``get_state()``), numpy's and
    Python's random state and the model's ``keras.random.SeedGenerator``
    states (dropout masks).

    A consistent cut, whatever the callback order: a save is due at an epoch
    end (or every ``save_freq`` batches) but is written at this callback's
    next hook (the next epoch's or batch's beginning, or the end of
    training), when every callback of that epoch (batch) has run. All of it
    is then as of the same moment. A process killed between the due moment
    and the write resumes from the previous backup and repeats that epoch.

    Atomic: the files of a backup are written under new names and committed
    by renaming one manifest (see ``nnkit.callbacks._backup_files``), so a
    kill at any moment, even during a save, leaves the previous backup
    intact and readable. On a damaged backup (an empty, truncated or foreign
    file, a file whose checksum differs, weights of another architecture)
    ``fit`` stops at ``on_train_begin`` with a ``ValueError`` naming the
    file and saying how to start afresh; nothing in ``backup_dir`` is
    deleted or overwritten then. With ``double_checkpoint`` the previous
    backup is kept too and used instead (with a warning); the unreadable
    manifest is renamed ``callback_state.json.unreadable-<n>``, not deleted.

    At ``on_train_begin`` it loads the weights, the random state and the
    epoch, and hands each saved state to its callback (keyed
    ``ClassName:ordinal`` in list order, so use the same callback list when
    resuming). Backups written by nnkit 0.1 are read as well. With
    ``save_freq=N`` Keras's rule applies: the interrupted epoch restarts
    from its first batch with the weights of the last save.

    Under several workers (``MultiWorkerMirroredStrategy``, the TensorFlow
    backend; on JAX, several processes), ``backup_dir`` must be a directory
    every worker can read, e.g. on a shared file system. Every worker
    restores from it; only the chief writes to it; every other worker runs
    the same saves into a temporary directory of its own
    (``nnkit.distribute.worker_directory``), deleted at the end of training.

    Args:
        backup_dir: Directory for the backup files (``str`` or path-like),
            used by this run only. Required.
        save_freq: ``"epoch"`` to save at every epoch end, or an int ``>= 1``
            to save every that many batches. Defaults to ``"epoch"``.
        double_checkpoint: Keep the previous backup too and fall back to it
            when the latest one cannot be read. Defaults to ``False``.
        delete_checkpoint: Delete ``backup_dir`` when training ends normally
            (not when ``TimeLimit`` stopped it: the next job resumes from the
            backup). Defaults to ``True``.

    Raises:
        TypeError: If an argument has the wrong type (``save_freq=False`` is
            refused: Keras would then save after every batch), or at a save
            if a callback's ``get_state()`` holds values that are neither JSON
            types nor numpy arrays (e.g. ``np.float32``).
        ValueError: If ``backup_dir`` is ``None`` or empty, or ``save_freq``
            is neither ``"epoch"`` nor an int ``>= 1``; at
            ``on_train_begin`` if the backup is damaged or does not fit the
            model and there is no usable previous backup.

    Example:
    >>> import tempfile, keras, numpy as np
    >>> from nnkit.callbacks import BackupAndRestore, EarlyStopping
    >>> backup_dir = tempfile.mkdtemp()
    >>> class Interrupt(keras.callbacks.Callback):
    ...     def on_epoch_begin(self, epoch, logs=None):
    ...         if epoch == 2:
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
        super().__init__()
        self.backup_dir = _check_backup_dir(backup_dir)
        if save_freq != "epoch":
            if isinstance(save_freq, str):
                raise ValueError(
                    f"`save_freq` must be 'epoch' or an int >= 1. Received: save_freq={save_freq!r}"
                )
            save_freq = v.check_positive_int("save_freq", save_freq)
        self.save_freq = save_freq
        self.double_checkpoint = v.check_bool("double_checkpoint", double_checkpoint)
        self.delete_checkpoint = v.check_bool("delete_checkpoint", delete_checkpoint)
        # Batch-end hooks do nothing with epoch saves: safe to dispatch asynchronously.
        self.async_safe = save_freq == "epoch"
        self._reset_run()

    def _reset_run(self):
        self._epoch = 0  # the epoch running now
        self._batch = 0  # the last batch seen in it (Keras's numbering)
        self._since_save = 0  # batches since the last batch save
        self._due = None  # (epoch, batch, hooks that may write it) of a save not yet written
        self._write_dir = self.backup_dir  # where this process saves (see _worker_directory)
        self._keep = set()  # generations never deleted: unreadable ones we fell back from
        self.resume_point = None  # (epoch, batch) of the last backup written or restored

    # -- hooks ------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._reset_run()
        session = session_for(self)
        if session is not None:
            session.backup = self
        states = self._restore()  # every worker reads the shared directory
        self._write_dir = self._worker_directory()
        if states and session is not None:
            session.restore(states)

    def on_epoch_begin(self, epoch, logs=None):
        self.write_due("on_epoch_begin")
        self._warn_unclaimed_states()
        self._epoch, self._batch = epoch, 0

    def on_train_batch_begin(self, batch, logs=None):
        if self._due is not None:
            self.write_due("on_train_batch_begin")

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        # Keras's count, which works with steps_per_execution > 1 (batches jump).
        self._since_save += batch + 1 if batch <= self._batch else batch - self._batch
        self._batch = batch
        if self._since_save >= self.save_freq:
            self._since_save = 0
            self._due = (self._epoch, batch, _AFTER_BATCH)

    def on_epoch_end(self, epoch, logs=None):
        self.write_due("on_epoch_end")  # a batch save of this epoch: every batch hook has run
        self._batch = 0
        if self.save_freq == "epoch":
            self._due = (epoch + 1, 0, _AFTER_EPOCH)

    def on_train_end(self, logs=None):
        session = session_for(self, create=False)
        if session is not None and session.backup is self:
            session.backup = None
        chief = self._write_dir == self.backup_dir
        kept = session is not None and session.keep_backup is not None
        if chief and self.delete_checkpoint and not kept:
            self._due = None
            _io.rmtree(self.backup_dir)
        else:
            self.write_due("on_train_end")
        if not chief:
            _io.rmtree(self._write_dir)  # backup_dir is the chief's
        keras_fit.set_initial_epoch(self.model, None)  # a later fit starts where it is told

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

    def write_due(self, hook):
        """Write the backup that is due, if ``hook`` comes after every hook it waits for.

        Called by this callback's hooks and, first thing, by the state-changing
        hooks of every stateful callback of the run (``StatefulCallback``), so
        the backup is written before the first of them runs, whatever the order.
        """
        if self._due is None or hook not in self._due[2]:
            return
        epoch, batch, _ = self._due
        self._due = None
        self.write_now(epoch, batch)

    def write_now(self, epoch, batch):
        """Write a backup that resumes at ``(epoch, batch)`` now (``ExceptionSave``'s save)."""
        session = session_for(self, create=False)
        files.write(
            self._write_dir,
            model=self.model,
            epoch=epoch,
            batch=batch,
            states=session.states() if session is not None else {},
            keep_previous=self.double_checkpoint,
            keep_generations=self._keep,
        )
        self.resume_point = (epoch, batch)

    def _worker_directory(self):
        """``backup_dir`` on the chief; a temporary directory of its own on any other worker."""
        from nnkit.distribute import workers  # lazily: TensorFlow only on its backend

        strategy = getattr(self.model, "distribute_strategy", None)  # TensorFlow backend
        return workers.worker_directory(self.backup_dir, strategy)

    # -- restoring --------------------------------------------------------------

    def _restore(self):
        """Load the backup in ``backup_dir`` (or its previous one); return the callback states."""
        try:
            return self._load(files.read(self.backup_dir))
        except files.BackupError as error:
            latest = error
        previous_exists = _io.exists(_io.join(self.backup_dir, files.PREVIOUS))
        if not (self.double_checkpoint and previous_exists):
            hint = "" if self.double_checkpoint else " (double_checkpoint=True keeps a fallback)"
            raise ValueError(
                f"Cannot resume from the backup in {self.backup_dir!r}: {latest} "
                f"{files.START_AFRESH}{hint}"
            ) from None
        try:
            backup = files.read(self.backup_dir, previous=True)
            states = self._load(backup)
        except files.BackupError as second:
            raise ValueError(
                f"Cannot resume from the backup in {self.backup_dir!r}: the latest backup is "
                f"unreadable ({latest}) and so is the previous one ({second}). "
                f"{files.START_AFRESH}"
            ) from None
        unreadable = files.set_aside(self.backup_dir, (backup.generation or 0) + 1)
        self._keep = {g for g in files.generation_files(self.backup_dir) if g != backup.generation}
        warnings.warn(
            f"BackupAndRestore: the latest backup in {self.backup_dir!r} is unreadable "
            f"({latest}); resumed from the previous one (epoch {backup.epoch}). The unreadable "
            f"manifest was kept as {unreadable!r}.",
            RuntimeWarning,
            stacklevel=3,
        )
        return states

    def _load(self, backup):
        """Apply ``backup`` to the model (weights, random state, epoch); return its states."""
        if backup is None:
            return {}
        model = self.model
        try:
            if not model.built:
                raise files.BackupError(
                    f"the model is not built, so {backup.weights!r} cannot be loaded into it; "
                    "build it first (call it on a batch of data)."
                )
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)  # its variables must exist
            try:
                with quiet_keras_numpy2(), warnings.catch_warnings():
                    warnings.simplefilter("error", UserWarning)  # a skipped variable is an error
                    model.load_weights(backup.weights)
            except (ValueError, OSError, KeyError, UserWarning) as error:
                raise files.BackupError(
                    f"{backup.weights!r} does not load into this model ({type(error).__name__}: "
                    f"{' '.join(str(error).split())[:300]}): a backup of another model or "
                    "optimizer, or a damaged file."
                ) from None
        finally:
            if backup.temporary is not None:
                shutil.rmtree(backup.temporary, ignore_errors=True)
        files.restore_rng(model, backup.rng, backup.arrays)
        keras_fit.set_initial_epoch(model, backup.epoch)
        self.resume_point = (backup.epoch, backup.batch)
        return backup.states

    # -- config -----------------------------------------------------------------

    def get_config(self):
        return {
            "backup_dir": self.backup_dir,
            "save_freq": self.save_freq,
            "double_checkpoint": self.double_checkpoint,
            "delete_checkpoint": self.delete_checkpoint,
        }
