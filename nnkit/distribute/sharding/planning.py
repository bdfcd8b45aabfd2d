"""``plan_layout``: a ``keras.distribution.LayoutMap`` for any Keras model, from layer types and shapes.

Strategies over a mesh with a data axis (``batch_axis``, size ``B``) and a
model axis (``model_axis``, size ``M``):

- ``"dp"``: every variable replicated; each device holds all
  ``P`` parameter bytes (and all optimizer state).
- ``"zero1"``: the weights replicated as in ``"dp"``, the optimizer state
  split over the data axis (ZeRO-1, ``optimizer_state.py``): ``P + S / B``
  per device for ``S`` optimizer-state bytes.
- ``"fsdp"``: every variable of two or more dimensions split on the data
  axis along its largest dimension divisible by ``B``: about ``P / B`` per
  device; XLA gathers each weight where it is used (ZeRO-3 / FSDP).
- ``"tp"``: Megatron tensor parallelism on the model axis (``rules.py``):
  about ``P / M`` per device, one all-reduce per column/row pair.
- ``"fsdp_tp"``: both: the model-axis rules first, then the data axis on
  a remaining dimension: about ``P / (B·M)`` per device.

Vectors (biases, normalization scales) stay replicated. Optimizer slots take
their weight's layout (Keras copies it), so they shrink with the weights,
except under ``"zero1"``, whose layout map carries the data axis for
``shard_optimizer_state`` and ``estimate_memory``.
The keys are the variables' escaped paths, full-match regular expressions as
``LayoutMap`` requires since Keras 3.14, one per variable not replicated;
check the result on the built model with ``check_layout``.

With ``sequence_axis`` the plan also splits activations along the sequence
(``sequence.py``): keys ``"<layer path>/output"`` for the layer outputs, and
``model_parallel(layout_map, sequence_axis=...)`` splits the inputs.
"""

import dataclasses
import re

import keras

from nnkit import _validation as v
from nnkit._keras import aot
from nnkit._keras.layers import walk
from nnkit.distribute.model_parallelism import (
    _check_axis,
    _check_mesh,
    _check_sequence_axis,
    _require_jax,
)
from nnkit.distribute.sharding import optimizer_state, rules, sequence
from nnkit.distribute.sharding.report import (
    LayoutReport,
    VariablePlan,
    dtype_bytes,
    shard_count,
)

STRATEGIES = ("dp", "zero1", "fsdp", "tp", "fsdp_tp")


def _add_data_axis(shape, axes, axis, parts):
    """Split the largest free dimension divisible by ``parts`` on ``axis`` (FSDP)."""
    free = [d for d in range(len(shape)) if axes[d] is None and shape[d] % parts == 0]
    if not free:
        return axes, False
    dim = max(free, key=lambda d: (shape[d], -d))
    return tuple(axis if d == dim else a for d, a in enumerate(axes)), True


def plan(
    model, axis_sizes, strategy, *, batch_axis="batch", model_axis="model", sequence_axis=None
):
    """The ``LayoutReport`` of ``strategy`` for ``model`` on a mesh of ``axis_sizes`` (any backend)."""
    variables = list(model.variables)
    placed = {id(variable): None for variable in variables}
    if strategy in ("tp", "fsdp_tp"):
        pairing = rules.Pairing()
        parts = axis_sizes[model_axis]
        for layer in walk(model, include_self=False):
            decided = rules.tensor_parallel(layer, parts, model_axis, pairing)
            for key, value in decided.items():
                if key in placed and placed[key] is None:
                    placed[key] = value
    plans = []
    for variable in variables:
        shape = tuple(int(n) for n in variable.shape)
        decided = placed[id(variable)]
        if strategy == "dp":
            decided = ((None,) * len(shape), "data parallel: replicated", False)
        elif strategy == "zero1":
            note = f"ZeRO-1: replicated (its optimizer state split on {batch_axis!r})"
            decided = ((None,) * len(shape), note, False)
        elif len(shape) < 2:
            decided = ((None,) * len(shape), "vector (bias, scale, counter): replicated", False)
        elif decided is None and strategy in ("tp", "fsdp_tp"):
            decided = ((None,) * len(shape), "no tensor-parallel rule: replicated", True)
        elif decided is None:
            decided = ((None,) * len(shape), "", False)
        axes, reason, fallback = decided
        if strategy in ("fsdp", "fsdp_tp") and len(shape) >= 2:
            parts = axis_sizes[batch_axis]
            axes, split = _add_data_axis(shape, axes, batch_axis, parts)
            if split:
                reason = f"{reason} + FSDP" if reason else "FSDP: largest divisible dimension"
            elif parts > 1:
                note = f"no free dimension divisible by {parts} for FSDP"
                reason = f"{reason}; {note}" if reason else f"{note}; replicated"
                fallback = True
        size = dtype_bytes(variable.dtype)
        for n in shape:
            size *= n
        plans.append(
            VariablePlan(
                path=variable.path,
                shape=shape,
                axes=tuple(axes),
                bytes=size,
                bytes_per_device=size / shard_count(axes, axis_sizes),
                reason=reason,
                fallback=fallback,
            )
        )
    activations = ()
    if sequence_axis is not None:
        placed = sequence.activation_layouts(
            model,
            axis_sizes,
            {p.path: p for p in plans},
            batch_axis=batch_axis,
            sequence_axis=sequence_axis,
            tp_axis=model_axis if strategy in ("tp", "fsdp_tp") else None,
        )
        activations = tuple((key, axes) for key, (axes, _) in placed.items())
    return LayoutReport(
        strategy=strategy,
        axis_sizes=dict(axis_sizes),
        variables=tuple(plans),
        activations=activations,
    )


def plan_layout(
    model,
    mesh,
    strategy,
    *,
    batch_axis="batch",
    model_axis="model",
    sequence_axis=None,
    optimizer=None,
):
    """Plan a ``keras.distribution.LayoutMap`` for any built Keras model (JAX backend).

    Use it to train a model whose parameters and optimizer state do not fit
    one device (``"fsdp"``, ``"tp"``, ``"fsdp_tp"``), or to see what data
    parallelism (``"dp"``) costs per device. The plan works from layer types
    and shapes, not names: Megatron column/row pairs for consecutive
    ``Dense``/``EinsumDense`` layers, attention heads on the model axis with a
    row-parallel output projection, a vocabulary-parallel ``Embedding``,
    ``Conv`` kernels on their output channels, vectors replicated, and for
    FSDP the largest remaining dimension divisible by the data axis. Sizes
    that do not divide fall back to another dimension or to replication and
    are listed in ``report.fallbacks``. Per device a variable of ``b`` bytes
    holds ``b / prod(size of each mesh axis it is split on)``.

    Plan from the model (or from its building function, to allocate
    nothing), then build it again (same layer names) inside
    ``model_parallel(layout_map).scope()`` and confirm with ``check_layout``.

    ``"zero1"`` (ZeRO-1) keeps every weight whole and splits the optimizer
    state over the data axis: a ``LayoutMap`` cannot say so, so the map it
    returns carries the axis; hand the optimizer to
    ``shard_optimizer_state(optimizer, layout_map)`` and pass the map to
    ``estimate_memory``. Given an ``optimizer``, the report also lists where
    each of its variables goes and why (``report.optimizer_state``): under
    the other strategies each follows its weight, and nnkit's ``Shampoo``
    and ``SOAP`` split their Kronecker factors on their weight's mesh axes.

    For long inputs, ``sequence_axis`` adds sequence parallelism: the
    outputs of the layers (of three or more dimensions, sequence divisible)
    are split on it along dimension 1, except those the tensor-parallel
    rules already split on it (column-parallel layers when it is the model
    axis). Pass the same ``sequence_axis`` to ``model_parallel`` (and
    ``estimate_memory``), which splits the inputs' dimension 1 too. Per
    device, an activation with a sequence holds ``1 / (B·S)`` of it instead
    of ``1 / B``.

    Args:
        model: A built ``keras.Model`` (its variables exist), or a function
            with no arguments returning one, which is then built on shapes
            only (nothing allocated: plan a model too large for the host).
            Required.
        mesh: A ``keras.distribution.DeviceMesh`` (e.g. from ``device_mesh``).
            Required.
        strategy: ``"dp"``, ``"zero1"``, ``"fsdp"``, ``"tp"`` or
            ``"fsdp_tp"``. Required.
        batch_axis: The mesh's data axis (``"dp"``, ``"zero1"``, ``"fsdp"``,
            ``"fsdp_tp"``). Defaults to ``"batch"``.
        model_axis: The mesh's model axis (``"tp"``, ``"fsdp_tp"``).
            Defaults to ``"model"``.
        sequence_axis: A mesh axis (other than ``batch_axis``) to split
            activations along the sequence (dimension 1), usually the model
            axis (Megatron-LM's sequence parallelism), or ``None`` for none.
            Defaults to ``None``.
        optimizer: A Keras optimizer (or its name) whose variables the report
            places, built on shapes only; ``None`` for none. Defaults to
            ``None``.

    Returns:
        ``(layout_map, report)``: a ``keras.distribution.LayoutMap`` with one
        full-match key per variable not replicated (and, with
        ``sequence_axis``, one ``"<layer path>/output"`` key per activation
        split), and a ``LayoutReport`` (per variable its axes, bytes, bytes
        per device and reason; the replicated fraction; the fallbacks; the
        activations; with ``optimizer``, the same for its variables in
        ``report.optimizer_state``).

    Raises:
        ValueError: If the Keras backend is not JAX, the model has no
            variables (not built), ``strategy`` is unknown, an axis the
            strategy needs is not in the mesh, or ``sequence_axis`` is not
            in the mesh or equals ``batch_axis``.
        TypeError: If an argument has the wrong type.

    Example:
    >>> import keras
    >>> from nnkit.distribute import device_mesh, plan_layout
    >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, name="up"),
    ...                           keras.layers.Dense(16, name="down")], name="mlp")
    >>> mesh = device_mesh(4, devices=[f"cpu:{i}" for i in range(4)])
    >>> layout_map, report = plan_layout(model, mesh, "tp")  # JAX backend only  # doctest: +SKIP
    >>> {key: layout.axes for key, layout in layout_map.items()}  # doctest: +SKIP
    {'mlp/up/kernel': (None, 'model'), 'mlp/down/kernel': ('model', None)}
    >>> [plan.reason for plan in report.variables][::2]  # the kernels  # doctest: +SKIP
    ['Dense column-parallel', 'Dense row-parallel']
    >>> round(report.bytes_per_device / report.bytes, 3)  # biases replicated  # doctest: +SKIP
    0.278
    >>> layout_map, report = plan_layout(model, mesh, "tp", sequence_axis="model")  # doctest: +SKIP
    >>> report.activations  # no sequence dimension in (batch, 16): nothing  # doctest: +SKIP
    ()

    References:
        Shoeybi et al., 2019, Megatron-LM: Training Multi-Billion Parameter
        Language Models Using Model Parallelism (arXiv:1909.08053).
        Rajbhandari et al., 2020, ZeRO: Memory Optimizations Toward Training
        Trillion Parameter Models (arXiv:1910.02054).
        Korthikanti et al., 2022, Reducing Activation Recomputation in Large
        Transformer Models (arXiv:2205.05198).
    """
    _require_jax("plan_layout()")
    build_fn = model if callable(model) and not isinstance(model, keras.Model) else None
    if build_fn is None:
        v.check_instance("model", model, keras.Model, "a keras.Model or a function returning one")
    mesh = _check_mesh("mesh", mesh)
    strategy = v.check_one_of("strategy", strategy, STRATEGIES)
    needs = {"dp": ("batch_axis",), "zero1": ("batch_axis",), "fsdp": ("batch_axis",)}
    needs["tp"] = ("model_axis",)
    needs = needs.get(strategy, ("batch_axis", "model_axis"))
    names = {"batch_axis": batch_axis, "model_axis": model_axis}
    for name in ("batch_axis", "model_axis"):
        v.check_str(name, names[name])
    for name in needs:
        _check_axis(name, names[name], mesh)
    if sequence_axis is not None:
        _check_sequence_axis(sequence_axis, batch_axis, mesh)
    if optimizer is not None and not isinstance(optimizer, (str, keras.optimizers.Optimizer)):
        raise TypeError(
            "`optimizer` must be a Keras optimizer, its name or None. "
            f"Received: optimizer={optimizer!r}"
        )
    source = build_fn
    if build_fn is not None:  # validated the rest first: building may be costly
        model = aot.shapes_only(build_fn)
        v.check_instance("model", model, keras.Model, "a keras.Model or a function returning one")
    if not model.variables:
        raise ValueError(
            f"`model` has no variables: build it first (call it on data or give it an "
            f"Input). Received: model={model.name!r}"
        )
    axis_sizes = dict(zip(mesh.axis_names, mesh.shape, strict=True))
    report = plan(
        model,
        axis_sizes,
        strategy,
        batch_axis=batch_axis,
        model_axis=model_axis,
        sequence_axis=sequence_axis,
    )
    if strategy == "zero1":
        layout_map = optimizer_state._OptimizerStateLayoutMap(mesh, batch_axis)
    else:
        layout_map = keras.distribution.LayoutMap(mesh)
    for entry in report.variables:
        if not entry.replicated:
            layout_map[re.escape(entry.path)] = entry.axes
    for key, axes in report.activations:
        layout_map[key] = axes
    if optimizer is not None:
        if source is None:
            built = model

            def source():
                return keras.models.clone_model(built)

        plans = _optimizer_plans(source, layout_map, optimizer, axis_sizes, batch_axis)
        report = dataclasses.replace(report, optimizer_state=plans)
    return layout_map, report


def _optimizer_plans(build_fn, layout_map, optimizer, axis_sizes, batch_axis):
    """The ``VariablePlan`` of every variable of ``optimizer`` built on shapes for the model."""
    from nnkit.distribute.model_parallelism import model_parallel

    distribution = model_parallel(layout_map, batch_axis=batch_axis)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        optimizer = keras.optimizers.serialize(optimizer)
    with distribution.scope():
        optimizer = keras.optimizers.get(optimizer)
    model = aot.abstract_model(build_fn, distribution, optimizer, "mse")
    axis = optimizer_state.optimizer_axis(layout_map)
    if axis is not None:
        optimizer_state.place_zero1(model.optimizer, layout_map.device_mesh, axis)
    return optimizer_state.state_plans(
        model.optimizer, model.trainable_variables, axis_sizes, zero1_axis=axis
    )
