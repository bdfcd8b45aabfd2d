"""Reading an optimizer's learning rate from callbacks, without touching the hot path.

Shared by ``LearningRateMonitor`` and ``ReduceLROnPlateau``. Every helper runs
on the host at an epoch boundary; nothing here is traced into the training
function.

Which rate an optimizer "used" (``keras/src/optimizers/base_optimizer.py``):
an update evaluates ``learning_rate = schedule(_iterations)`` and only then
increments ``_iterations``. With ``gradient_accumulation_steps=G`` the
variables are updated only on raw steps ``s`` with ``(s + 1) % G == 0`` and the
schedule still sees the raw ``_iterations``, while ``optimizer.iterations``
counts updates (``_iterations // G``). So update ``j`` (0-based, the value of
``optimizer.iterations`` while it runs) uses ``schedule(j·G + G − 1)``.
"""

import weakref

import keras
import numpy as np
from keras import ops

from nnkit._arrays import to_numpy
from nnkit._keras import optimizer as keras_optimizer
from nnkit.schedules import Scaled

_LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule

# optimizer -> (raw iteration count, value before the change); see record_change.
_CHANGES = weakref.WeakKeyDictionary()


def scale_of(scaled):
    """The current factor of a ``Scaled`` schedule, as a Python float."""
    return float(to_numpy(scaled.scale))


def unwrap(optimizer):
    """The optimizer that owns the learning rate (``LossScaleOptimizer`` unwrapped)."""
    while isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer


def accumulation_steps(optimizer):
    """``G``: raw steps per variable update (1 without gradient accumulation)."""
    return int(getattr(optimizer, "gradient_accumulation_steps", None) or 1)


def raw_iterations(optimizer):
    """The raw step counter the schedule sees (one host read)."""
    return int(to_numpy(keras_optimizer.raw_iterations(optimizer)))


def update_to_raw_step(update, accumulation):
    """The raw step at which update ``update`` (0-based) evaluates the schedule."""
    return update * accumulation + accumulation - 1


def last_update(raw, accumulation):
    """The index of the last update applied after ``raw`` raw steps.

    Before any update, the first one (0): the rate it will use is the best
    answer to "which rate is in use".
    """
    return max(raw // accumulation - 1, 0)


def record_change(optimizer, raw, previous):
    """Note that the rate state changed after ``raw`` raw steps; ``previous`` is the old value.

    ``ReduceLROnPlateau`` calls this before it lowers the rate at an epoch
    end, so that a ``LearningRateMonitor`` later in the callback list still
    reports the rate the epoch's steps used. The first value recorded at a
    given step count wins (it is the one the steps used).
    """
    optimizer = unwrap(optimizer)
    existing = _CHANGES.get(optimizer)
    if existing is None or existing[0] != raw:
        _CHANGES[optimizer] = (raw, previous)


def value_before_change(optimizer, raw):
    """The value noted by ``record_change`` after ``raw`` raw steps, else ``None``."""
    record = _CHANGES.get(unwrap(optimizer))
    if record is None or record[0] != raw:
        return None
    return record[1]


def rate_state(optimizer):
    """The mutable part of the rate: ``Scaled`` factor or learning-rate variable value.

    Returns ``None`` for a schedule that is not ``Scaled`` (nothing mutable).
    """
    learning_rate = keras_optimizer.learning_rate_object(optimizer)
    if isinstance(learning_rate, Scaled):
        return scale_of(learning_rate)
    if isinstance(learning_rate, _LearningRateSchedule) or callable(learning_rate):
        return None
    return float(to_numpy(learning_rate))


def _evaluate(schedule, raw_steps):
    """``schedule`` at each raw step, as float32 numpy, in one call when it can."""
    steps = np.asarray(raw_steps, dtype="int64")
    if steps.size == 0:
        return np.zeros((0,), "float32")
    try:
        values = to_numpy(schedule(ops.convert_to_tensor(steps))).astype("float32")
    except Exception:  # a schedule written for scalar steps only
        values = None
    if values is None or values.shape != steps.shape:
        # Not elementwise (e.g. Keras's CosineDecay with warmup uses a cond):
        # evaluate one step at a time, on the host, at the epoch end.
        values = np.array([to_numpy(schedule(int(s))) for s in steps], dtype="float32")
    return values


def rates_at(optimizer, raw_steps, *, state=None):
    """The learning rate the optimizer uses at each raw step, as float32 numpy.

    ``state`` overrides the mutable part (see ``rate_state``), e.g. the
    factor that was in effect before a callback changed it.
    """
    steps = np.asarray(raw_steps, dtype="int64")
    learning_rate = keras_optimizer.learning_rate_object(optimizer)
    if isinstance(learning_rate, Scaled):
        scale = np.float32(scale_of(learning_rate) if state is None else state)
        return scale * _evaluate(learning_rate.schedule, steps)
    if isinstance(learning_rate, _LearningRateSchedule):
        return _evaluate(learning_rate, steps)
    if state is None:
        value = learning_rate() if callable(learning_rate) else learning_rate
        state = to_numpy(value)
    return np.full(steps.shape, state, dtype="float32")


def last_used_rate(optimizer, *, before_change=True):
    """``(raw, rate)``: raw step count now, and the rate of the last update applied.

    With ``before_change``, a change recorded at this step count
    (``record_change``) is undone: no step has used it yet.
    """
    optimizer = unwrap(optimizer)
    raw = raw_iterations(optimizer)
    accumulation = accumulation_steps(optimizer)
    step = update_to_raw_step(last_update(raw, accumulation), accumulation)
    state = value_before_change(optimizer, raw) if before_change else None
    return raw, float(rates_at(optimizer, [step], state=state)[0])
