"""K-FAC's state: what it knows of its model, its factor variables, and the curvature update.

``KFAC`` (``kfac.py``) is the optimizer a user sees; this module holds the
parts of its step that touch the factors: creating them (after the momenta,
in one order whichever of ``register`` and ``build`` came first), taking
factor values loaded before registration, and folding each step's
statistics into the moving averages with the periodic refresh of the damped
inverses (a value-returning ``ops.cond`` followed by unconditional
assignments).
"""

import re
import warnings

import keras
import numpy as np
from keras import ops

from nnkit.optimizers import _kfac_math as kmath
from nnkit.optimizers import _kfac_replicas as replicas


class Registration:
    """What ``KFAC`` knows of its model; a plain object, so no tracker adopts the model."""

    def __init__(self):
        self.model = None
        self.blocks = []
        self.fallback = []
        self.momenta = {}  # id(model variable) -> momentum variable
        self.factors = {}  # id(block) -> {"a", "g", "curvature": [...]}
        self.counter = None  # factor updates so far (drives bias correction and the cadence)
        self.pending = []  # saved factor values awaiting registration (see load_own_variables)
        self.loss_scale = None  # the LossScaleOptimizer's scale, read where it is current

    def channel_ids(self):
        return {id(c) for block in self.blocks for c in block.channels}


def clean(name):
    """``name`` with every non-word character replaced by ``_`` (a variable-name part)."""
    return re.sub(r"\W", "_", str(name))


def read_loss_scale(optimizer):
    """The scale of a ``LossScaleOptimizer`` wrapping ``optimizer`` (float32), or ``None``."""
    outer = getattr(optimizer._kfac.model, "optimizer", None)
    if isinstance(outer, keras.optimizers.LossScaleOptimizer) and (
        outer.inner_optimizer is optimizer and outer.built
    ):
        return ops.cast(ops.convert_to_tensor(outer.dynamic_scale), "float32")
    return None


def make_factors(optimizer):
    """Create the factor variables of every registered block that has none yet."""
    state = optimizer._kfac
    missing = [b for b in state.blocks if id(b) not in state.factors]
    if not missing:
        return
    if state.counter is None:
        state.counter = optimizer.add_variable(
            shape=(),
            initializer="zeros",
            dtype="int32",
            aggregation="only_first_replica",
            name="kfac_factor_updates",
        )
    created = [state.counter] if len(state.factors) == 0 else []
    for block in missing:
        prefix = clean(block.name)
        shapes = {"a": (block.input_dim,) * 2, "g": (block.output_dim,) * 2}
        entry = {
            key: optimizer.add_variable(
                shape=shape,
                initializer="zeros",
                dtype="float32",
                aggregation="only_first_replica",
                name=f"kfac_{prefix}_{key}_factor",
            )
            for key, shape in shapes.items()
        }
        entry["curvature"] = [
            optimizer.add_variable(
                shape=shape,
                initializer="zeros",
                dtype="float32",
                aggregation="only_first_replica",
                name=f"kfac_{prefix}_curvature_{i}",
            )
            for i, shape in enumerate(
                kmath.curvature_shapes(block.input_dim, block.output_dim, optimizer.damping_type)
            )
        ]
        state.factors[id(block)] = entry
        created += [entry["a"], entry["g"], *entry["curvature"]]
    take_pending(optimizer, created)


def take_pending(optimizer, created):
    """Assign factor values loaded before registration to the factors just ``created``."""
    pending, optimizer._kfac.pending = optimizer._kfac.pending, []
    if not pending:
        return
    if len(pending) != len(created) or any(
        tuple(p.shape) != tuple(v.shape) for p, v in zip(pending, created, strict=True)
    ):
        warnings.warn(
            f"KFAC: the loaded factor state ({len(pending)} arrays) does not fit the "
            f"registered layers ({len(created)} variables); the factors start afresh.",
            stacklevel=3,
        )
        return
    for value, variable in zip(pending, created, strict=True):
        variable.assign(value)


def update_curvature(optimizer, received, count):
    """Fold this step's statistics into the factors; refresh the inverses on the cadence.

    Returns ``{id(block): curvature tensors}`` for this step. The refresh
    is a value-returning ``ops.cond`` followed by unconditional assignments.
    """
    state = optimizer._kfac
    a_stats = [ops.cast(received[id(b.input_channel)], "float32") for b in state.blocks]
    g_stats = [ops.cast(received[id(b.output_channel)], "float32") for b in state.blocks]
    reduced = replicas.all_reduce(a_stats + g_stats, "mean")
    a_stats, g_stats = reduced[: len(a_stats)], reduced[len(a_stats) :]
    loss_scale = state.loss_scale if state.loss_scale is not None else read_loss_scale(optimizer)
    decay = optimizer.factor_decay
    updates = ops.convert_to_tensor(state.counter)
    for block, a_stat, g_stat in zip(state.blocks, a_stats, g_stats, strict=True):
        if block.output_fisher == "empirical":
            # The loss is scaled by 1/replicas under a strategy (and by the
            # loss scale under mixed_float16): undo both, squared.
            g_stat = g_stat * float(count * count)
            if loss_scale is not None:
                g_stat = g_stat / ops.square(loss_scale)
        entry = state.factors[id(block)]
        a = decay * ops.convert_to_tensor(entry["a"]) + (1.0 - decay) * a_stat
        g = decay * ops.convert_to_tensor(entry["g"]) + (1.0 - decay) * g_stat
        optimizer.assign(entry["a"], a)
        optimizer.assign(entry["g"], g)

    kept = [v for b in state.blocks for v in state.factors[id(b)]["curvature"]]
    shapes = [tuple(v.shape) for v in kept]

    # One flat tensor out of the cond: TensorFlow's graph-mode cond (without
    # XLA) mis-wires the train function's outputs when it returns a list.
    def flat(tensors):
        return ops.concatenate([ops.reshape(t, (-1,)) for t in tensors], axis=0)

    def keep():
        return flat([ops.convert_to_tensor(v) for v in kept])

    entries = [state.factors[id(b)] for b in state.blocks]

    def refresh():
        # The factors are read from their variables inside the branch (the
        # assignments above come first): a branch that captures tensors
        # computed outside it breaks TensorFlow's graph-mode train function.
        counter = ops.cast(ops.convert_to_tensor(state.counter) + 1, "float32")
        fix = 1.0 - ops.power(decay, counter)
        fresh = []
        for entry in entries:
            a = ops.convert_to_tensor(entry["a"]) / fix
            g = ops.convert_to_tensor(entry["g"]) / fix
            fresh += kmath.curvature(
                a, g, damping=optimizer.damping, damping_type=optimizer.damping_type
            )
        return flat(fresh)

    packed = ops.cond(ops.equal(ops.mod(updates, optimizer.inverse_every), 0), refresh, keep)
    values, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        values.append(ops.reshape(packed[start : start + size], shape))
        start += size
    result, position = {}, 0
    for block in state.blocks:
        stored = state.factors[id(block)]["curvature"]
        taken = values[position : position + len(stored)]
        position += len(stored)
        for variable, value in zip(stored, taken, strict=True):
            optimizer.assign(variable, value)
        result[id(block)] = taken
    optimizer.assign(state.counter, updates + 1)
    return result
