"""Where the optimizer state goes: ZeRO-1 over the data axis, or following the weights.

Under ``"dp"``, ``"fsdp"``, ``"tp"`` and ``"fsdp_tp"`` every optimizer
variable follows its weight: Keras makes each slot with its weight's layout,
and nnkit's ``Shampoo``, ``SOAP`` and ``KFAC`` place their moments like the
weight and their Kronecker factors by ``nnkit.optimizers``' factor rule (a
factor ``n × n`` split on the mesh axes its weight is split on).

``"zero1"`` (ZeRO stage 1, Rajbhandari et al., 2020) keeps the weights whole
on every device and splits *all* the optimizer state over the data axis of
size ``B``: each optimizer variable along its largest dimension divisible by
``B`` (scalars, such as the step counter, stay whole). Per device, for ``P``
parameter bytes and ``S`` optimizer-state bytes,

    state per device ≈ P + S / B        (data parallelism: P + S)

A ``LayoutMap`` cannot say this (Keras's slots copy their weight's layout),
so the layout map ``plan_layout`` returns for ``"zero1"`` carries the data
axis, and ``shard_optimizer_state`` re-places the optimizer's variables when
the optimizer is built (``nnkit/_keras/optimizer_state.py``). XLA then
reduce-scatters each gradient into the state's shards and all-gathers the
update into the whole weights: the numbers are data parallelism's.
"""

import re

import keras

from nnkit import _validation as v
from nnkit._keras import optimizer_state as keras_state
from nnkit.distribute.model_parallelism import _require_jax
from nnkit.distribute.sharding.report import VariablePlan, dtype_bytes, shard_count


class _OptimizerStateLayoutMap(keras.distribution.LayoutMap):
    """A ``LayoutMap`` (of the weights) that also splits the optimizer state over ``optimizer_axis``."""

    def __init__(self, device_mesh, optimizer_axis):
        super().__init__(device_mesh)
        self.optimizer_axis = optimizer_axis


def optimizer_axis(layout_map):
    """The mesh axis a layout map splits the optimizer state over (ZeRO-1), or ``None``."""
    return (
        getattr(layout_map, "optimizer_axis", None)
        if isinstance(layout_map, _OptimizerStateLayoutMap)
        else None
    )


def zero1_axes(shape, axis, parts):
    """``(axes, reason, fallback)`` of an optimizer variable of ``shape`` under ZeRO-1."""
    shape = tuple(int(n) for n in shape)
    if not shape:
        return (), "scalar: replicated", False
    if parts == 1:
        return (None,) * len(shape), f"ZeRO-1: axis {axis!r} has size 1; replicated", False
    free = [d for d in range(len(shape)) if shape[d] % parts == 0]
    if not free:
        return (
            (None,) * len(shape),
            f"ZeRO-1: no dimension divisible by {parts}; replicated",
            True,
        )
    dim = max(free, key=lambda d: (shape[d], -d))
    axes = tuple(axis if d == dim else None for d in range(len(shape)))
    return axes, f"ZeRO-1: dimension {dim} split on {axis!r}", False


def place_zero1(optimizer, mesh, axis):
    """Re-place every variable of a built ``optimizer`` by ``zero1_axes``."""
    parts = dict(zip(mesh.axis_names, mesh.shape, strict=True))[axis]
    for variable in optimizer.variables:
        axes, _, _ = zero1_axes(variable.shape, axis, parts)
        keras_state.place(variable, keras.distribution.TensorLayout(axes, mesh))


def shard_optimizer_state(optimizer, layout_map):
    """Place an optimizer's state as ``layout_map`` says, when the optimizer is built (JAX).

    Use it for ZeRO-1: with the layout map of ``plan_layout(model, mesh,
    "zero1")`` the weights stay whole on every device and every optimizer
    variable (Adam's two slots, any Keras or nnkit optimizer's state) is split
    over the data axis ``B`` along its largest dimension divisible by ``B``,
    so that per device the state costs ``P + S / B`` bytes instead of
    ``P + S`` (``P`` parameter bytes, ``S`` optimizer-state bytes). The
    numbers are data parallelism's: XLA reduce-scatters each gradient into
    the state's shards and all-gathers the update into the weights.

    Call it inside the distribution's scope, on the optimizer you compile the
    model with (before or after ``compile``; ``fit`` builds it). If the
    optimizer is built already, its variables move at once; otherwise they
    are placed right after ``optimizer.build``. With any other layout map
    (``"dp"``, ``"fsdp"``, ``"tp"``, ``"fsdp_tp"``) the optimizer state
    follows the weights already and nothing changes.

    Args:
        optimizer: A ``keras.optimizers.Optimizer`` (Keras's or nnkit's).
            Required.
        layout_map: The ``keras.distribution.LayoutMap`` from
            ``plan_layout``. Required.

    Returns:
        ``optimizer``, to chain into ``model.compile(optimizer=...)``.

    Raises:
        ValueError: If the Keras backend is not JAX.
        TypeError: If an argument has the wrong type.

    Example:
    >>> import keras
    >>> from nnkit.distribute import (device_mesh, model_parallel, plan_layout,
    ...                               shard_optimizer_state)
    >>> def build():
    ...     return keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, name="up")],
    ...                             name="mlp")
    >>> mesh = device_mesh(1, devices=[f"cpu:{i}" for i in range(8)])  # 8 on the data axis
    >>> layout_map, report = plan_layout(build, mesh, "zero1")  # JAX only  # doctest: +SKIP
    >>> with model_parallel(layout_map).scope():  # doctest: +SKIP
    ...     model = build()
    ...     model.compile(optimizer=shard_optimizer_state(keras.optimizers.Adam(), layout_map),
    ...                   loss="mse")
    ...     model.optimizer.build(model.trainable_variables)
    >>> tuple(model.optimizer.variables[2].value.sharding.spec)  # kernel's momentum  # doctest: +SKIP
    (None, 'batch')

    References:
        Rajbhandari et al., 2020, ZeRO: Memory Optimizations Toward Training
        Trillion Parameter Models (arXiv:1910.02054).
    """
    _require_jax("shard_optimizer_state()")
    v.check_instance("optimizer", optimizer, keras.optimizers.Optimizer, "a Keras optimizer")
    v.check_instance(
        "layout_map", layout_map, keras.distribution.LayoutMap, "a keras.distribution.LayoutMap"
    )
    axis = optimizer_axis(layout_map)
    if axis is not None:
        mesh = layout_map.device_mesh
        keras_state.after_build(optimizer, lambda built: place_zero1(built, mesh, axis))
    return optimizer


#: nnkit's Kronecker-factor state: ``<weight>_<side>_<kind>_<i>_<j>`` (Shampoo, SOAP).
_FACTOR = re.compile(r"_(left|right)_(statistic|root|basis)_\d+_\d+$")


def _mangled(path):
    return re.sub(r"\W", "_", path)


def state_plans(optimizer, weights, axis_sizes, zero1_axis=None):
    """``VariablePlan`` of every variable of a built, placed ``optimizer``, with the reason.

    ``weights``: the model's trainable variables, to name the weight each
    optimizer variable belongs to (Keras and nnkit name it after the weight's path).
    """
    named = sorted(
        ((_mangled(w.path), w) for w in weights), key=lambda pair: len(pair[0]), reverse=True
    )
    plans = []
    for variable in optimizer.variables:
        shape = tuple(int(n) for n in variable.shape)
        found = keras_state.layout(variable)
        axes = tuple(found.axes) if found is not None else (None,) * len(shape)
        owner = next((w for name, w in named if name in _mangled(variable.path)), None)
        fallback = False
        if zero1_axis is not None:
            _, reason, fallback = zero1_axes(shape, zero1_axis, axis_sizes[zero1_axis])
        elif not shape:
            reason = "scalar: replicated"
        elif owner is None:
            reason = "no weight of its own: " + ("split" if any(axes) else "replicated")
        elif shape == tuple(owner.shape) and not _FACTOR.search(variable.path):
            reason = f"follows its weight {owner.path}"
        else:
            reason = _factor_reason(owner, shape, axes)
            fallback = not any(axes) and any(
                n % size == 0 for n in shape for size in axis_sizes.values() if size > 1
            )
        size = dtype_bytes(variable.dtype)
        for n in shape:
            size *= n
        plans.append(
            VariablePlan(
                path=variable.path,
                shape=shape,
                axes=axes,
                bytes=size,
                bytes_per_device=size / shard_count(axes, axis_sizes),
                reason=reason,
                fallback=fallback,
            )
        )
    return tuple(plans)


def _factor_reason(owner, shape, axes):
    where = ", ".join(f"dimension {d} on {a!r}" for d, a in enumerate(axes) if a) or "replicated"
    return (
        f"Kronecker factor {shape} of {owner.path}: {where}; gathered whole where it is "
        "eigendecomposed (each refresh), stored split"
    )
