"""The in-graph half of ``GradientNormMonitor``: its variables and the patched ``apply``.

``GradientHook`` wraps one optimizer *instance*'s ``apply`` (a patch through
``nnkit._keras.shadow``, owner ``"gradient_monitor"``) and keeps its
measurements in non-trainable ``keras.Variable`` objects. ``remove()`` takes
every patch off again, which restores the optimizer exactly. All the measuring is
``keras.ops`` inside the compiled train step; the host reads the ring buffers
with ``GradientHook.read``.

Where the cadence is decided: with one step per call of the train function
(Keras's default), on the host, which picks a traced plain step or a traced
sampling step from a step counter it keeps
(``nnkit.callbacks._gradient_cadence``; ``mode`` ``"plain"`` / ``"sample"``,
no branch in either). Every step checks each group's gradients for NaN/inf
(``Σ g·0``: one multiply-and-sum per variable), counts, and updates; a
sampling step also measures the figures of a sample (norms, weight norms,
update ratios) after the update and writes its row. A step samples when
``step % N == 0``, when it is the run's first step and no sample exists yet,
or when it is the last step of an epoch that has none yet.

With several steps per call (``steps_per_execution > 1``, ``mode="branch"``)
the cadence is decided in-graph instead, in one traced step: the figures of
a sample are measured in a branch placed *after* the unconditional update,
so the update is never fenced off from the backward pass (a branch around or
before the update cost 12-17% of a 1 ms step on a small MLP), and the host
writes the last two facts into the ``schedule`` slots of the counters once
per epoch. On TensorFlow without a strategy the sample step writes its
ring-buffer row inside that branch; elsewhere (JAX, a ``tf.distribute``
strategy) the branch is pure and every step writes its row into the next
free slot, which only a sample step keeps.

JAX and a strategy need every write outside a branch: JAX because its
train step is stateless (a write inside ``lax.cond`` would leak a tracer); ``tf.distribute`` needs it because a write
to a mirrored variable in replica context is a ``merge_call``, which a
``tf.cond`` cannot hold. On JAX the hook's variables ride along in ``optimizer.variables`` for the
duration of ``fit`` (``nnkit._keras.optimizer.carry_variables``), the only
state the stateless step carries out of ``optimizer.stateless_apply``; the
optimizer's ``save_own_variables`` is wrapped so that a checkpoint written
mid-``fit`` holds only the optimizer's own state. Under a strategy the
gradients are measured after the cross-replica all-reduce
(``nnkit._keras.all_reduce``), so the norms are those of the global batch's
gradient, as on one device.

The variables are three arrays: one float32 ring buffer for every float
column, one integer ring buffer for the step numbers and non-finite flags,
and one integer vector of counters (``STATE``). On JAX every carried
variable goes in and out of the jitted step as its own array, a cost per
array, not per byte (14 separate variables cost about 0.16 of a small
MLP's step); the host unpacks the columns in ``read``.
"""

import contextlib
import math
import threading

import keras
import numpy as np

from nnkit._keras import all_reduce, shadow
from nnkit._keras import fit as keras_fit
from nnkit._keras import layers as keras_layers
from nnkit._keras import optimizer as keras_optimizer
from nnkit._parameters import is_parameter, parameters
from nnkit.callbacks._gradient_step import STATE, StepMeasurement
from nnkit.callbacks._optimizer import to_numpy
from nnkit.diagnostics import (
    VariableGroups,
    group_variables,
)

#: The owner of every patch the hook installs (``nnkit._keras.shadow.ORDER``).
_OWNER = "gradient_monitor"

#: The per-sample rows kept in ring buffers: name -> (per group?, dtype).
ROWS = {
    "steps": (False, "int64"),
    "global_norm": (False, "float32"),
    "grad_norms": (True, "float32"),
    "weight_norms": (True, "float32"),
    "update_ratios": (True, "float32"),
    "nonfinite": (True, "int32"),
    "clipped_global_norm": (False, "float32"),
    "clipped_grad_norms": (True, "float32"),
}


#: Ring-buffer rows when the number of steps per epoch is unknown.
UNKNOWN_CAPACITY = 1024


def variables_exist(model):
    """Whether every layer of ``model`` is built (so its trainable variables all exist)."""
    return all(layer.built for layer in keras_layers.walk(model))


def capacity_for(steps, sample_every):
    """Ring-buffer rows for epochs of ``steps`` steps (``None``: unknown)."""
    return math.ceil(steps / sample_every) + 1 if steps else UNKNOWN_CAPACITY


def create_hook(model, *, by, restored_groups, sample_every, skip, start, capacity, patch_apply):
    """``(hook, group names)``: a ``GradientHook`` for ``model``'s parameters now.

    Parameters are the trainable variables less statistics channels
    (``nnkit._parameters``: K-FAC's factor statistics, float8 scales).

    ``restored_groups`` are the group names of a restored state (``[]``
    when none), which must match the model's.
    """
    from nnkit.callbacks import _optimizer

    strategy = keras_fit.explicit_strategy(model)  # TensorFlow only
    outer = model.optimizer
    inner = _optimizer.unwrap(outer)
    if strategy is not None and getattr(inner, "aggregates_gradients", False):
        # The monitor measures the aggregated gradient at Keras's all-reduce; an
        # optimizer that all-reduces and transforms the gradients itself hands that
        # all-reduce its update direction instead, so the figures would be wrong.
        raise ValueError(
            f"GradientNormMonitor cannot measure the gradients of {type(inner).__name__} "
            "under a tf.distribute strategy: it all-reduces the gradients itself and hands "
            "Keras's all-reduce, where the monitor measures, its preconditioned direction. "
            "Monitor it on one device (or on the JAX backend), or train this run without "
            f"the monitor. Received: optimizer={type(inner).__name__}, "
            f"strategy={type(strategy).__name__}"
        )
    variables = parameters(model)
    groups = group_variables(variables, by=by)
    if restored_groups and list(restored_groups) != list(groups.names):
        raise ValueError(
            "The restored GradientNormMonitor state has other groups than this model. "
            f"Received: state groups={list(restored_groups)!r}, "
            f"model groups={list(groups.names)!r}"
        )
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        hook = GradientHook(
            _optimizer.unwrap(outer),
            variables,
            groups,
            capacity=capacity,
            sample_every=sample_every,
            skip=skip,
            start=start,
            outer=outer,
            strategy=strategy,
            patch_apply=patch_apply,
        )
    return hook, list(groups.names)


def clips(optimizer):
    """Whether ``optimizer`` clips gradients (``clipnorm``, ``global_clipnorm`` or ``clipvalue``)."""
    return bool(optimizer.clipnorm or optimizer.global_clipnorm or optimizer.clipvalue)


class GradientHook(StepMeasurement):
    """Measure the gradients ``optimizer.apply`` receives; see ``GradientNormMonitor``.

    ``variables`` are the variables the groups were computed for (the model's
    parameters: its trainable variables less statistics channels, which
    ``apply`` receives too and which are handed on but never measured); ``start`` holds the initial values of ``step``,
    ``nonfinite_steps``, ``first_step`` and ``first_group``. ``outer`` is the
    optimizer the model holds (a ``LossScaleOptimizer`` around ``optimizer``,
    or ``optimizer`` itself); ``strategy`` the model's ``tf.distribute``
    strategy or ``None``.
    """

    def __init__(
        self,
        optimizer,
        variables,
        groups,
        *,
        capacity,
        sample_every,
        skip,
        start,
        outer=None,
        strategy=None,
        patch_apply=True,
    ):
        self.optimizer = optimizer
        self.outer = optimizer if outer is None else outer
        self.backend = keras.backend.backend()
        self.strategy = strategy
        if skip and strategy is not None:
            raise ValueError(
                "GradientNormMonitor(on_nonfinite='skip') is not supported under a "
                "tf.distribute strategy (the update runs in a cross-replica merge that a "
                "callback cannot make conditional); use on_nonfinite='stop' or 'warn'. "
                f"Received: strategy={type(strategy).__name__}"
            )
        self.groups = groups
        self._group_of = {id(w): k for w, k in zip(variables, groups.index, strict=True)}
        self.capacity = capacity
        self.sample_every = sample_every
        self.skip = skip
        self.clipped = clips(optimizer)
        # Counters are int32 on JAX (int64 needs jax_enable_x64).
        self.int_dtype = "int64" if self.backend == "tensorflow" else "int32"
        rows = {k: spec for k, spec in ROWS.items() if self.clipped or not k.startswith("clipped")}
        # The ring buffers and counters are packed into three arrays: on JAX
        # every variable goes in and out of the jitted step as its own array,
        # and that costs per array, not per byte. ``columns`` maps each row
        # name to ``(packed buffer, first column, grouped, dtype)``; one row
        # more than ``capacity``: every step writes into the next free slot,
        # which only a sample step keeps.
        self.columns, widths = {}, {"float": 0, "int": 0}
        for name, (grouped, dtype) in rows.items():
            key = "float" if dtype == "float32" else "int"
            dtype = self.int_dtype if dtype == "int64" else dtype
            self.columns[name] = (key, widths[key], grouped, dtype)
            widths[key] += groups.size if grouped else 1
        self.buffers = {
            "float": self._variable("rows", (capacity + 1, widths["float"]), "float32"),
            "int": self._variable("int_rows", (capacity + 1, widths["int"]), "int64"),
        }
        # Initial values, not assignments: the hook may be created while the
        # first step is traced (see GradientNormMonitor), where an assignment
        # would become part of every step. ``state`` holds, at ``STATE``'s
        # slots, the sample count, the step counter, the non-finite counters
        # and the schedule: (the run's first step when no sample exists yet,
        # the epoch's last step, the sample count at the epoch's start); -1
        # where none.
        initial = [0, start["step"], start["nonfinite_steps"], start["first_step"]]
        initial += [start["first_group"], -1, -1, -1]
        self.state = self._variable("state", (len(initial),), "int64", initial)
        self.own = [*self.buffers.values(), self.state]
        self._local = threading.local()  # per replica thread: the all-reduced gradients
        self._patches = []
        self.attach(patch_apply=patch_apply)

    def attach(self, *, patch_apply=True):
        """Install the patches (at the start of every ``fit`` the hook serves).

        ``patch_apply=False`` when the caller already routes ``apply`` here
        (the monitor's deferred patch, which creates the hook while tracing).
        """
        optimizer, strategy = self.optimizer, self.strategy
        if patch_apply and shadow.is_shadowed(optimizer, "apply", _OWNER):
            raise ValueError(
                "The optimizer's `apply` is already patched (is another GradientNormMonitor "
                f"attached to this model?). Received: optimizer={optimizer.name!r}"
            )
        if strategy is not None:
            self._patches.append(all_reduce.add_transform(optimizer, self._capture, owner=_OWNER))
        if self.backend == "jax":
            keras_optimizer.carry_variables(optimizer, self.own)
            self._patches.append(
                shadow.shadow(
                    self.outer, "save_own_variables", self._save_own_variables, owner=_OWNER
                )
            )
        if patch_apply:
            self._patches.append(shadow.shadow(optimizer, "apply", self.measure, owner=_OWNER))

    def _variable(self, name, shape, dtype, value=0):
        if dtype == "int64":
            dtype = self.int_dtype
        return keras.Variable(
            np.broadcast_to(np.asarray(value, dtype), shape).copy(),
            dtype=dtype,
            trainable=False,
            aggregation="only_first_replica",
            name=f"gradient_norm_monitor_{name}",
        )

    @property
    def attached(self):
        """Whether the hook's patches are installed (during a ``fit`` it serves)."""
        return bool(self._patches)

    def begin_run(self):
        """Empty the ring buffers for a new ``fit`` (host side; rows are read from 0)."""
        self._set_state({STATE["count"]: 0})

    def set_schedule(self, *, first_step, last_step):
        """Write the host's facts for the steps to come (host side, once per epoch).

        ``first_step``: the run's first step when no sample exists yet (it
        samples), else ``-1``; ``last_step``: the epoch's last step (it
        samples unless the epoch has one), ``-1`` when unknown. The sample
        count now marks the epoch's start.
        """
        state = np.array(to_numpy(self.state))
        state[STATE["schedule"]] = [first_step, last_step, state[STATE["count"]]]
        self.state.assign(state)

    def current_step(self):
        """The step counter as a Python int (one host read)."""
        return int(to_numpy(self.state)[STATE["step"]])

    def set_counters(self, start):
        """Assign the step counter and the non-finite counters (host side)."""
        names = ("step", "nonfinite_steps", "first_step", "first_group")
        self._set_state({STATE[name]: start[name] for name in names})

    def _set_state(self, values):
        state = np.array(to_numpy(self.state))
        for slot, value in values.items():
            state[slot] = value
        self.state.assign(state)

    def remove(self):
        """Restore the optimizer as it was: class ``apply``, its own variables only.

        The hook and its variables stay usable: ``attach`` installs it again.
        """
        for patch in reversed(self._patches):
            shadow.unshadow(patch)
        self._patches = []
        if self.backend == "jax":
            keras_optimizer.drop_variables(self.optimizer, self.own)

    def _save_own_variables(self, call_next, store):
        # JAX: the hook's variables ride along in optimizer.variables during
        # fit; a checkpoint holds only the optimizer's own state.
        with keras_optimizer.without_variables(self.optimizer, self.own):
            return call_next(store)

    def _groups_for(self, variables):
        try:
            index = tuple(self._group_of[id(w)] for w in variables)
        except KeyError:
            raise ValueError(
                "GradientNormMonitor: the optimizer received a variable that is not one of "
                "the model's trainable variables at the start of `fit` (were layers added or "
                "frozen after training began?). Received: "
                f"{[getattr(w, 'path', w) for w in variables]!r}"
            ) from None
        return VariableGroups(self.groups.names, index)

    def _received(self, grads, trainable_variables):
        """``(variables, groups, measured)``: the parameters ``apply`` received, unscaled.

        A statistics channel's "gradient" is a statistic, not a derivative of
        the loss: it is left out of every measurement (``apply`` still gets it).
        """
        opt = self.optimizer
        received = (
            keras_optimizer.trainable_variables(opt)
            if trainable_variables is None
            else list(trainable_variables)
        )
        kept = [k for k, w in enumerate(received) if is_parameter(w)]
        variables = [received[k] for k in kept]
        groups = self._groups_for(variables)
        measured = [grads[k] for k in kept]
        if opt.loss_scale_factor is not None:  # apply() unscales by this factor
            measured = [None if g is None else g / opt.loss_scale_factor for g in grads]
        return variables, groups, measured

    def read(self, since):
        """``(count, rows)``: rows ``[since, count)`` (at most the last ``capacity``) as numpy."""
        count = int(to_numpy(self.state)[STATE["count"]])
        index = np.arange(max(since, count - self.capacity), count) % (self.capacity + 1)
        packed = {key: to_numpy(buffer)[index] for key, buffer in self.buffers.items()}
        rows = {}
        for name, (key, first, grouped, dtype) in self.columns.items():
            column = (
                packed[key][:, first : first + self.groups.size]
                if grouped
                else packed[key][:, first]
            )
            rows[name] = column.astype(dtype)
        return count, rows

    def counters(self):
        """``(nonfinite_steps, first_step, first_group)`` as Python ints (one host read)."""
        state = to_numpy(self.state)
        return tuple(
            int(state[STATE[name]]) for name in ("nonfinite_steps", "first_step", "first_group")
        )
