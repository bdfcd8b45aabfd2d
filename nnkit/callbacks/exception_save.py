"""Save a resumable backup when ``fit`` fails with an exception (Lightning's ``OnExceptionCheckpoint``).

Keras's callbacks have no hook that sees an exception, so ``ExceptionSave``
wraps what ``fit`` calls: the hook methods of the run's ``CallbackList`` (a
callback that raises) and the model's train function (the train step, and
on TensorFlow the data pipeline feeding it), through ``nnkit._keras``. The
save is ``BackupAndRestore``'s, at a consistent cut; the exception then
propagates unchanged.
"""

import sys
import warnings

import keras
import numpy as np

from nnkit import _validation as v
from nnkit._arrays import to_numpy
from nnkit._keras import fit as keras_fit
from nnkit._keras import shadow, trainer
from nnkit._keras import train_function as tf_fn
from nnkit._messages import say
from nnkit.callbacks._stateful import StatefulCallback, session_for

#: The CallbackList hooks wrapped for a run.
_HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end")


@keras.saving.register_keras_serializable(package="nnkit")
class ExceptionSave(StatefulCallback):
    """On an exception in ``fit``, save a backup the next run resumes from exactly.

    Use it with ``nnkit.callbacks.BackupAndRestore`` when a long run may fail
    for a reason that a rerun survives (a flaky data source, a full disk in
    a callback, a transient device error): the work since the last backup is
    kept, and the rerun ends as the uninterrupted run would have. The
    exception then propagates unchanged (the same object, same traceback).

    What is saved, by where the exception was raised (``Exception``
    subclasses only: ``KeyboardInterrupt`` and ``SystemExit`` are not
    failures; ``PreemptionSave`` handles signals):

    * **the data** (a generator, ``PyDataset`` or ``tf.data`` pipeline
      that raises) at step ``k >= 1`` of epoch ``e``, on TensorFlow with
      ``steps_per_execution=1``: the weights, optimizer, random state and
      callback states after the ``k`` completed steps, with the epoch's
      metric accumulators. The next run (same callbacks, same data order)
      resumes at epoch ``e``, takes the first ``k`` batches from the data
      without training on them or calling the callbacks' batch hooks, and
      trains from batch ``k``: it equals the uninterrupted run. Each step's
      batch is fetched eagerly before the step runs, so a data error comes
      before any op of the step (inside the traced step it could surface
      after the optimizer's ``iterations`` or a dropout seed had moved).
    * **a callback's hook**: the backup that is due, if that hook completes
      its cut (``BackupAndRestore``'s own rule: e.g. an epoch's backup when
      the next epoch's ``on_epoch_begin`` raises before the backup's own
      hook); otherwise the last backup stands.
    * anywhere else (the train step itself, a batch-end hook, validation,
      on JAX the data): the last backup stands, and the message says so.

    The resumed epoch's ``on_epoch_begin`` hooks, and the failed step's
    ``on_train_batch_begin`` hooks, run again (they are idempotent for
    nnkit's callbacks).

    Per-batch cost: a Python wrapper around the CallbackList's two batch
    hooks and one around the train function, and the batch fetched eagerly
    (about 0.7 ms a step on a small CPU model, see the Long runs page);
    nothing is read from the device.

    Args:
        verbose: ``1`` prints what was saved and where the next run resumes;
            ``0`` is quiet. Defaults to ``1``.

    Raises:
        TypeError: If ``verbose`` is not an int.
        ValueError: If ``verbose < 0``; at ``on_train_begin`` if the run
            has no nnkit ``BackupAndRestore``, or at a resume if the saved
            metric accumulators do not fit the model's metrics.

    Example:
    >>> import tempfile, keras, numpy as np
    >>> from nnkit.callbacks import BackupAndRestore, ExceptionSave
    >>> class Flaky(keras.utils.PyDataset):
    ...     def __init__(self, fail_at):
    ...         super().__init__()
    ...         self.fail_at = fail_at
    ...     def __len__(self):
    ...         return 4
    ...     def __getitem__(self, index):
    ...         if index == self.fail_at:
    ...             raise OSError("the data source went away")
    ...         return np.full((2, 2), index, "float32"), np.zeros((2, 1), "float32")
    >>> backup_dir = tempfile.mkdtemp()
    >>> def run(fail_at):
    ...     keras.utils.set_random_seed(0)
    ...     model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    ...     model.compile("sgd", loss="mse")
    ...     callbacks = [BackupAndRestore(backup_dir), ExceptionSave(verbose=0)]
    ...     return model.fit(Flaky(fail_at), epochs=2, verbose=0, callbacks=callbacks)
    >>> try:
    ...     run(fail_at=2)
    ... except Exception as error:  # on TensorFlow, its UnknownError holding the OSError
    ...     print("failed")
    failed
    >>> run(fail_at=None).epoch  # resumed at epoch 0, batch 2
    [0, 1]

    References:
        PyTorch Lightning's ``OnExceptionCheckpoint``
        (``lightning.pytorch.callbacks.on_exception_checkpoint``).
    """

    _not_copied = ("_fit_frame", "_patches", "_guard", "_inner", "_before_skip")

    def __init__(self, verbose=1):
        super().__init__()
        self.verbose = v.check_non_negative_int("verbose", verbose)
        self._reset_state()

    # -- state ------------------------------------------------------------------

    def _reset_state(self):
        self._fit_frame = None  # fit's frame while the run goes on
        self._patches = []  # the CallbackList's shadowed hooks
        self._guard = None  # the train function installed: ``_inner`` wrapped
        self._inner = None
        self._before_skip = None  # the train function replaced while skipping
        self._pending = None  # what ``get_state`` hands the save being written
        self._resume = None  # (epoch, batches, metrics) restored from a save
        self._skip = 0  # batches of this epoch still to skip
        self._metrics = None  # the metric accumulators to restore while skipping
        self._handled = None  # the exception already handled
        self._epoch = 0
        self._step = 0  # the step whose train function runs (batches done in the epoch)
        self.save_message = ""

    def get_state(self):
        if self._pending is None:
            return {"epoch": None, "batches": 0, "metrics": []}
        return dict(self._pending)

    def set_state(self, state):
        epoch = state.get("epoch")
        metrics = [np.asarray(a) for a in state.get("metrics") or []]
        self._resume = None if epoch is None else (int(epoch), int(state["batches"]), metrics)

    # -- hooks ------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._unwrap()
        super().on_train_begin(logs)
        from nnkit.callbacks.backup_and_restore import BackupAndRestore

        members = keras_fit.running_callbacks(self)
        if members is not None and not any(isinstance(m, BackupAndRestore) for m in members):
            raise ValueError(
                "ExceptionSave saves into the run's backup, but this run has no "
                "nnkit.callbacks.BackupAndRestore: add one (a directory the next run can read)."
            )
        self._fit_frame = keras_fit.running_fit_frame(self)
        callback_list = keras_fit.running_callback_list(self)
        if callback_list is not None:
            self._patches = [
                shadow.shadow(callback_list, hook, wrapper, owner="exception_save")
                for hook, wrapper in (
                    ("on_epoch_begin", self._wrap_hook("on_epoch_begin")),
                    ("on_epoch_end", self._wrap_hook("on_epoch_end")),
                    ("on_train_batch_begin", self._batch_begin),
                    ("on_train_batch_end", self._batch_end),
                    ("on_train_end", self._train_end),
                )
            ]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._step, self._skip = epoch, 0, 0
        if self._resume is not None:
            resume_epoch, batches, metrics = self._resume
            self._resume = None
            if resume_epoch == epoch:
                self._metrics = metrics  # assigned at the first skipped batch
                self._skip = batches

    def _restore_metrics(self, batch):
        """Give the epoch's metric accumulators their saved values (they are built from ``batch``)."""
        model, values, self._metrics = self._attached_model(), self._metrics, None
        if keras_fit.explicit_strategy(model) is None:
            trainer.build_metrics(model, batch)
        variables = model.metrics_variables
        shapes = [tuple(x.shape) for x in variables]
        if [tuple(a.shape) for a in values] != shapes:
            raise ValueError(
                "ExceptionSave cannot resume the interrupted epoch: its saved metric "
                f"accumulators have shapes {[tuple(a.shape) for a in values]}, this model's "
                f"metrics {shapes}. Compile the model with the same loss and metrics as the "
                "interrupted run."
            )
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)

    # -- wrappers of the CallbackList's hooks --------------------------------------

    def _wrap_hook(self, hook):
        def wrapper(call_next, *args, **kwargs):
            try:
                return call_next(*args, **kwargs)
            except Exception as error:
                self._failed(hook, error)
                raise

        return wrapper

    def _batch_begin(self, call_next, batch, logs=None):
        if self._skip:
            if batch < self._skip:
                if self._before_skip is None:
                    self._before_skip = tf_fn.current(self._attached_model())
                    steps = getattr(self._attached_model(), "steps_per_execution", 1) or 1
                    skip = tf_fn.skip_function(steps, self._restore_metrics)
                    tf_fn.use(self._attached_model(), skip)
                return None
            self._skip = 0
            if self._before_skip is not None:
                tf_fn.use(self._attached_model(), self._before_skip)
                self._before_skip = None
        try:
            result = call_next(batch, logs)
        except Exception as error:
            self._failed("on_train_batch_begin", error)
            raise
        self._step = batch
        if tf_fn.current(self._attached_model()) is not self._guard:
            self._guard_train_function()
        return result

    def _batch_end(self, call_next, batch, logs=None):
        if self._skip and batch < self._skip:
            return None
        try:
            return call_next(batch, logs)
        except Exception as error:
            self._failed("on_train_batch_end", error)
            raise

    def _train_end(self, call_next, *args, **kwargs):
        try:
            return call_next(*args, **kwargs)
        except Exception as error:
            self._failed("on_train_end", error)
            raise
        finally:
            self._unwrap()

    def _guard_train_function(self):
        model = self._attached_model()
        inner = tf_fn.current(model)
        step = inner
        if self._step_saves(model):
            step = tf_fn.fetch_first(inner, lambda error: self._failed("the data", error))

        def guard(*args, **kwargs):
            try:
                return step(*args, **kwargs)
            except Exception as error:
                if not tf_fn.is_end_of_data(error) and self._running() and not self._seen(error):
                    self._failed("the train step", error)
                raise

        self._guard, self._inner = guard, inner
        tf_fn.use(model, guard)

    @staticmethod
    def _step_saves(model):
        """Whether a data error can be saved mid-epoch (TensorFlow, one step per call)."""
        steps = getattr(model, "steps_per_execution", 1) or 1
        return tf_fn.takes_iterator() and steps == 1

    def _seen(self, error):
        return self._handled is error

    def _running(self):
        return self._fit_frame is not None and keras_fit.frame_on_stack(
            self._fit_frame, sys._getframe(1)
        )

    def _unwrap(self):
        """Put back the train function and the CallbackList's hooks (idempotent)."""
        model = self._attached_model()
        if model is not None and self._before_skip is not None:
            tf_fn.use(model, self._before_skip)
        if model is not None and self._guard is not None and tf_fn.current(model) is self._guard:
            tf_fn.use(model, self._inner)
        for patch in self._patches or ():
            shadow.unshadow(patch)
        self._patches, self._guard, self._inner, self._before_skip = [], None, None, None
        self._fit_frame = None

    # -- saving -----------------------------------------------------------------

    def _failed(self, where, error):
        """Save what ``where``'s failure leaves consistent; never raise (``error`` goes on)."""
        self._handled = error
        session = session_for(self, create=False)
        backup = session.backup if session is not None else None
        saved = None
        try:
            if backup is None:
                resume = "its start (no backup)"
            elif where == "the data":
                saved, resume = self._save_step(backup)
            else:
                before = backup.resume_point
                backup.write_due(where)
                if backup.resume_point != before:
                    saved = "the backup that was due"
                resume = self._where(backup)
        except Exception as save_error:  # the user's exception matters more
            warnings.warn(
                f"ExceptionSave could not save after {type(error).__name__}: "
                f"{type(save_error).__name__}: {save_error}",
                RuntimeWarning,
                stacklevel=2,
            )
            resume = "the last backup" if backup is None else self._where(backup)
        finally:
            self._unwrap()
        self.save_message = (
            f"ExceptionSave: {type(error).__name__} in {where} at epoch {self._epoch}, "
            f"step {self._step}; {'saved ' + saved if saved else 'nothing new saved'}. "
            f"The next run resumes at {resume}."
        )
        if self.verbose:
            say(self.save_message)

    @staticmethod
    def _where(backup):
        point = backup.resume_point
        return "its start (no backup written yet)" if point is None else f"epoch {point[0]}"

    def _save_step(self, backup):
        """Back up the state after the epoch's completed steps; ``(what was saved, resume point)``.

        The batch of step ``k`` failed to arrive before any op of that step
        ran (``fetch_first``): the state is exactly that after ``k`` steps.
        """
        model, done = self._attached_model(), self._step
        if done == 0:
            return None, f"{self._where(backup)} (no step of the epoch was completed)"
        metrics = [np.array(to_numpy(x)) for x in model.metrics_variables]
        self._pending = {"epoch": self._epoch, "batches": done, "metrics": metrics}
        try:
            backup.write_now(self._epoch, done - 1)
        finally:
            self._pending = None
        return (
            f"the state after {done} completed step(s)",
            f"epoch {self._epoch}, batch {done} (the first {done} batches are skipped)",
        )

    # -- config -----------------------------------------------------------------

    def get_config(self):
        return {"verbose": self.verbose}
