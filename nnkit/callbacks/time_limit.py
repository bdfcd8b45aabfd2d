"""Stop training before a wall-clock budget runs out, at the last epoch (or batch) that fits.

The clock is ``TimeLimit._clock`` (``time.monotonic``), a private class
attribute rather than an argument, so that ``get_config`` stays plain JSON;
tests replace it with a scripted clock and never read the wall clock.
"""

import re
import time

import keras

from nnkit import _validation as v
from nnkit._messages import say
from nnkit.callbacks._stateful import StatefulCallback, session_for
from nnkit.callbacks.monitor import Decision, Reason

BOUNDARIES = ("epoch", "batch")
_CLOCK_TEXT = re.compile(r"^(?:(\d+):)?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


def parse_duration(max_duration):
    """Seconds in ``max_duration``: a number ``> 0``, or ``"HH:MM:SS"`` / ``"DD:HH:MM:SS"``."""
    if isinstance(max_duration, str):
        match = _CLOCK_TEXT.match(max_duration.strip())
        if not match:
            raise ValueError(
                '`max_duration` must be seconds or a string "HH:MM:SS" (or "DD:HH:MM:SS"). '
                f"Received: max_duration={max_duration!r}"
            )
        days, hours, minutes, seconds = match.groups()
        if int(minutes) >= 60 or float(seconds) >= 60:
            raise ValueError(
                "`max_duration` minutes and seconds must be < 60. "
                f"Received: max_duration={max_duration!r}"
            )
        total = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        if total <= 0:
            raise ValueError(f"`max_duration` must be > 0. Received: max_duration={max_duration!r}")
        return float(total)
    return float(v.check_positive_number("max_duration", max_duration))


def _hms(seconds):
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@keras.saving.register_keras_serializable(package="nnkit")
class TimeLimit(StatefulCallback):
    """Stop training before a wall-clock budget runs out, at the last epoch (or batch) that fits.

        Use it when a job has a time limit (a cluster scheduler's, a notebook's):
        ``fit`` ends cleanly at an epoch boundary, with its callbacks'
        ``on_train_end`` (``EarlyStopping(restore_best_weights=True)``, a last
        checkpoint), instead of being killed mid-epoch. The elapsed time is
        resumable state: with ``nnkit.callbacks.BackupAndRestore`` a resumed run
        continues the same budget (the time between the last backup and a kill,
        and the time the job was down, are not counted).

        Rule. ``T`` is the budget, ``e`` the time used since ``on_train_begin``
        (plus the restored time of earlier runs), ``f`` the ``safety_factor``.
        An epoch's duration ``d`` is measured from one epoch end to the next
        (the first from the train begin, so it includes tracing), and ``d̂`` is
        the longest so far. At an epoch end, training stops when
        ``e + f·d̂ > T``: the next epoch might not end within the budget (the
    last epoch of ``fit`` is never stopped: nothing comes next). With
        ``boundary="batch"`` it also checks at every batch end, with ``b̂`` the
        longest batch and ``ĉ`` the longest epoch tail (from the last batch end
        to the epoch end: validation and epoch-end callbacks), and stops when
        ``e + f·(b̂ + ĉ) > T``. At least one epoch (or batch) always runs.

        After a stop, ``stop_reason`` (``Reason.TIME_LIMIT``; ``NOT_STOPPED``
        before), ``stop_message`` and ``stopped_epoch`` describe it, as for
        ``EarlyStopping``; ``elapsed`` is the time used.

        Args:
            max_duration: The budget: seconds (a number ``> 0``) or a string
                ``"HH:MM:SS"`` (``"DD:HH:MM:SS"`` too, as Lightning's ``Timer``).
                Required.
            safety_factor: ``f``, a number ``>= 1`` that scales the longest
                epoch (or batch) measured. Defaults to ``1.25``.
            boundary: ``"epoch"`` checks at epoch ends only (no per-batch Python
                hook); ``"batch"`` also at batch ends (pair it with
                ``BackupAndRestore(save_freq=N)`` so the partial epoch is kept).
                Defaults to ``"epoch"``.
            verbose: ``0`` is quiet; ``1`` prints the stop message at the end of
                training. Defaults to ``0``.

        Raises:
            TypeError: If an argument has the wrong type.
            ValueError: If ``max_duration`` is not a positive number or a valid
                ``"HH:MM:SS"``, ``safety_factor < 1`` or ``boundary`` is unknown.

        Example:
        >>> import keras, numpy as np
        >>> from nnkit.callbacks import TimeLimit
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", loss="mse")
        >>> limit = TimeLimit("01:00:00")
        >>> _ = model.fit(np.ones((8, 2)), np.zeros((8, 1)), epochs=2, callbacks=[limit], verbose=0)
        >>> limit.max_duration_seconds, limit.stop_reason
        (3600.0, <Reason.NOT_STOPPED: 'not_stopped'>)

        References:
            tensorflow-addons ``tfa.callbacks.TimeStopping`` (stops after the
            epoch that crossed the budget); PyTorch Lightning
            ``lightning.pytorch.callbacks.Timer``; keras-team/keras#1625.
    """

    _clock = staticmethod(time.monotonic)

    def __init__(self, max_duration, safety_factor=1.25, boundary="epoch", verbose=0):
        super().__init__()
        if not isinstance(max_duration, str):
            max_duration = v.plain_number(max_duration)
        self.max_duration_seconds = parse_duration(max_duration)
        self.max_duration = max_duration
        self.safety_factor = v.check_number("safety_factor", safety_factor, minimum=1.0)
        self.boundary = v.check_one_of("boundary", boundary, BOUNDARIES)
        self.verbose = v.check_non_negative_int("verbose", verbose)
        # With epoch checks the batch hooks do nothing: safe to dispatch asynchronously.
        self.async_safe = self.boundary == "epoch"
        self._reset_state()

    # -- state ------------------------------------------------------------------

    def _reset_state(self):
        self._before = 0.0  # time used by earlier runs (restored)
        self._start = None  # the clock at this run's train begin
        self._last_mark = None  # the clock at the last epoch end (or train begin)
        self._last_batch = None  # the clock at the last batch end
        self._epoch = 0
        self.longest_epoch = 0.0
        self.longest_batch = 0.0
        self.longest_tail = 0.0
        self.stopped_epoch = 0
        self.stop_reason = Reason.NOT_STOPPED
        self.stop_message = ""

    @property
    def elapsed(self):
        """Seconds of the budget used: earlier runs' (restored) plus this run's so far."""
        if self._start is None:
            return self._before
        return self._before + (self._clock() - self._start)

    def get_state(self):
        return {
            "elapsed": self.elapsed,
            "longest_epoch": self.longest_epoch,
            "longest_batch": self.longest_batch,
            "longest_tail": self.longest_tail,
            "stopped_epoch": self.stopped_epoch,
            "stop_reason": self.stop_reason.value,
            "stop_message": self.stop_message,
        }

    def set_state(self, state):
        v.check_instance("state", state, dict, "a dict returned by get_state()")
        try:
            elapsed = v.check_number("state['elapsed']", state["elapsed"], minimum=0.0)
            longest = {
                key: v.check_number(f"state[{key!r}]", state[key], minimum=0.0)
                for key in ("longest_epoch", "longest_batch", "longest_tail")
            }
            stopped = v.check_non_negative_int("state['stopped_epoch']", state["stopped_epoch"])
            reason = Reason(state["stop_reason"])
            message = v.check_str("state['stop_message']", state["stop_message"], allow_empty=True)
        except KeyError as error:
            raise ValueError(
                f"TimeLimit state lacks {error}; pass a dict returned by get_state(). "
                f"Received: state={state!r}"
            ) from None
        now = self._clock()
        self._before = float(elapsed)
        self._start = now if self._start is not None else None  # this run counts from now
        self.longest_epoch = float(longest["longest_epoch"])
        self.longest_batch = float(longest["longest_batch"])
        self.longest_tail = float(longest["longest_tail"])
        self.stopped_epoch, self.stop_reason, self.stop_message = stopped, reason, message

    # -- decision ---------------------------------------------------------------

    def decide(self, elapsed, next_duration):
        """Whether to stop now, given the time used and the longest duration of what comes next.

        Args:
            elapsed: Seconds of the budget used (``e``).
            next_duration: The longest measured duration of the next unit of
                work (``d̂``, or ``b̂ + ĉ`` at a batch end).

        Returns:
            A ``Decision``: ``act`` (stop) when ``e + f·next_duration > T``,
            ``reason`` ``TIME_LIMIT`` or ``NOT_STOPPED``, and ``value`` the
            projected time at the end of the next unit, ``e + f·next_duration``.
        """
        projected = elapsed + self.safety_factor * next_duration
        if projected > self.max_duration_seconds:
            return Decision(True, Reason.TIME_LIMIT, projected)
        return Decision(False, Reason.NOT_STOPPED, projected)

    def _stop(self, epoch, decision, where, unit):
        self.stopped_epoch = epoch
        self.stop_reason = decision.reason
        budget = self.max_duration_seconds
        self.stop_message = (
            f"Epoch {epoch + 1} (stopped_epoch={epoch}): time limit ({decision.reason.value}) "
            f"{where}: {_hms(self.elapsed)} used of max_duration={self.max_duration!r} "
            f"({_hms(budget)}); the next {unit} would end at about {_hms(decision.value)} "
            f"(longest so far × safety_factor={self.safety_factor}), past the budget."
        )
        session = session_for(self, create=False)
        if session is not None:  # the next job resumes from the backup: keep it
            session.keep_backup = "time_limit"
        self.model.stop_training = True

    # -- hooks ------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # reset, then a backup's state (set_state) if any
        self._start = self._last_mark = self._clock()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._last_batch = self._clock()

    def on_train_batch_end(self, batch, logs=None):
        if self.boundary == "epoch" or self.stop_reason is Reason.TIME_LIMIT:
            return
        now = self._clock()
        self.longest_batch = max(self.longest_batch, now - self._last_batch)
        self._last_batch = now
        decision = self.decide(self.elapsed, self.longest_batch + self.longest_tail)
        if decision.act:
            self._stop(self._epoch, decision, f"after batch {batch + 1}", "batch")

    def on_epoch_end(self, epoch, logs=None):
        now = self._clock()
        self.longest_epoch = max(self.longest_epoch, now - self._last_mark)
        if self.boundary == "batch" and self._last_batch is not None:
            self.longest_tail = max(self.longest_tail, now - self._last_batch)
        self._last_mark = now
        last = (self.params or {}).get("epochs")
        if self.stop_reason is Reason.TIME_LIMIT or (last is not None and epoch + 1 >= last):
            return  # stopped at a batch end of this epoch, or no epoch comes next
        decision = self.decide(self.elapsed, self.longest_epoch)
        if decision.act:
            self._stop(epoch, decision, "at the epoch end", "epoch")

    def on_train_end(self, logs=None):
        self._before, self._start = self.elapsed, None  # frozen until the next fit
        if self.verbose > 0 and self.stop_reason is Reason.TIME_LIMIT:
            say(self.stop_message)

    # -- config -----------------------------------------------------------------

    def get_config(self):
        return {
            "max_duration": self.max_duration,
            "safety_factor": self.safety_factor,
            "boundary": self.boundary,
            "verbose": self.verbose,
        }
