"""K-FAC's factor state: per block the moving averages ``A`` and ``G`` and their curvature.

``KFAC`` (``kfac.py``) is the optimizer a user sees; ``FactorState`` owns
the variables of the factors it preconditions with: creating them (through
the optimizer's ``add_state``, after the momenta, in one order whichever of
``register`` and ``build`` came first), taking factor values loaded before
registration, and folding each step's statistics into the moving averages
with the periodic refresh of the damped inverses (``SecondOrderOptimizer.
periodic``: a value-returning ``cond`` followed by unconditional
assignments).

For a block, with this step's statistics ``Â`` and ``Ĝ`` (all-reduced over
replicas) and ``β = statistics_decay``, after ``t`` factor updates::

    A ← β·A + (1 − β)·Â,   G ← β·G + (1 − β)·Ĝ
    every ``refresh_every`` updates: curvature ← f(A / (1 − βᵗ), G / (1 − βᵗ))

where ``f`` is ``_kfac_math.curvature`` (damped inverses or eigenbases).
"""

import warnings

import numpy as np
from keras import ops

from nnkit.distribute import replicas
from nnkit.optimizers import _kfac_accumulation as accumulation
from nnkit.optimizers import _kfac_math as kmath
from nnkit.optimizers import _state_layout
from nnkit.optimizers._base import every, state_name


class FactorState:
    """The factor variables of ``optimizer``'s registered blocks, and their update."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.entries = {}  # id(block) -> {"a", "g", "curvature": [...]}
        self.counter = None  # factor updates so far (drives bias correction and the cadence)
        self.pending = []  # saved factor values awaiting registration (see KFAC.load_own_variables)

    def create(self, blocks):
        """Create the factor variables of every block in ``blocks`` that has none yet."""
        missing = [b for b in blocks if id(b) not in self.entries]
        if not missing:
            return
        add = self.optimizer.add_state
        if self.counter is None:
            self.counter = add("kfac_factor_updates", (), dtype="int32")
        created = [self.counter] if not self.entries else []
        for block in missing:
            prefix = f"kfac_{state_name(block.name)}"
            a_layout, g_layout = _layout(block, "left"), _layout(block, "right")
            entry = {
                "a": add(f"{prefix}_a_factor", block.a_shape, layout=a_layout),
                "g": add(f"{prefix}_g_factor", block.g_shape, layout=g_layout),
            }
            damping = self.optimizer.damping_type
            shapes = kmath.curvature_shapes(
                block.input_dim,
                block.output_dim,
                damping,
                diagonal_input=block.diagonal_input,
                diagonal_output=block.diagonal_output,
            )
            layouts = _curvature_layouts(block, shapes, damping, a_layout, g_layout)
            entry["curvature"] = [
                add(f"{prefix}_curvature_{i}", shape, layout=layout)
                for i, (shape, layout) in enumerate(zip(shapes, layouts, strict=True))
            ]
            sums = []
            if self.optimizer.gradient_accumulation_steps:
                # The cycle's statistics so far (_kfac_accumulation).
                entry["a_sum"] = add(f"{prefix}_a_statistic_sum", block.a_shape, layout=a_layout)
                entry["g_sum"] = add(f"{prefix}_g_statistic_sum", block.g_shape, layout=g_layout)
                sums = [entry["a_sum"], entry["g_sum"]]
            self.entries[id(block)] = entry
            created += [entry["a"], entry["g"], *entry["curvature"], *sums]
        self._take_pending(created)

    def _take_pending(self, created):
        """Assign factor values loaded before registration to the factors just ``created``."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        if len(pending) != len(created) or any(
            tuple(p.shape) != tuple(v.shape) for p, v in zip(pending, created, strict=True)
        ):
            warnings.warn(
                f"KFAC: the loaded factor state ({len(pending)} arrays) does not fit the "
                f"registered layers ({len(created)} variables); the factors start afresh.",
                stacklevel=4,
            )
            return
        for value, variable in zip(pending, created, strict=True):
            variable.assign(value)

    def update(self, blocks, received, *, count, loss_scale, damping, sampled=None, update=None):
        """Fold this step's statistics into the factors; refresh the curvature on the cadence.

        ``received``: ``{id(variable): gradient}``, the channels' gradients
        among them. ``damping``: ``λ`` (a float, or the adaptive step's
        variable). ``sampled``: ``None``, or ``(due, {id(block): Ĝ})``, the
        sampled Fisher's statistics of the blocks it covers, folded in only
        where ``due`` (every ``sample_every`` steps, with the decay
        ``β^sample_every`` and its own bias correction). ``update``: ``None``,
        or under gradient accumulation whether this micro-batch ends the
        cycle (a boolean tensor): the statistics are summed over the cycle
        and their mean folded in at its end only (``_kfac_accumulation``).
        Returns ``{id(block): curvature tensors}`` for this step.
        """
        optimizer = self.optimizer
        due, fresh = sampled if sampled is not None else (None, {})
        a_stats = [ops.cast(received[id(b.input_channel)], "float32") for b in blocks]
        g_stats = [
            fresh[id(b)] if id(b) in fresh else ops.cast(received[id(b.output_channel)], "float32")
            for b in blocks
        ]
        reduced = replicas.all_reduce(a_stats + g_stats, "mean")
        a_stats, g_stats = reduced[: len(a_stats)], reduced[len(a_stats) :]
        decay = optimizer.statistics_decay
        updates = ops.convert_to_tensor(self.counter)
        entries = [self.entries[id(b)] for b in blocks]
        every_g = optimizer.sample_every if fresh else 1
        g_decay = decay**every_g
        for block, entry, a_stat, g_stat in zip(blocks, entries, a_stats, g_stats, strict=True):
            if id(block) in fresh:
                # The sampled pass's own objective: no replica or loss scaling to undo.
                old = ops.convert_to_tensor(entry["g"])
                g = ops.where(due, g_decay * old + (1.0 - g_decay) * g_stat, old)
                a = decay * ops.convert_to_tensor(entry["a"]) + (1.0 - decay) * a_stat
                optimizer.assign(entry["a"], a)
                optimizer.assign(entry["g"], g)
                continue
            if block.output_fisher == "empirical":
                # The loss is scaled by 1/replicas under a strategy (and by the
                # loss scale under mixed_float16): undo both, squared.
                g_stat = g_stat * float(count * count)
                if loss_scale is not None:
                    g_stat = g_stat / ops.square(loss_scale)
            if update is not None:
                a_stat = accumulation.mean_of_cycle(optimizer, entry["a_sum"], a_stat, update)
                g_stat = accumulation.mean_of_cycle(optimizer, entry["g_sum"], g_stat, update)
            a = decay * ops.convert_to_tensor(entry["a"]) + (1.0 - decay) * a_stat
            g = decay * ops.convert_to_tensor(entry["g"]) + (1.0 - decay) * g_stat
            if update is not None:
                a = accumulation.keep_unless(update, a, entry["a"])
                g = accumulation.keep_unless(update, g, entry["g"])
            optimizer.assign(entry["a"], a)
            optimizer.assign(entry["g"], g)

        kept = [v for entry in entries for v in entry["curvature"]]
        shapes = [tuple(v.shape) for v in kept]

        # One flat tensor out of the cond: TensorFlow's graph-mode cond (without
        # XLA) mis-wires the train function's outputs when it returns a list.
        def flat(tensors):
            return ops.concatenate([ops.reshape(t, (-1,)) for t in tensors], axis=0)

        def keep():
            return flat([ops.convert_to_tensor(v) for v in kept])

        def refresh():
            # The factors are read from their variables inside the branch (the
            # assignments above come first): a branch that captures tensors
            # computed outside it breaks TensorFlow's graph-mode train function.
            counter = ops.cast(ops.convert_to_tensor(self.counter) + 1, "float32")
            fix = 1.0 - ops.power(decay, counter)
            # The sampled G's updates so far: steps 1, 1 + k, 1 + 2k, ... up to this one.
            g_updates = ops.floor((counter - 1.0) / every_g) + 1.0
            g_fix = 1.0 - ops.power(g_decay, g_updates)
            # λ read inside the branch too (the adaptive step's is a variable).
            lam = damping if isinstance(damping, float) else ops.convert_to_tensor(damping)
            result = []
            for block, entry in zip(blocks, entries, strict=True):
                a = ops.convert_to_tensor(entry["a"]) / fix
                g = ops.convert_to_tensor(entry["g"]) / (g_fix if id(block) in fresh else fix)
                result += kmath.curvature(a, g, damping=lam, damping_type=optimizer.damping_type)
            return flat(result)

        due = every(updates + 1, optimizer.refresh_every)
        if update is not None:
            due = ops.logical_and(update, due)
        packed = optimizer.periodic(due, refresh, keep, refresh=True)
        if update is not None:  # (a forced refresh computes between updates too)
            packed = ops.where(update, packed, keep())
        values, start = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            values.append(ops.reshape(packed[start : start + size], shape))
            start += size
        result, position = {}, 0
        for block, entry in zip(blocks, entries, strict=True):
            taken = values[position : position + len(entry["curvature"])]
            position += len(entry["curvature"])
            for variable, value in zip(entry["curvature"], taken, strict=True):
                optimizer.assign(variable, value)
            result[id(block)] = taken
        step = 1 if update is None else ops.cast(update, "int32")
        optimizer.assign(self.counter, updates + step)
        return result

    def directions(self, blocks, grads, variables, curvature, *, damping):
        """``grads`` with each block's kernel and bias gradients preconditioned (the rest as is)."""
        directions = list(grads)
        index = {id(v): i for i, v in enumerate(variables)}
        for block in blocks:
            k, b = index[id(block.kernel)], index.get(id(block.bias))
            matrix = block.gradient_matrix(grads[k], None if b is None else grads[b])
            kernel, bias = block.split(
                kmath.precondition(
                    matrix,
                    curvature[id(block)],
                    damping=damping,
                    damping_type=self.optimizer.damping_type,
                )
            )
            directions[k] = kernel
            if b is not None:
                directions[b] = bias
        return directions


def _layout(block, side):
    """Where ``block``'s ``A`` (``"left"``) or ``G`` (``"right"``) factor goes under
    ``keras.distribution`` (JAX): split like its kernel's input or output side
    (``_state_layout.block_layout``), or whole where its size divides by no axis
    of the kernel (``d_in + 1`` with a bias often does not); ``None`` without one.
    A normalization's ``[γ, β]`` row (``diagonal_output``) follows its scale ``γ``.
    """
    shape = block.a_shape if side == "left" else block.g_shape
    order = None if block.diagonal_output else block.kernel_order
    axes = 1 if block.diagonal_output else block.output_axes
    return _state_layout.block_layout(
        block.kernel, side, shape, kernel_order=order, output_axes=axes
    )


def _curvature_layouts(block, shapes, damping_type, a_layout, g_layout):
    """The layouts of ``block``'s curvature tensors (``_kfac_math.curvature_shapes``: ``A``'s
    part first, one tensor or, for the eigenbasis of a matrix, two): those shaped like
    their side's factor (inverses, eigenbases, a diagonal's inverse) take its layout;
    the eigenvalue vectors of a matrix factor stay whole (``n`` floats)."""
    a_count = 2 if damping_type == "eigen" and not block.diagonal_input else 1
    layouts = []
    for i, shape in enumerate(shapes):
        factor, layout = (block.a_shape, a_layout) if i < a_count else (block.g_shape, g_layout)
        layouts.append(layout if tuple(shape) == tuple(factor) else None)
    return layouts
