"""The in-graph half of ``GradientNormMonitor``: its variables and the patched ``apply``.

``GradientHook`` wraps one optimizer *instance*'s ``apply`` (a patch through
``nnkit._keras.shadow``, owner ``"gradient_monitor"``) and keeps its
measurements in non-trainable ``keras.Variable`` objects. ``remove()`` takes
every patch off again, which restores the optimizer exactly. All the measuring is
``keras.ops`` inside the compiled train step; the host reads the ring buffers
with :meth:`GradientHook.read`.

Where the cadence is decided:

- ``"scheduled"`` (``steps_per_execution == 1``, the default): the host picks
  the train function for each batch (``GradientNormMonitor`` swaps
  ``model.train_function`` in ``on_train_batch_begin``, which Keras calls
  synchronously before every step). Two functions are traced from the same
  patched ``apply``: a *plain* one that only checks ``Σ‖g‖²`` per group for
  NaN/inf and counts steps, and a *sampling* one that measures everything and
  writes a ring-buffer row. Neither holds a branch (a ``tf.cond`` in the step,
  even an empty one, cost 12–17% of a 1 ms step on a small MLP: it fences the
  optimizer update off from the backward pass).
- ``"pure"`` (``steps_per_execution > 1``, where one call runs several steps):
  the decision is in-graph; every branch is a pure function returning values,
  and every variable write is unconditional (a ring-buffer slot that only a
  sample step keeps; counters through ``ops.where``).

Both are branch-free in the sense that matters: no variable is written inside
a branch. JAX needs that because its train step is stateless (a write inside
``lax.cond`` would leak a tracer); ``tf.distribute`` needs it because a write
to a mirrored variable in replica context is a ``merge_call``, which a
``tf.cond`` cannot hold. On JAX the hook's variables ride along in ``optimizer.variables`` for the
duration of ``fit`` (``nnkit._keras.optimizer.carry_variables``), the only
state the stateless step carries out of ``optimizer.stateless_apply``; the
optimizer's ``save_own_variables`` is wrapped so that a checkpoint written
mid-``fit`` holds only the optimizer's own state. Under a strategy the
gradients are measured after the cross-replica all-reduce
(``nnkit._keras.all_reduce``), so the norms are those of the global batch's
gradient, as on one device.
"""

import functools
import threading

import keras
import numpy as np
from keras import ops

from nnkit._keras import all_reduce, shadow
from nnkit._keras import optimizer as keras_optimizer
from nnkit.callbacks._optimizer import to_numpy
from nnkit.diagnostics import (
    VariableGroups,
    first_nonfinite_group,
    gradient_norms,
    update_ratios,
    weight_norms,
)
from nnkit.diagnostics.norms import _square_sum

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


def clips(optimizer):
    """Whether ``optimizer`` clips gradients (``clipnorm``, ``global_clipnorm`` or ``clipvalue``)."""
    return bool(optimizer.clipnorm or optimizer.global_clipnorm or optimizer.clipvalue)


def _identity(tf, grad):
    """``tf.identity`` of a gradient (``None`` and ``tf.IndexedSlices`` included)."""
    if grad is None:
        return None
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(tf.identity(grad.values), grad.indices, grad.dense_shape)
    return tf.identity(grad)


class GradientHook:
    """Measure the gradients ``optimizer.apply`` receives; see ``GradientNormMonitor``.

    ``variables`` are the variables the groups were computed for (the model's
    trainable variables); ``start`` holds the initial values of ``step``,
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
        every_n_steps,
        skip,
        start,
        outer=None,
        strategy=None,
        scheduled=True,
    ):
        if shadow.is_shadowed(optimizer, "apply", _OWNER):
            raise ValueError(
                "The optimizer's `apply` is already patched (is another GradientNormMonitor "
                f"attached to this model?). Received: optimizer={optimizer.name!r}"
            )
        self.optimizer = optimizer
        self.outer = optimizer if outer is None else outer
        self.backend = keras.backend.backend()
        self.strategy = strategy
        self.mode = "scheduled" if scheduled else "pure"
        #: In "scheduled" mode: whether the train function being traced samples.
        self.sampling = False
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
        self.every_n_steps = every_n_steps
        self.skip = skip
        self.clipped = clips(optimizer)
        # Counters are int32 on JAX (int64 needs jax_enable_x64).
        self.int_dtype = "int64" if self.backend == "tensorflow" else "int32"
        rows = {k: spec for k, spec in ROWS.items() if self.clipped or not k.startswith("clipped")}
        # One row more than ``capacity``: the "pure" mode writes every step
        # into the next free slot, which only a sample step keeps.
        self.buffers = {
            name: self._variable(
                name, (capacity + 1, groups.size) if grouped else (capacity + 1,), dtype
            )
            for name, (grouped, dtype) in rows.items()
        }
        self.count = self._variable("count", (), "int64")
        self.step = self._variable("step", (), "int64", start["step"])
        self.nonfinite_steps = self._variable("nonfinite_steps", (), "int64")
        self.first_step = self._variable("first_step", (), "int64", -1)
        self.first_group = self._variable("first_group", (), "int32", -1)
        self.set_counters(start)
        self.own = [
            *self.buffers.values(),
            self.count,
            self.step,
            self.nonfinite_steps,
            self.first_step,
            self.first_group,
        ]
        self._local = threading.local()  # per replica thread: the all-reduced gradients
        self._patches = []
        if strategy is not None:
            self._patches.append(all_reduce.add_transform(optimizer, self._capture, owner=_OWNER))
        if self.backend == "jax":
            keras_optimizer.carry_variables(optimizer, self.own)
            self._patches.append(
                shadow.shadow(
                    self.outer, "save_own_variables", self._save_own_variables, owner=_OWNER
                )
            )
        self._patches.append(shadow.shadow(optimizer, "apply", self._apply, owner=_OWNER))

    def _variable(self, name, shape, dtype, value=0):
        if dtype == "int64":
            dtype = self.int_dtype
        return keras.Variable(
            np.full(shape, value, dtype),
            dtype=dtype,
            trainable=False,
            aggregation="only_first_replica",
            name=f"gradient_norm_monitor_{name}",
        )

    def set_counters(self, start):
        """Assign the step counter and the non-finite counters (host side)."""
        self.step.assign(start["step"])
        self.nonfinite_steps.assign(start["nonfinite_steps"])
        self.first_step.assign(start["first_step"])
        self.first_group.assign(start["first_group"])

    def remove(self):
        """Restore the optimizer as it was: class ``apply``, its own variables only."""
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
        """``(variables, groups, measured)``: what ``apply`` received, unscaled."""
        opt = self.optimizer
        variables = (
            keras_optimizer.trainable_variables(opt)
            if trainable_variables is None
            else list(trainable_variables)
        )
        groups = self._groups_for(variables)
        measured = grads
        if opt.loss_scale_factor is not None:  # apply() unscales by this factor
            measured = [None if g is None else g / opt.loss_scale_factor for g in grads]
        return variables, groups, measured

    # -- the measurement ------------------------------------------------------

    def _capture(self, grads_and_vars):
        """Keep the all-reduced gradients and the weights before the update, per replica.

        TensorFlow does not order a read before a later update of the same
        variable (see ``_snapshot``), so the weights are read here and the
        gradients handed on to the update are made to wait for those reads.
        """
        import tensorflow as tf  # only ever called under a tf.distribute strategy

        pairs = list(grads_and_vars)
        before = [tf.convert_to_tensor(var) for _, var in pairs]
        with tf.control_dependencies(before):
            handed = [(_identity(tf, g), var) for g, var in pairs]
        self._local.reduced = {id(var): (g, b) for (g, var), b in zip(pairs, before, strict=True)}
        return handed

    def _reduced(self, variables):
        """``(grads, before)``: the all-reduced gradient and prior value of each variable."""
        reduced = getattr(self._local, "reduced", None)
        self._local.reduced = None
        if reduced is None:
            raise RuntimeError(
                "GradientNormMonitor: the optimizer step did not all-reduce the gradients "
                "where nnkit._keras.all_reduce taps them (a Keras change? see its probe "
                "test); the aggregated gradients cannot be measured."
            )
        grads, before = [], []
        for w in variables:
            grad, value = reduced.get(id(w.value), (None, None))
            grads.append(grad)
            before.append(ops.convert_to_tensor(w.value) if value is None else value)
        return grads, before

    def _apply(self, original, grads, trainable_variables=None):
        """Measure ``grads`` and call the ``original`` ``apply`` (or skip it); in-graph."""
        grads = list(grads)
        if not grads:
            return original(grads, trainable_variables)
        if self.mode == "pure":
            sample = None
        else:
            sample = self.sampling  # read at trace time: one function per value
        variables, groups, measured = self._received(grads, trainable_variables)
        step = ops.convert_to_tensor(self.step.value)
        if self.strategy is not None:
            original(grads, trainable_variables)  # _capture sees the all-reduced grads
            measured, before = self._reduced(variables)
        elif sample is not False:
            before, grads = self._snapshot(variables, grads)
        else:
            before = None
        update = functools.partial(self._update_unless, original, grads, trainable_variables)
        if sample is False:
            self._check(measured, update, groups, step)
        else:
            self._sample(measured, update, variables, groups, step, before, sample)
        self.step.assign_add(1)

    def _snapshot(self, variables, grads):
        """``(before, grads)``: copies of the weights, and gradients that wait for them.

        On TensorFlow, ``tf.function`` does not order a read of a variable
        before a later in-place update of it (the read can run after the
        update), so the update, through the gradients it consumes, is made to
        wait for the reads; the update then copies the buffer the reads still
        hold. On JAX values are immutable: the read is the snapshot.
        """
        if self.backend != "tensorflow":
            return [ops.convert_to_tensor(w.value) for w in variables], grads
        import tensorflow as tf

        before = [tf.convert_to_tensor(w.value) for w in variables]
        with tf.control_dependencies(before):
            grads = [_identity(tf, g) for g in grads]
        return before, grads

    def _check(self, measured, update, groups, step):
        """A plain step: NaN/inf per group from ``Σ‖g‖²`` (finite iff every element is).

        Few ops on purpose (this runs on every step): one sum of squares per
        variable, one ``segment_sum`` into groups (a NaN stays in its own
        group, unlike a one-hot matmul), and an ``argmax`` for the first
        bad group.
        """
        kept = [k for k, g in enumerate(measured) if g is not None]
        if not kept:
            return update(ops.zeros((), "bool"))
        squares = ops.stack([_square_sum(measured[k]) for k in kept])
        segments = np.asarray([groups.index[k] for k in kept], "int32")
        sums = ops.segment_sum(squares, segments, num_segments=groups.size)
        group_bad = ops.cast(ops.logical_not(ops.isfinite(sums)), "int32")
        bad = ops.greater(ops.max(group_bad), 0)
        if self.strategy is None:
            update(bad)
        self._count_nonfinite(bad, step, group_bad, first_group=ops.argmax(group_bad))

    def _sample(self, measured, update, variables, groups, step, before, sample):
        """Measure everything; write a row (always when ``sample`` is True, else where it holds)."""
        norms = gradient_norms(measured, variables, groups=groups)
        bad = ops.greater(ops.sum(norms.nonfinite), 0)
        if self.strategy is None:
            update(bad)
        after = [ops.convert_to_tensor(w.value) for w in variables]
        self._count_nonfinite(bad, step, norms.nonfinite)
        size = self.groups.size

        def measure():
            values = [
                weight_norms(before, groups=groups),
                update_ratios(before, after, groups=groups),
            ]
            if self.clipped:
                values.extend(self._clipped(measured, variables, groups))
            return tuple(values)

        def zeros():
            zero = ops.zeros((size,), "float32")
            values = [zero, zero]
            if self.clipped:
                values.extend([ops.zeros((), "float32"), zero])
            return tuple(values)

        if sample is None:  # "pure" mode: the cadence is decided in-graph
            sample = ops.equal(step % self.every_n_steps, 0)
            values = ops.cond(sample, measure, zeros)
        else:
            values = measure()
        row = {
            "steps": step,
            "global_norm": norms.global_norm,
            "grad_norms": norms.group_norms,
            "weight_norms": values[0],
            "update_ratios": values[1],
            "nonfinite": norms.nonfinite,
        }
        if self.clipped:
            row["clipped_global_norm"], row["clipped_grad_norms"] = values[2], values[3]
        self._write(row)
        self.count.assign_add(ops.cast(sample, self.count.dtype))

    def _update_unless(self, original, grads, trainable_variables, bad):
        """Call the ``original`` ``apply``; with "skip", not where ``bad``.

        TensorFlow: the update in a branch. JAX: a write in ``lax.cond`` would
        leak a tracer, so the update runs and every old value is kept where
        ``bad`` (``ops.where`` over the weights and the optimizer's state).
        """
        if not self.skip:
            original(grads, trainable_variables)
            return
        if self.backend == "tensorflow":  # no strategy here: a write in a branch is fine
            ops.cond(bad, lambda: None, lambda: original(grads, trainable_variables))
            return
        own = {id(w) for w in self.own}
        state = keras_optimizer.trainable_variables(self.optimizer) + [
            w for w in self.optimizer.variables if id(w) not in own
        ]
        old = [ops.convert_to_tensor(w.value) for w in state]
        original(grads, trainable_variables)
        for w, value in zip(state, old, strict=True):
            w.assign(ops.where(bad, value, w.value))

    # -- shared ------------------------------------------------------------------

    def _clipped(self, grads, variables, groups):
        kept = [k for k, g in enumerate(grads) if g is not None]
        # Keras's clipping even where clip_after_aggregation has suspended it.
        clipped = keras_optimizer.clip_gradients(self.optimizer, [grads[k] for k in kept])
        full = [None] * len(grads)
        for k, g in zip(kept, clipped, strict=True):
            full[k] = g
        norms = gradient_norms(full, variables, groups=groups)
        return norms.global_norm, norms.group_norms

    def _count_nonfinite(self, bad, step, nonfinite, first_group=None):
        first = ops.logical_and(bad, ops.less(self.first_step.value, 0))
        group = first_nonfinite_group(nonfinite) if first_group is None else first_group
        group = ops.cast(group, self.first_group.dtype)
        self.first_group.assign(ops.where(first, group, self.first_group.value))
        self.first_step.assign(
            ops.where(first, ops.cast(step, self.first_step.dtype), self.first_step.value)
        )
        self.nonfinite_steps.assign_add(ops.cast(bad, self.nonfinite_steps.dtype))

    def _write(self, row):
        """Write ``row`` into slot ``count mod (capacity + 1)``; the caller advances ``count``."""
        index = ops.mod(self.count.value, self.capacity + 1)
        for name, value in row.items():
            buffer = self.buffers[name]
            value = ops.expand_dims(ops.cast(value, buffer.dtype), 0)
            start = [index] if len(buffer.shape) == 1 else [index, ops.zeros_like(index)]
            buffer.assign(ops.slice_update(buffer.value, start, value))

    def read(self, since):
        """``(count, rows)``: rows ``[since, count)`` (at most the last ``capacity``) as numpy."""
        count = int(to_numpy(self.count))
        index = np.arange(max(since, count - self.capacity), count) % (self.capacity + 1)
        return count, {name: to_numpy(buffer)[index] for name, buffer in self.buffers.items()}

    def counters(self):
        """``(nonfinite_steps, first_step, first_group)`` as Python ints (one host read each)."""
        return (
            int(to_numpy(self.nonfinite_steps)),
            int(to_numpy(self.first_step)),
            int(to_numpy(self.first_group)),
        )
