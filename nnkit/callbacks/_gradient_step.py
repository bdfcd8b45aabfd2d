"""The in-graph half of ``GradientHook``: what runs inside the compiled train step.

``StepMeasurement`` is a mixin of ``GradientHook`` (``nnkit.callbacks._gradient_hook``),
which owns the variables and the patches; see that module for where the
cadence is decided and why no variable is written in a branch.
"""

import functools

import numpy as np
from keras import ops

from nnkit._keras import control_flow
from nnkit._keras import optimizer as keras_optimizer
from nnkit.diagnostics import (
    gradient_norms,
    update_ratios,
    weight_norms,
)
from nnkit.diagnostics.norms import nonfinite_marker

#: Slots of ``GradientHook.state``, the packed counters (``schedule``: three slots).
STATE = {
    "count": 0,
    "step": 1,
    "nonfinite_steps": 2,
    "first_step": 3,
    "first_group": 4,
    "schedule": slice(5, 8),
}
STATE_SLOTS = 8  # the length of the packed counters

#: How a traced step decides whether it samples (``StepMeasurement.mode``, read at trace time):
#: ``"branch"`` in-graph from the cadence (one function for every step), ``"plain"`` never
#: (check and count only), ``"sample"`` always (the host picks which of the two runs).
MODES = ("branch", "plain", "sample")

#: The row a sampling step measures, in the order ``_sample``'s branch returns it.
_ROW = ("global_norm", "grad_norms", "nonfinite", "weight_norms", "update_ratios")


def _identity(tf, grad):
    """``tf.identity`` of a gradient (``None`` and ``tf.IndexedSlices`` included)."""
    if grad is None:
        return None
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(tf.identity(grad.values), grad.indices, grad.dense_shape)
    return tf.identity(grad)


class StepMeasurement:
    """Measure the gradients ``apply`` receives and call (or skip) the update; in-graph.

    ``mode`` (one of ``MODES``) is read when a step is traced.
    """

    mode = "branch"

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
            before.append(self._read(w) if value is None else value)
        return grads, before

    def measure(self, original, grads, trainable_variables=None):
        """Measure ``grads`` and call the ``original`` ``apply`` (or skip it); in-graph."""
        grads = list(grads)
        if not grads:
            return original(grads, trainable_variables)
        variables, groups, measured = self._received(grads, trainable_variables)
        state = self._read(self.state)  # read once, assigned once
        if self.strategy is not None:
            original(grads, trainable_variables)  # _capture sees the all-reduced grads
            measured, before = self._reduced(variables)
        elif self.mode == "plain":
            before = None  # a plain step measures no weights: no snapshot to wait for
        else:
            before, grads = self._snapshot(variables, grads)
        update = functools.partial(self._update_unless, original, grads, trainable_variables)
        self._sample(measured, update, variables, groups, state, before)

    def _read(self, variable):
        """``variable``'s value as a tensor, read once.

        On TensorFlow ``keras.ops.convert_to_tensor`` hands a variable back
        as it is, and every later use then reads it again (the packed
        counters were read five times a step); ``tf.convert_to_tensor`` reads it.
        """
        if self.backend == "tensorflow":
            import tensorflow as tf

            return tf.convert_to_tensor(variable.value)
        return ops.convert_to_tensor(variable.value)

    def _samples(self, state):
        """Whether the step samples: the cadence, or the host's ``schedule`` (in-graph, pure)."""
        step, count = state[STATE["step"]], state[STATE["count"]]
        schedule = state[STATE["schedule"]]
        regular = ops.equal(step % self.sample_every, 0)
        first = ops.equal(step, schedule[0])
        last = ops.logical_and(ops.equal(step, schedule[1]), ops.equal(count, schedule[2]))
        return ops.logical_or(regular, ops.logical_or(first, last))

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

    def _sample(self, measured, update, variables, groups, state, before):
        """Check every step; measure and keep a row where the step samples.

        Every step: NaN/inf from ``Σ g·0`` and the first bad group (``_nonfinite``),
        the counters and the update. The figures of a sample in a pure
        branch after the update; its row is written into the next free slot
        every step (unconditionally), and only a sample step keeps it.
        The counters in ``state`` (read once) are assigned once, at the end.
        """
        step, count = state[STATE["step"]], state[STATE["count"]]
        bad, first_group = self._nonfinite(measured, groups)
        if self.strategy is None:
            update(bad)

        def measure():
            norms = gradient_norms(measured, variables, groups=groups)
            after = [self._read(w) for w in variables]
            values = [
                norms.global_norm,
                norms.group_norms,
                ops.cast(norms.nonfinite, "int32"),
                weight_norms(before, groups=groups),
                update_ratios(before, after, groups=groups),
            ]
            if self.clipped:
                values.extend(self._clipped(measured, variables, groups))
            return tuple(values)

        def row_of(values):
            row = dict(zip(_ROW, values, strict=False), steps=step)
            if self.clipped:
                row["clipped_global_norm"], row["clipped_grad_norms"] = values[5], values[6]
            return row

        if self.mode != "branch":
            # The host chose this function for this step: no branch, no cadence.
            sampled = self.mode == "sample"
            if sampled:
                self._write(row_of(measure()), count)
            self.state.assign(self._next_state(state, sampled, bad, first_group))
            return
        sample = self._samples(state)
        if self.backend == "tensorflow" and self.strategy is None:
            # A write in a TensorFlow branch is fine without a strategy: only
            # a sample step writes (a row write every step cost ~10% of a
            # 0.8 ms step on a small MLP). The branch is not lowered to
            # Switch/Merge, so the steps that skip it never visit its nodes.
            import tensorflow as tf

            control_flow.unlowered_cond(tf, sample, lambda: self._write(row_of(measure()), count))
        else:
            # A pure branch returns every buffer, with the row written or as it
            # was; the assignment after it is unconditional (JAX: the carried
            # state; a strategy: no merge_call inside a branch).
            names = list(self.buffers)
            buffers = [self.buffers[name] for name in names]

            def written():
                updated = self._updated(row_of(measure()), count)
                return tuple(updated[name] for name in names)

            def kept():
                return tuple(self._read(b) for b in buffers)

            for buffer, value in zip(buffers, ops.cond(sample, written, kept), strict=True):
                buffer.assign(value)
        self.state.assign(self._next_state(state, sample, bad, first_group))

    def _next_state(self, state, sampled, bad, first_group):
        """The counters after this step: ``state`` (as read) plus one vector (few ops, every step).

        ``count`` + ``sampled``, ``step`` + 1, ``nonfinite_steps`` + ``bad``;
        at the first bad step ``first_step`` and ``first_group`` go from -1 to
        the step and the group (+ value + 1); the schedule slots stay.
        """
        dtype = state.dtype
        bad = ops.cast(bad, dtype)
        first = bad * ops.cast(ops.less(state[STATE["first_step"]], 0), dtype)
        delta = [ops.zeros((), dtype)] * STATE_SLOTS
        delta[STATE["count"]] = ops.cast(sampled, dtype)
        delta[STATE["step"]] = ops.ones((), dtype)
        delta[STATE["nonfinite_steps"]] = bad
        delta[STATE["first_step"]] = first * (state[STATE["step"]] + 1)
        delta[STATE["first_group"]] = first * (ops.cast(first_group, dtype) + 1)
        return state + ops.stack(delta)

    def _nonfinite(self, measured, groups):
        """``(bad, first_group)``: whether a gradient has NaN/inf, and the first such group.

        Few ops on purpose (this runs on every step): one multiply-and-sum
        per variable (``nonfinite_marker``: it cannot overflow, unlike a sum
        of squares, which reads a finite gradient above ~1.8e19 as inf), then
        one max over the variables' flags weighted by ``G - group`` (an earlier
        group weighs more), so ``max == 0`` means none and ``G - max`` is the
        first bad group. No scatter into groups and no argmax: on XLA the
        flags, the weights and the max are one fused kernel, and on
        TensorFlow a handful of ops whatever the number of groups.
        """
        kept = [k for k, g in enumerate(measured) if g is not None]
        if not kept:
            return ops.zeros((), "bool"), ops.zeros((), "int32")
        markers = ops.stack([nonfinite_marker(measured[k]) for k in kept])
        weights = np.asarray([groups.size - groups.index[k] for k in kept], "int32")
        flags = ops.cast(ops.logical_not(ops.isfinite(markers)), "int32")
        worst = ops.max(flags * weights)
        return ops.greater(worst, 0), groups.size - worst

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

    def _updated(self, row, count):
        """``{buffer: value}`` with ``row`` in slot ``count mod (capacity + 1)``; pure."""
        index = ops.mod(count, self.capacity + 1)
        parts = {key: [] for key in self.buffers}
        for name, (key, _, grouped, _) in self.columns.items():
            value = ops.cast(row[name], self.buffers[key].dtype)
            parts[key].append(value if grouped else ops.reshape(value, (1,)))
        updated = {}
        for key, values in parts.items():
            value = ops.expand_dims(ops.concatenate(values), 0)
            start = [index, ops.zeros_like(index)]
            updated[key] = ops.slice_update(self.buffers[key].value, start, value)
        return updated

    def _write(self, row, count):
        """Write ``row`` into slot ``count mod (capacity + 1)``; the caller advances ``count``."""
        for name, value in self._updated(row, count).items():
            self.buffers[name].assign(value)
