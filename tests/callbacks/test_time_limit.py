"""nnkit.callbacks.TimeLimit with a scripted clock: the stop epoch, the resumed budget, validation."""

import math
import os

import keras
import numpy as np
import pytest

from nnkit.callbacks import BackupAndRestore, Reason, TimeLimit
from nnkit.callbacks.time_limit import parse_duration

BATCHES = 4  # batches per epoch in _fit


class Clock:
    """A scripted clock: time moves only when a ``Tick`` says so."""

    def __init__(self, start=1000.0):
        self.now = start

    def __call__(self):
        return self.now


class Tick(keras.callbacks.Callback):
    """Advances the clock by ``batch`` seconds per batch and ``tail`` at each epoch end.

    Placed before ``TimeLimit``, so it sees the time after the work.
    """

    def __init__(self, clock, batch=1.0, tail=0.0):
        super().__init__()
        self.clock, self.batch, self.tail = clock, batch, tail
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.clock.now += self.batch
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        self.clock.now += self.tail


class Interrupted(Exception):
    pass


class Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupted(f"end of epoch {epoch}")


def _fit(callbacks, epochs=10, batches=BATCHES):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    x, y = np.ones((8 * batches, 2), "float32"), np.zeros((8 * batches, 1), "float32")
    return model.fit(x, y, batch_size=8, epochs=epochs, callbacks=callbacks, verbose=0)


def _limit(clock, *args, **kwargs):
    limit = TimeLimit(*args, **kwargs)
    limit._clock = clock  # the documented test seam (a private class attribute)
    return limit


def _expected_stop(budget, factor, duration, epochs=10):
    """First epoch t (0-based) with (t+1)·d + f·d > T, by the rule in the docstring."""
    for t in range(epochs - 1):
        if (t + 1) * duration + factor * duration > budget:
            return t
    return None


@pytest.mark.parametrize("budget, factor", [(18, 1.0), (18, 1.25), (18, 2.0), (200, 1.25)])
def test_stops_at_the_last_epoch_that_fits(budget, factor):
    clock = Clock()
    limit = _limit(clock, budget, safety_factor=factor)
    history = _fit([Tick(clock), limit])
    expected = _expected_stop(budget, factor, duration=BATCHES * 1.0)
    if expected is None:
        assert limit.stop_reason is Reason.NOT_STOPPED and len(history.epoch) == 10
        return
    assert limit.stop_reason is Reason.TIME_LIMIT and limit.stopped_epoch == expected
    assert history.epoch == list(range(expected + 1))
    assert limit.elapsed == (expected + 1) * BATCHES <= budget
    assert limit.stop_message.startswith(f"Epoch {expected + 1} (stopped_epoch={expected}):")
    assert "max_duration=" in limit.stop_message


def test_the_longest_epoch_sets_the_estimate():
    clock = Clock()
    limit = _limit(clock, 30, safety_factor=1.0)
    # epoch tails of 0 s, then one slow epoch end (a validation pass): 4, 12, ...
    tick = Tick(clock)
    tails = iter([0.0, 8.0, 0.0, 0.0, 0.0])

    class SlowEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            clock.now += next(tails)

    _fit([tick, SlowEnd(), limit], epochs=5)
    # ends at 4, 16 (longest 12): 16 + 12 = 28 <= 30; at 20: 20 + 12 > 30 -> stop at epoch 2
    assert limit.longest_epoch == 12.0 and limit.stopped_epoch == 2


def test_batch_boundary_stops_mid_epoch():
    clock = Clock()
    limit = _limit(clock, 12.5, safety_factor=1.0, boundary="batch")
    tick = Tick(clock, batch=1.0, tail=2.0)
    _fit([tick, limit], epochs=3, batches=20)
    # batch ends at 1, 2, ...: stop at the first t with t + 1 > 12.5, t = 12
    assert tick.batches == 12 and limit.stopped_epoch == 0
    assert "after batch 12" in limit.stop_message


def test_the_last_epoch_is_never_stopped():
    clock = Clock()
    limit = _limit(clock, 9, safety_factor=1.0)
    _fit([Tick(clock), limit], epochs=2)  # at 8: 8 + 4 > 9, but no epoch comes next
    assert limit.stop_reason is Reason.NOT_STOPPED


def test_a_resumed_run_continues_the_same_budget(tmp_path):
    """Interrupted at the end of epoch 2 and resumed: it stops where the whole run stops."""
    budget, factor = 17, 1.0
    clock = Clock()
    whole = _limit(clock, budget, safety_factor=factor)
    _fit([Tick(clock), whole])
    assert whole.stopped_epoch == _expected_stop(budget, factor, BATCHES)

    backup = str(tmp_path / "backup")
    clock = Clock(start=50.0)
    with pytest.raises(Interrupted):
        _fit([Tick(clock), _limit(clock, budget, safety_factor=factor), BackupAndRestore(backup),
              Interrupt(2)])  # fmt: skip
    clock = Clock(start=7.0)  # a new process: another clock origin, the down time not counted
    resumed = _limit(clock, budget, safety_factor=factor)
    history = _fit([Tick(clock), resumed, BackupAndRestore(backup)])
    assert history.epoch == list(range(2, whole.stopped_epoch + 1))
    assert resumed.stopped_epoch == whole.stopped_epoch
    assert resumed.elapsed == whole.elapsed


@pytest.mark.parametrize(
    "text, seconds",
    [("01:30:00", 5400.0), ("0:00:01.5", 1.5), ("1:00:00:00", 86400.0), ("48:00:00", 172800.0),
     (90, 90.0), (0.5, 0.5)],
)  # fmt: skip
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(max_duration="1:60:00"), ValueError, "< 60"),
        (dict(max_duration="an hour"), ValueError, "max_duration='an hour'"),
        (dict(max_duration="00:00:00"), ValueError, "must be > 0"),
        (dict(max_duration=0), ValueError, "max_duration=0"),
        (dict(max_duration=-5), ValueError, "max_duration=-5"),
        (dict(max_duration=True), TypeError, "max_duration=True"),
        (dict(max_duration=math.nan), ValueError, "max_duration=nan"),
        (dict(max_duration=None), TypeError, "max_duration=None"),
        (dict(max_duration=60, safety_factor=0.5), ValueError, "safety_factor=0.5"),
        (dict(max_duration=60, safety_factor="2"), TypeError, "safety_factor='2'"),
        (dict(max_duration=60, boundary="step"), ValueError, "boundary='step'"),
        (dict(max_duration=60, verbose=-1), ValueError, "verbose=-1"),
    ],
)
def test_every_argument_is_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        TimeLimit(**kwargs)


def test_decide_is_the_rule():
    limit = TimeLimit(100, safety_factor=2.0)
    keep = limit.decide(80.0, 10.0)  # 80 + 2·10 = 100, not past 100
    assert (keep.act, keep.reason, keep.value) == (False, Reason.NOT_STOPPED, 100.0)
    stop = limit.decide(80.5, 10.0)
    assert (stop.act, stop.reason, stop.value) == (True, Reason.TIME_LIMIT, 100.5)


def test_state_round_trip_and_bad_state():
    limit = TimeLimit("00:10:00")
    state = {
        "elapsed": 12.5, "longest_epoch": 4.0, "longest_batch": 1.0, "longest_tail": 0.5,
        "stopped_epoch": 3, "stop_reason": "time_limit", "stop_message": "stopped",
    }  # fmt: skip
    limit.set_state(state)
    assert limit.get_state() == state and limit.get_config()["max_duration"] == "00:10:00"
    with pytest.raises(ValueError, match="Received: state="):
        limit.set_state({"elapsed": 1.0})
    with pytest.raises(ValueError, match="elapsed"):
        limit.set_state({**state, "elapsed": -1.0})


def test_a_budget_stop_keeps_the_backup_for_the_next_job(tmp_path):
    """A budget stop is not the end of training: the backup survives it (with the default
    delete_checkpoint=True), and the next job resumes after the stopped epoch."""
    budget, factor = 17, 1.0
    backup = str(tmp_path / "backup")
    clock = Clock()
    first = _limit(clock, budget, safety_factor=factor)
    history = _fit([Tick(clock), first, BackupAndRestore(backup)])
    assert first.stop_reason is not None and first.stop_reason.value == "time_limit"
    assert history.epoch[-1] == first.stopped_epoch
    assert os.path.isdir(backup) and os.listdir(backup)
    clock = Clock(start=3.0)
    second = _limit(clock, 10 * budget, safety_factor=factor)  # the next job's own budget
    history = _fit([Tick(clock), second, BackupAndRestore(backup)])
    assert history.epoch[0] == first.stopped_epoch + 1
    assert not os.path.exists(backup)  # this run ended normally: deleted
