"""What a sharding layout does to each variable: its mesh axes, its bytes, and why.

A variable of shape ``s`` and ``b`` bytes placed with mesh axes ``axes``
(one entry per dimension, a mesh axis name or ``None``) holds

    bytes_per_device = b / prod(size(axis) for axis in axes if axis)

on each device. A variable is *shardable* when it has two or more dimensions
(kernels, embeddings, attention projections) and one of them divides evenly
over some mesh axis of size > 1: vectors (biases, normalization scales,
counters) are small by kind and always replicated. The *replicated fraction*
is the share of shardable bytes placed on no mesh axis at all.

This module only describes a layout; ``planning.py`` makes one and
``guards.py`` checks one.
"""

import dataclasses
import math
import re


def dtype_bytes(dtype):
    """Bytes per entry of a dtype name (``"float32"`` → 4, ``"bfloat16"`` → 2, ``"bool"`` → 1)."""
    bits = re.search(r"(\d+)$", str(dtype))
    return max(1, int(bits.group(1)) // 8) if bits else 1


def shard_count(axes, axis_sizes):
    """How many pieces ``axes`` cuts a variable into on a mesh with ``axis_sizes``."""
    return math.prod(axis_sizes[axis] for axis in axes if axis is not None)


def is_shardable(shape, axis_sizes):
    """Two or more dimensions, one of them divisible by a mesh axis of size > 1."""
    sizes = [n for n in axis_sizes.values() if n > 1]
    return len(shape) >= 2 and any(dim % n == 0 for dim in shape for n in sizes)


@dataclasses.dataclass(frozen=True)
class VariablePlan:
    """One variable of a ``LayoutReport``: where it goes, what it costs and why.

    Attributes:
        path: The variable's path (the ``LayoutMap`` key is its escaped form).
        shape: Its shape, a tuple of ints.
        axes: Mesh axis per dimension (``None``: not split along it).
        bytes: Its total bytes.
        bytes_per_device: Its bytes on each device under ``axes``.
        reason: Why it is placed so (the rule, or the fallback taken).
        fallback: Whether a rule could not be applied as intended (a size
            not divisible by the mesh axis, a layer type with no rule).
    """

    path: str
    shape: tuple
    axes: tuple
    bytes: int
    bytes_per_device: float
    reason: str
    fallback: bool = False

    @property
    def replicated(self):
        """Placed on no mesh axis: a whole copy on every device."""
        return all(axis is None for axis in self.axes)


@dataclasses.dataclass(frozen=True)
class LayoutReport:
    """The plan behind a ``LayoutMap``: every variable's axes, bytes and reason.

    Returned by ``plan_layout`` next to its ``LayoutMap``; read it, print it
    (one line per variable) or check a figure such as ``replicated_fraction``.

    Attributes:
        strategy: The strategy planned (``"dp"``, ``"zero1"``, ``"fsdp"``, ``"tp"``,
            ``"fsdp_tp"``).
        axis_sizes: ``{mesh axis name: size}``.
        variables: A tuple of ``VariablePlan``, in the model's variable order.
        activations: A tuple of ``(layout map key, axes)`` of the layer
            outputs split on the sequence (``sequence_axis``; empty
            without sequence parallelism).
        optimizer_state: A tuple of ``VariablePlan`` of the optimizer's
            variables when ``plan_layout`` was given one (else empty).
    """

    strategy: str
    axis_sizes: dict
    variables: tuple
    activations: tuple = ()
    optimizer_state: tuple = ()

    @property
    def optimizer_bytes_per_device(self):
        """Bytes of the optimizer's variables on each device (0 without ``optimizer_state``)."""
        return sum(plan.bytes_per_device for plan in self.optimizer_state)

    @property
    def bytes(self):
        """Total bytes of the model's variables."""
        return sum(plan.bytes for plan in self.variables)

    @property
    def bytes_per_device(self):
        """Bytes of the model's variables on each device."""
        return sum(plan.bytes_per_device for plan in self.variables)

    @property
    def shardable_bytes(self):
        """Bytes of the shardable variables (see the module docstring)."""
        return sum(p.bytes for p in self.variables if is_shardable(p.shape, self.axis_sizes))

    @property
    def replicated_fraction(self):
        """Share of the shardable bytes left whole on every device (0 if none is shardable)."""
        total = self.shardable_bytes
        replicated = sum(
            p.bytes
            for p in self.variables
            if p.replicated and is_shardable(p.shape, self.axis_sizes)
        )
        return replicated / total if total else 0.0

    @property
    def fallbacks(self):
        """The variables whose rule could not be applied as intended, with the reason."""
        return tuple(plan for plan in self.variables if plan.fallback)

    def __str__(self):
        width = max((len(plan.path) for plan in self.variables), default=4)
        lines = [
            f"strategy {self.strategy!r} on mesh {self.axis_sizes}: "
            f"{self.bytes_per_device:.0f} of {self.bytes} bytes per device, "
            f"replicated fraction {self.replicated_fraction:.3f}"
        ]
        for plan in self.variables:
            mark = " (fallback)" if plan.fallback else ""
            lines.append(
                f"{plan.path:<{width}}  {str(plan.shape):<16} {str(plan.axes):<24} "
                f"{plan.bytes_per_device:>10.0f} B  {plan.reason}{mark}"
            )
        for key, axes in self.activations:
            lines.append(f"{key:<{width}}  {'':<16} {str(axes):<24} sequence-parallel activation")
        if self.optimizer_state:
            lines.append(f"optimizer state: {self.optimizer_bytes_per_device:.0f} bytes per device")
            for plan in self.optimizer_state:
                mark = " (fallback)" if plan.fallback else ""
                lines.append(
                    f"{plan.path}  {str(plan.shape)} {str(plan.axes)} "
                    f"{plan.bytes_per_device:.0f} B  {plan.reason}{mark}"
                )
        return "\n".join(lines)
