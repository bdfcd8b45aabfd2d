"""Stop ``fit`` cleanly on a scheduler's SIGTERM, with the backup as the resume point.

The clock is ``PreemptionSave._clock`` (``time.monotonic``), a private class
attribute rather than an argument, so that ``get_config`` stays plain JSON;
tests replace it with a scripted clock.
"""

import signal
import threading
import time

import keras

from nnkit import _validation as v
from nnkit._keras import fit as keras_fit
from nnkit._messages import say
from nnkit.callbacks._base import CallbackMixin
from nnkit.callbacks._stateful import session_for

#: The exit status of a process that ``Preempted`` ends (``EX_TEMPFAIL`` of
#: ``sysexits.h``: a temporary failure, try again). A job script requeues on it.
PREEMPTED_EXIT_STATUS = 75

#: ``grace_period`` is compared with the epoch's estimated remaining time times this.
SAFETY_FACTOR = 1.25


class Preempted(SystemExit):
    """``fit`` stopped on a signal; the backup in ``backup_dir`` is where the next job resumes.

    Raised by ``PreemptionSave``; catch it when the script must do something
    before it exits. A ``SystemExit``: uncaught, it ends the process with
    ``code`` and no traceback; ``except Exception`` does not catch it.

    Args:
        message: What happened and where the next run resumes (also
            ``str(error)``). Required.
        code: The exit status. Defaults to ``PREEMPTED_EXIT_STATUS`` (75).

    Example:
    >>> from nnkit.callbacks import Preempted
    >>> Preempted("stopped").code
    75

    References:
        ``sysexits.h`` (``EX_TEMPFAIL``).
    """

    def __init__(self, message, code=PREEMPTED_EXIT_STATUS):
        super().__init__(code)
        self.message = message

    def __str__(self):
        return self.message


def _signal_number(value):
    if isinstance(value, str):
        name = value if value.startswith("SIG") else f"SIG{value}"
        number = getattr(signal, name, None)
        if not isinstance(number, signal.Signals):
            raise ValueError(
                f"`signals` must name signals of this platform, e.g. 'SIGTERM'. Received: {value!r}"
            )
        return number
    number = v.check_positive_int("signals[i]", value)
    try:
        return signal.Signals(number)
    except ValueError:
        raise ValueError(
            f"`signals` holds no signal numbered {number}. Received: {value!r}"
        ) from None


def _check_signals(signals):
    if isinstance(signals, (str, int)):
        signals = (signals,)
    if not isinstance(signals, (list, tuple)) or not signals:
        raise TypeError(
            "`signals` must be a non-empty list of signal names or numbers, e.g. "
            f"['SIGTERM', 'SIGUSR1']. Received: signals={signals!r}"
        )
    numbers = [_signal_number(s) for s in signals]
    if signal.SIGKILL in numbers or getattr(signal, "SIGSTOP", None) in numbers:
        raise ValueError(
            f"SIGKILL and SIGSTOP cannot be handled by a process. Received: signals={signals!r}"
        )
    return list(dict.fromkeys(numbers))


@keras.saving.register_keras_serializable(package="nnkit")
class PreemptionSave(CallbackMixin, keras.callbacks.Callback):
    """Stop ``fit`` cleanly on SIGTERM (or other signals), resumable exactly from the backup.

    Use it with ``nnkit.callbacks.BackupAndRestore`` when a scheduler (Slurm,
    Kubernetes, a spot-instance reclaim) sends SIGTERM and waits a grace
    period before SIGKILL. The signal handler only sets a flag; at the next
    *step boundary* (the next batch's or epoch's beginning, after any backup
    that is due has been written) ``fit`` stops by raising ``Preempted``, a
    ``SystemExit`` whose exit status is ``PREEMPTED_EXIT_STATUS`` (75), so an
    unchanged script exits with that status and the job script can requeue.
    The next run resumes from the backup exactly (the work since it, at most
    one epoch, or ``save_freq`` batches, runs again).

    Rule. With ``grace_period=G`` set, ``t`` the time since the epoch began
    and ``d̂`` the longest epoch measured (beginning to end, validation and
    callbacks included), the epoch in progress is finished and backed up when
    ``1.25·(d̂ − t) <= G`` (its work is kept); otherwise, or before any epoch
    has been measured, ``fit`` stops at the next step. A second signal stops
    at the next step in any case. A signal after the last step of ``fit``
    lets it end normally (training is complete).

    Per-batch cost: one ``on_train_batch_begin`` call that reads a flag
    (Keras calls every callback's batch-begin hook anyway).

    The handlers are installed at ``on_train_begin`` (the main thread only)
    and the previous ones are put back when ``fit`` ends or stops. If ``fit``
    raises another exception, a later signal finds ``fit`` gone and goes to
    the previous handler.

    Args:
        signals: The signals to handle: names or numbers. SIGINT (Ctrl-C) is
            opt-in. Defaults to ``("SIGTERM",)``.
        grace_period: Seconds the scheduler waits between the signal and
            SIGKILL (Slurm's ``KillWait``, Kubernetes'
            ``terminationGracePeriodSeconds``), or ``None`` to stop at the
            next step. Defaults to ``None``.
        exit_status: The code of ``Preempted`` (the process's exit status
            if uncaught). Defaults to ``PREEMPTED_EXIT_STATUS`` (75).
        verbose: ``1`` prints the stop message; ``0`` is quiet. Defaults to
            ``1``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a signal is unknown or cannot be handled (SIGKILL),
            ``grace_period <= 0`` or ``exit_status`` is outside 1..255; at
            ``on_train_begin`` if the run has no nnkit ``BackupAndRestore``.
        RuntimeError: At ``on_train_begin`` if ``fit`` runs outside the main
            thread (Python installs signal handlers only there).
        Preempted: From ``fit``, after a signal.

    Example:
    >>> import os, signal, tempfile, keras, numpy as np
    >>> from nnkit.callbacks import BackupAndRestore, Preempted, PreemptionSave
    >>> class Scheduler(keras.callbacks.Callback):  # sends SIGTERM mid-epoch
    ...     def on_train_batch_end(self, batch, logs=None):
    ...         if batch == 1:
    ...             os.kill(os.getpid(), signal.SIGTERM)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", loss="mse")
    >>> backup = BackupAndRestore(tempfile.mkdtemp())
    >>> try:
    ...     model.fit(np.ones((8, 2)), np.zeros((8, 1)), batch_size=2, epochs=3, verbose=0,
    ...               callbacks=[backup, PreemptionSave(verbose=0), Scheduler()])
    ... except Preempted as stop:
    ...     print(stop.code)
    75

    References:
        Keras 2's ``BackupAndRestore(save_before_preemption=True)`` (removed
        in Keras 3); PyTorch Lightning's ``SIGTERM`` handling
        (``lightning.pytorch.plugins.environments.SLURMEnvironment``).
    """

    _clock = staticmethod(time.monotonic)
    _not_copied = ("_fit_frame", "_previous")

    def __init__(self, signals=("SIGTERM",), grace_period=None, exit_status=75, verbose=1):
        super().__init__()
        self._numbers = _check_signals(signals)
        self.signals = [s.name for s in self._numbers]
        if grace_period is not None:
            grace_period = v.check_positive_number("grace_period", grace_period)
        self.grace_period = grace_period
        self.exit_status = v.check_int("exit_status", exit_status, minimum=1, maximum=255)
        self.verbose = v.check_non_negative_int("verbose", verbose)
        self.async_safe = True  # no batch-end hook
        self._reset_run()

    def _reset_run(self):
        self._previous = {}  # signal -> handler before ours
        self._fit_frame = None  # fit's frame while the run goes on
        self._stop = None  # None, "step" or "epoch": where to stop
        self._received = None  # (signal, clock) of the first signal
        self._epoch = 0
        self._epoch_start = None
        self.longest_epoch = 0.0
        self.stop_message = ""

    # -- handlers ---------------------------------------------------------------

    def _install(self):
        for number in self._numbers:
            self._previous[number] = signal.signal(number, self._handle)

    def _uninstall(self):
        for number, previous in (self._previous or {}).items():
            if signal.getsignal(number) == self._handle:
                signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
        self._fit_frame = None

    def _handle(self, number, frame):
        if self._fit_frame is None or not keras_fit.frame_on_stack(self._fit_frame, frame):
            # fit ended with another exception: put the old handler back and let it act.
            self._uninstall()
            signal.raise_signal(number)
            return
        now = self._clock()
        if self._received is None:
            self._received = (signal.Signals(number), now)
            self._stop = "epoch" if self._epoch_fits(now) else "step"
        else:
            self._stop = "step"

    def _epoch_fits(self, now):
        """Whether the epoch in progress will end within the grace period (the rule)."""
        if self.grace_period is None or self.longest_epoch <= 0 or self._epoch_start is None:
            return False
        remaining = max(0.0, self.longest_epoch - (now - self._epoch_start))
        return SAFETY_FACTOR * remaining <= self.grace_period

    # -- hooks ------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._uninstall()  # a run that ended with an exception left ours installed
        self._reset_run()
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "PreemptionSave installs signal handlers, which Python allows only in the main "
                f"thread; this fit runs in thread {threading.current_thread().name!r}. Call fit "
                "from the main thread, or leave PreemptionSave out and handle the signal in the "
                "main thread (setting model.stop_training = True)."
            )
        from nnkit.callbacks.backup_and_restore import BackupAndRestore

        members = keras_fit.running_callbacks(self)
        if members is not None and not any(isinstance(m, BackupAndRestore) for m in members):
            raise ValueError(
                "PreemptionSave stops fit so that the next job resumes from a backup, but this "
                "run has no nnkit.callbacks.BackupAndRestore: add one (a directory every job "
                "of the run can read)."
            )
        self._fit_frame = keras_fit.running_fit_frame(self)
        self._install()

    def on_epoch_begin(self, epoch, logs=None):
        if self._stop is not None:
            self._stop_now("on_epoch_begin", epoch, None)
        self._epoch, self._epoch_start = epoch, self._clock()

    def on_train_batch_begin(self, batch, logs=None):
        if self._stop == "step":
            self._stop_now("on_train_batch_begin", self._epoch, batch)

    def on_epoch_end(self, epoch, logs=None):
        if self._epoch_start is not None:
            self.longest_epoch = max(self.longest_epoch, self._clock() - self._epoch_start)

    def on_train_end(self, logs=None):
        if self._received is not None and self.verbose:
            say(
                f"PreemptionSave: {self._received[0].name} received after the last step; "
                "training completed normally."
            )
        self._uninstall()

    # -- stopping ---------------------------------------------------------------

    def _stop_now(self, hook, epoch, batch):
        """Write the backup that is due, put the handlers back and raise ``Preempted``."""
        session = session_for(self, create=False)
        backup = session.backup if session is not None else None
        if backup is not None:
            backup.write_due(hook)  # every callback of the cut has run (its own rule)
        self._uninstall()
        name, received = self._received[0].name, self._received[1]
        where = f"epoch {epoch}" + ("" if batch is None else f", batch {batch}")
        point = None if backup is None else backup.resume_point
        resume = "its start (no backup written yet)" if point is None else f"epoch {point[0]}"
        directory = backup.backup_dir if backup is not None else "?"
        self.stop_message = (
            f"PreemptionSave: {name} received; stopped at {where} "
            f"({self._clock() - received:.2f} s after the signal). The next run resumes "
            f"from the backup in {directory!r} at {resume}. Exit status {self.exit_status} "
            "(nnkit.callbacks.PREEMPTED_EXIT_STATUS by default): requeue the job."
        )
        if self.verbose:
            say(self.stop_message)
        raise Preempted(self.stop_message, self.exit_status)

    # -- config -----------------------------------------------------------------

    def get_config(self):
        return {
            "signals": list(self.signals),
            "grace_period": self.grace_period,
            "exit_status": self.exit_status,
            "verbose": self.verbose,
        }
