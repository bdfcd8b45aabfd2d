"""Save the model (or its weights) during training; the best survives a resume, saves are atomic."""

import math
import os

import keras

from nnkit import _io
from nnkit import _validation as v
from nnkit._arrays import quiet_keras_numpy2
from nnkit._messages import say
from nnkit.callbacks import _checkpoint_files as files
from nnkit.callbacks.monitor import Decision, MonitorCallback, Reason


@keras.saving.register_keras_serializable(package="nnkit")
class ModelCheckpoint(MonitorCallback):
    """Save the model (or its weights) during training; the best survives a resume, saves are atomic.

    Use it where you would use ``keras.callbacks.ModelCheckpoint``: the eight
    arguments are Keras's, in Keras's order, with Keras's file naming
    (``filepath`` is formatted with ``epoch`` and ``batch``, counted from 1,
    and the logged keys, e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.keras"``) and
    Keras's decisions. On top of that:

    * **The best survives a resume** (keras-team/keras#17012). ``best``,
      ``best_epoch``, ``best_path`` and the list of files written are
      resumable state: ``nnkit.callbacks.BackupAndRestore`` restores them, so
      the first epoch of a resumed run does not overwrite a better saved
      model. Without a backup, a run started with ``fit(initial_epoch=k)``,
      ``k > 0``, reads them back from a small JSON sidecar that the callback
      writes (atomically) next to its files, ``sidecar_path``; records of
      epochs ``>= k`` (they are run again) are dropped. A run that starts at
      epoch 0 is a new run: it starts with no best and overwrites the sidecar.
    * **Atomic saves**: each file is written under a temporary name in its
      directory and renamed into place (``nnkit._io.atomic_save``), so a crash
      during a save leaves the previous file intact, never a truncated one.
    * **Retention**: ``keep_last=k`` keeps the ``k`` most recent files,
      ``keep_best=k`` the ``k`` with the best monitored values (both: a file
      either keeps stays); the others it wrote are deleted, never the current
      best. Deletions wait for the next epoch's beginning (or the next save,
      or the end of training), after a ``BackupAndRestore`` backup of the new
      state has been written, so a resume never points at a deleted best.
    * **Where**: ``best_path`` is the file that holds the best model
      (``None`` once a later save overwrote it: a ``filepath`` without a
      field and ``save_best_only=False``), ``saved`` the files written, in
      order, as ``{"path", "epoch", "batch", "value"}``.
    * **Why**: after each decision ``reason`` (a ``Reason``) and ``message``
      say what it did and the best epoch, e.g. "Epoch 4 (epoch=3): `val_loss`
      = 0.52 did not improve on the best 0.41 at epoch 2 (best_epoch=1)
      (no_improvement); not saved."; ``verbose=1`` prints them and, at the end
      of training, the best.

    Rule at each save point (every epoch end, or every ``save_freq`` batches)
    with monitored value ``x`` (``"min"``; ``"max"`` flips the sign): ``x``
    is an improvement when ``x < best`` in float32 (no ``best`` yet: any
    finite ``x``); ``best`` starts at ``initial_value_threshold``. A NaN or
    infinite ``x`` is never an improvement (Keras takes a NaN as the first
    best). With ``save_best_only`` only improvements are saved; otherwise
    every save point is, and ``best`` still follows the improvements.

    The monitored value is read only when it matters (``save_best_only`` or
    ``keep_best``): then a ``monitor`` that is not logged raises a
    ``ValueError`` at the first save point (``on_missing="warn"`` gives
    Keras's behaviour: a warning, and the model is saved). Attributes count
    epochs from 0 (``best_epoch``); messages count from 1, as Keras's
    progress bar and file names do. Under several workers, give every
    worker but the chief a ``filepath`` of its own
    (``nnkit.distribute.worker_directory``).

    Args:
        filepath: Path of the files (``str`` or path-like), with optional
            formatting fields. It must end in ``.weights.h5`` with
            ``save_weights_only``, else in ``.keras`` (or the legacy ``.h5``).
            Required.
        monitor: Name of the logged quantity that decides the best. Defaults
            to ``"val_loss"``.
        verbose: ``0`` is quiet; ``1`` prints each decision and the best at
            the end of training. Defaults to ``0``.
        save_best_only: Save only when the monitored value improves. Defaults
            to ``False``.
        save_weights_only: Save with ``model.save_weights`` instead of
            ``model.save``. Defaults to ``False``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (``"loss"`` is minimized,
            other names take the direction of the compiled metric). Defaults
            to ``"auto"``.
        save_freq: ``"epoch"``, or an int ``>= 1``: save every that many
            batches (Keras's count, also with ``steps_per_execution``).
            Defaults to ``"epoch"``.
        initial_value_threshold: The ``best`` to beat before anything is
            saved (with ``save_best_only``), or ``None``. Defaults to ``None``.
        keep_last: Keep only this many most recent files (int ``>= 1``), or
            ``None`` to keep all. Keyword-only. Defaults to ``None``.
        keep_best: Keep only this many best files (int ``>= 1``), or ``None``.
            Keyword-only. Defaults to ``None``.
        on_missing: ``"raise"`` or ``"warn"`` (Keras's behaviour) when a
            needed ``monitor`` is not logged. Keyword-only. Defaults to
            ``"raise"``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``filepath`` has the wrong extension, ``mode`` or
            ``on_missing`` is unknown (Keras warns and uses ``"auto"``),
            ``save_freq`` is neither ``"epoch"`` nor an int ``>= 1``,
            ``keep_last``/``keep_best`` is given for a ``filepath`` without a
            formatting field (one file: nothing to retain), or batch saves
            would need a ``val_`` value (never logged at a batch end); at the
            first save point, if a needed ``monitor`` is not logged.
        KeyError: At a save, if ``filepath`` names a key that is not logged.

    Example:
    >>> import os, tempfile, keras, numpy as np
    >>> from nnkit.callbacks import ModelCheckpoint
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.1), loss="mse")
    >>> x, y = np.ones((8, 2)), np.zeros((8, 1))
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "ckpt-{epoch}.weights.h5")
    >>> checkpoint = ModelCheckpoint(path, "loss", save_weights_only=True, keep_last=2)
    >>> _ = model.fit(x, y, batch_size=4, epochs=5, callbacks=[checkpoint], verbose=0)
    >>> sorted(name for name in os.listdir(folder) if not name.startswith("."))
    ['ckpt-4.weights.h5', 'ckpt-5.weights.h5']
    >>> checkpoint.best_epoch, checkpoint.reason
    (4, <Reason.IMPROVED: 'improved'>)

    References:
        Keras ``keras.callbacks.ModelCheckpoint``; keras-team/keras#17012 and
        keras-team/tf-keras#430 (the best is forgotten on resume); PyTorch
        Lightning ``ModelCheckpoint`` (``save_top_k``, ``save_last``).
    """

    def __init__(
        self,
        filepath,
        monitor="val_loss",
        verbose=0,
        save_best_only=False,
        save_weights_only=False,
        mode="auto",
        save_freq="epoch",
        initial_value_threshold=None,
        *,
        keep_last=None,
        keep_best=None,
        on_missing="raise",
    ):
        super().__init__(monitor, mode, 0, on_missing=on_missing)
        self.filepath = v.check_path("filepath", filepath)
        self.verbose = v.check_non_negative_int("verbose", verbose)
        self.save_best_only = v.check_bool("save_best_only", save_best_only)
        self.save_weights_only = v.check_bool("save_weights_only", save_weights_only)
        self.save_freq = files.check_save_freq(save_freq)
        self.initial_value_threshold = v.check_optional_number(
            "initial_value_threshold", initial_value_threshold
        )
        self.keep_last = files.check_optional_keep("keep_last", keep_last)
        self.keep_best = files.check_optional_keep("keep_best", keep_best)
        files.check_filepath(self.filepath, self.save_weights_only)
        if (keep_last is not None or keep_best is not None) and not files.has_field(self.filepath):
            raise ValueError(
                "`keep_last`/`keep_best` need a `filepath` with a formatting field such as "
                "{epoch}: without one every save overwrites the same file. Received: "
                f"filepath={self.filepath!r}, keep_last={keep_last!r}, keep_best={keep_best!r}"
            )
        if self.save_freq != "epoch" and self._needs_value() and self.monitor.startswith("val_"):
            raise ValueError(
                f"With save_freq={self.save_freq} (batch saves) and save_best_only or "
                f"keep_best, `monitor` must be logged at batch ends, where `val_` values "
                f"never are. Monitor a training value or save every epoch. Received: "
                f"monitor={self.monitor!r}, save_freq={self.save_freq!r}"
            )
        # Batch-end hooks do nothing with epoch saves: safe to dispatch asynchronously.
        self.async_safe = self.save_freq == "epoch"
        self._reset_state()

    def _needs_value(self):
        return self.save_best_only or self.keep_best is not None

    @property
    def sidecar_path(self):
        """The JSON file that holds the state for a resume without a backup."""
        return files.sidecar_path(self.filepath)

    # -- state ------------------------------------------------------------------

    def _reset_state(self):
        self.best = self.initial_value_threshold
        self.best_epoch = None
        self.best_path = None
        self.saved = []  # records {"path", "epoch", "batch", "value"}, oldest first
        self.reason = None  # the last decision's Reason (None before the first save point)
        self.message = ""
        self._pending_delete = []  # let go by retention, deleted at the next boundary
        self._since_save = 0  # batches since the last batch save
        self._last_batch = None
        self._epoch = 0
        self._restored = False  # set_state ran this run (a backup, or the caller)
        self._started = False  # the first epoch began

    def get_state(self):
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_path": self.best_path,
            "saved": [dict(record) for record in self.saved],
            "pending_delete": list(self._pending_delete),
            "since_save": self._since_save,
            "direction": self.direction,
        }

    def set_state(self, state):
        v.check_instance("state", state, dict, "a dict returned by get_state()")
        try:
            best, best_epoch = state["best"], state["best_epoch"]
            self.best = None if best is None else float(best)
            self.best_epoch = v.check_optional_int("state['best_epoch']", best_epoch, minimum=0)
            self.best_path = v.check_optional_path("state['best_path']", state["best_path"])
            self.saved = [files.record(r) for r in state["saved"]]
            self._pending_delete = [str(p) for p in state["pending_delete"]]
            self._since_save = v.check_non_negative_int("state['since_save']", state["since_save"])
            direction = v.check_one_of(
                "state['direction']", state["direction"], ("min", "max"), allow_none=True
            )
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"ModelCheckpoint state is not one returned by get_state() ({error!r}). "
                f"Received: state={state!r}"
            ) from None
        if direction is not None and self.mode == "auto":
            self.direction = direction
        self._restored = True

    # -- decision ---------------------------------------------------------------

    def decide(self, epoch, value):
        """Decide whether to save at this save point given the monitored ``value``; no side effects.

        Args:
            epoch: The 0-based epoch of the save point.
            value: The monitored value, or ``None`` when it is not logged (or
                not needed).

        Returns:
            A ``Decision``: ``act`` (save now), ``reason`` (``IMPROVED``,
            ``NO_IMPROVEMENT``, ``NON_FINITE`` or ``MISSING``), ``value``,
            and the ``best``/``best_epoch`` after this save point;
            ``improved`` says the saved file becomes the best.
        """
        keep_all = not self.save_best_only
        if value is None:  # not logged: Keras saves anyway (on_missing="warn")
            act = keep_all or self.on_missing == "warn"
            return Decision(act, Reason.MISSING, None, self.best, self.best_epoch)
        if not math.isfinite(value):
            return Decision(keep_all, Reason.NON_FINITE, value, self.best, self.best_epoch)
        if self.is_improvement(value, self.best):
            return Decision(True, Reason.IMPROVED, value, value, epoch, improved=True)
        return Decision(keep_all, Reason.NO_IMPROVEMENT, value, self.best, self.best_epoch)

    def _message(self, epoch, decision, path):
        name = f"`{self.monitor}`"
        done = f"saved to {path}" if decision.act else "not saved"
        if decision.reason is Reason.IMPROVED:
            before = "no best" if self.best is None else f"{self.best:.6g}"
            detail = f"{name} improved from {before} to {decision.value:.6g}"
        elif decision.reason is Reason.MISSING:
            detail = f"{name} is not logged"
        elif decision.reason is Reason.NON_FINITE:
            detail = f"{name} is {decision.value} (not finite)"
        else:
            detail = f"{name} = {decision.value:.6g} did not improve on the best {self.best:.6g}"
            if self.best_epoch is not None:
                detail += f" at epoch {self.best_epoch + 1} (best_epoch={self.best_epoch})"
        return f"Epoch {epoch + 1} (epoch={epoch}): {detail} ({decision.reason.value}); {done}."

    # -- hooks ------------------------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:
            self._started = True
            if epoch > 0 and not self._restored:
                self._resume_from_sidecar(epoch)
        self._epoch = epoch
        self._delete_pending()

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        # Keras's count, which works with steps_per_execution > 1 (batches jump).
        last = self._last_batch
        self._since_save += batch + 1 if last is None or batch <= last else batch - last
        self._last_batch = batch
        if self._since_save >= self.save_freq:
            self._since_save = 0
            self._save_point(self._epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._last_batch = None
        if self.save_freq == "epoch":
            self._save_point(epoch, None, logs)

    def on_train_end(self, logs=None):
        self._delete_pending()
        if self._needs_value():
            self.check_monitor_was_logged()
        if self.verbose > 0 and self.best_path is not None:
            say(
                f"ModelCheckpoint: best `{self.monitor}` {self.best:.6g} at epoch "
                f"{self.best_epoch + 1} (best_epoch={self.best_epoch}), in {self.best_path}."
            )

    # -- saving -----------------------------------------------------------------

    def _value(self, logs):
        if self._needs_value():
            value = self.monitored_value(logs)
        else:  # not needed: read quietly (Keras does not read it at all)
            value = (logs or {}).get(self.monitor)
            value = None if value is None else self._scalar(value)
        if value is not None:
            self.resolve_direction()  # like Keras: at the first save point, metrics built
        return value

    def _save_point(self, epoch, batch, logs):
        self._delete_pending()
        value = self._value(logs)
        decision = self.decide(epoch, value)
        path = files.format_path(self.filepath, epoch, batch, logs)
        self.reason = decision.reason
        self.message = self._message(epoch, decision, path)
        if decision.act:
            self._save(path)
            self.saved = [r for r in self.saved if r["path"] != path]
            self.saved.append({"path": path, "epoch": epoch, "batch": batch, "value": value})
        if decision.improved:
            self.best, self.best_epoch, self.best_path = decision.best, decision.best_epoch, path
        elif decision.act and path == self.best_path:
            self.best_path = None  # the best's file now holds this later, worse model
        if self.verbose > 0:
            say(self.message)
        if decision.act:
            self._retain()
            files.write_sidecar(self.filepath, self.monitor, self.get_state())

    def _save(self, path):
        directory = os.path.dirname(path)
        if directory:
            _io.makedirs(directory)
        if os.path.isdir(path):
            raise IsADirectoryError(
                "Please specify a non-directory filepath for ModelCheckpoint. Filepath used is "
                f"an existing directory: {path}"
            )
        save = self.model.save_weights if self.save_weights_only else self.model.save
        with quiet_keras_numpy2():
            _io.atomic_save(path, lambda tmp: save(tmp, overwrite=True))

    def _retain(self):
        gone = files.to_delete(
            self.saved,
            best_path=self.best_path,
            keep_last=self.keep_last,
            keep_best=self.keep_best,
            direction=self.direction or "min",
        )
        self.saved = [r for r in self.saved if r["path"] not in gone]
        self._pending_delete.extend(p for p in gone if p not in self._pending_delete)

    def _delete_pending(self):
        if not self._pending_delete:
            return
        live = {r["path"] for r in self.saved}
        for path in self._pending_delete:
            if path not in live:  # written again since it was let go
                _io.remove(path)
        self._pending_delete = []
        files.write_sidecar(self.filepath, self.monitor, self.get_state())

    def _resume_from_sidecar(self, epoch):
        state = files.read_sidecar(self.filepath, self.monitor)
        if state is None:
            return
        try:
            self.set_state(files.before_epoch(state, epoch, self.initial_value_threshold))
        except ValueError as error:
            raise ValueError(
                f"ModelCheckpoint cannot resume from {self.sidecar_path!r}: {error} Delete it "
                "to start afresh."
            ) from None

    # -- config -----------------------------------------------------------------

    def get_config(self):
        return {
            "filepath": self.filepath,
            "monitor": self.monitor,
            "verbose": self.verbose,
            "save_best_only": self.save_best_only,
            "save_weights_only": self.save_weights_only,
            "mode": self.mode,
            "save_freq": self.save_freq,
            "initial_value_threshold": self.initial_value_threshold,
            "keep_last": self.keep_last,
            "keep_best": self.keep_best,
            "on_missing": self.on_missing,
        }
