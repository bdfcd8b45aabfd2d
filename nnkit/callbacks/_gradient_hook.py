"""The in-graph half of ``GradientNormMonitor``: its variables and the patched ``apply``.

``GradientHook`` patches one optimizer *instance* (``optimizer.apply`` as an
instance attribute shadowing the class method) and keeps its measurements in
non-trainable ``keras.Variable`` objects that belong to nobody (neither the
model nor the optimizer tracks them, so nothing extra is saved). ``remove()``
deletes the instance attribute, which restores the class method. All the
measuring is ``keras.ops`` inside the compiled train step; the host reads the
ring buffers with :meth:`GradientHook.read`.
"""

import keras
import numpy as np
from keras import ops

from nnkit.callbacks._optimizer import to_numpy
from nnkit.diagnostics import (
    GradientNorms,
    VariableGroups,
    first_nonfinite_group,
    gradient_norms,
    update_ratios,
    weight_norms,
)
from nnkit.diagnostics.norms import _square_sum

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


class GradientHook:
    """Measure the gradients ``optimizer.apply`` receives; see ``GradientNormMonitor``.

    ``variables`` are the variables the groups were computed for (the model's
    trainable variables); ``start`` holds the initial values of ``step``,
    ``nonfinite_steps``, ``first_step`` and ``first_group``.
    """

    def __init__(self, optimizer, variables, groups, *, capacity, every_n_steps, skip, start):
        if "apply" in vars(optimizer):
            raise ValueError(
                "The optimizer's `apply` is already patched (is another GradientNormMonitor "
                f"attached to this model?). Received: optimizer={optimizer.name!r}"
            )
        self.optimizer = optimizer
        self.groups = groups
        self._group_of = {id(w): k for w, k in zip(variables, groups.index, strict=True)}
        self.capacity = capacity
        self.every_n_steps = every_n_steps
        self.skip = skip
        self.clipped = clips(optimizer)
        rows = {k: spec for k, spec in ROWS.items() if self.clipped or not k.startswith("clipped")}
        self.buffers = {
            name: self._variable(name, (capacity, groups.size) if grouped else (capacity,), dtype)
            for name, (grouped, dtype) in rows.items()
        }
        # One copy of each weight, taken at sample steps, for the update ratio.
        self.snapshots = {
            id(w): keras.Variable(
                np.zeros(w.shape, keras.backend.standardize_dtype(w.dtype)),
                trainable=False,
                aggregation="only_first_replica",
                name="gradient_norm_monitor_snapshot",
            )
            for w in variables
        }
        self.count = self._variable("count", (), "int64")
        self.step = self._variable("step", (), "int64", start["step"])
        self.nonfinite_steps = self._variable("nonfinite_steps", (), "int64")
        self.first_step = self._variable("first_step", (), "int64", -1)
        self.first_group = self._variable("first_group", (), "int32", -1)
        self.set_counters(start)
        self.original = optimizer.apply  # the bound class method
        optimizer.apply = self.apply

    @staticmethod
    def _variable(name, shape, dtype, value=0):
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
        """Restore the optimizer's class ``apply``."""
        if vars(self.optimizer).get("apply") == self.apply:
            del self.optimizer.apply

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

    def apply(self, grads, trainable_variables=None):
        """Measure ``grads``, then call the original ``apply`` (or skip it); in-graph."""
        grads = list(grads)
        opt = self.optimizer
        if not grads:
            return self.original(grads, trainable_variables)
        variables = (
            list(opt._trainable_variables)
            if trainable_variables is None
            else list(trainable_variables)
        )
        groups = self._groups_for(variables)
        measured = grads
        if opt.loss_scale_factor is not None:  # apply() unscales by this factor
            measured = [None if g is None else g / opt.loss_scale_factor for g in grads]
        step = ops.convert_to_tensor(self.step.value)
        is_sample = ops.equal(step % self.every_n_steps, 0)
        snapshots = [self.snapshots[id(w)] for w in variables]
        # The common step pays one fused reduction and two empty branches:
        # Σ‖g‖² is finite iff every element is (or, rarely, it overflows).
        # Per-group figures and exact non-finite counts are computed only on
        # sample steps and on suspicious ones. The optimizer's own update stays
        # outside any branch (a branch would serialize it) unless "skip" asks
        # for it to be conditional.
        squares = [_square_sum(g) for g in measured if g is not None]
        suspicious = ops.logical_not(ops.isfinite(ops.sum(ops.stack(squares))))
        size = self.groups.size

        def measure():
            def take_snapshot():
                for snapshot, w in zip(snapshots, variables, strict=True):
                    snapshot.assign(w)

            ops.cond(is_sample, take_snapshot, lambda: None)
            norms = gradient_norms(measured, variables, groups=groups)
            self._count_nonfinite(ops.greater(ops.sum(norms.nonfinite), 0), step, norms.nonfinite)
            return tuple(norms)

        def no_measure():
            zeros = ops.zeros((size,), "float32")
            return ops.zeros((), "float32"), zeros, ops.zeros((size,), "int32")

        norms = GradientNorms._make(
            ops.cond(ops.logical_or(is_sample, suspicious), measure, no_measure)
        )
        def update():
            self.original(grads, trainable_variables)

        if self.skip:
            ops.cond(ops.greater(ops.sum(norms.nonfinite), 0), lambda: None, update)
        else:
            update()

        def write_sample():
            before = [snapshot.value for snapshot in snapshots]
            row = {
                "steps": step,
                "global_norm": norms.global_norm,
                "grad_norms": norms.group_norms,
                "weight_norms": weight_norms(before, groups=groups),
                "update_ratios": update_ratios(before, [w.value for w in variables], groups=groups),
                "nonfinite": norms.nonfinite,
            }
            if self.clipped:
                row["clipped_global_norm"], row["clipped_grad_norms"] = self._clipped(
                    measured, variables, groups
                )
            self._write(row)

        ops.cond(is_sample, write_sample, lambda: None)
        self.step.assign_add(1)

    def _clipped(self, grads, variables, groups):
        kept = [k for k, g in enumerate(grads) if g is not None]
        clipped = self.optimizer._clip_gradients([grads[k] for k in kept])
        full = [None] * len(grads)
        for k, g in zip(kept, clipped, strict=True):
            full[k] = g
        norms = gradient_norms(full, variables, groups=groups)
        return norms.global_norm, norms.group_norms

    def _count_nonfinite(self, bad, step, nonfinite):
        first = ops.logical_and(bad, ops.less(self.first_step.value, 0))
        group = first_nonfinite_group(nonfinite)
        self.first_group.assign(ops.where(first, group, self.first_group.value))
        self.first_step.assign(ops.where(first, step, self.first_step.value))
        self.nonfinite_steps.assign_add(ops.cast(bad, "int64"))

    def _write(self, row):
        index = ops.mod(self.count.value, self.capacity)
        for name, value in row.items():
            buffer = self.buffers[name]
            value = ops.expand_dims(ops.cast(value, buffer.dtype), 0)
            start = [index] if len(buffer.shape) == 1 else [index, ops.zeros_like(index)]
            buffer.assign(ops.slice_update(buffer.value, start, value))
        self.count.assign_add(1)

    def read(self, since):
        """``(count, rows)``: rows ``[since, count)`` (at most the last ``capacity``) as numpy."""
        count = int(to_numpy(self.count))
        index = np.arange(max(since, count - self.capacity), count) % self.capacity
        return count, {name: to_numpy(buffer)[index] for name, buffer in self.buffers.items()}

    def counters(self):
        """``(nonfinite_steps, first_step, first_group)`` as Python ints (one host read each)."""
        return (
            int(to_numpy(self.nonfinite_steps)),
            int(to_numpy(self.first_step)),
            int(to_numpy(self.first_group)),
        )
