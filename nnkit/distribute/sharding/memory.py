"""``estimate_memory``: per-device bytes of a sharded training step, before anything is allocated.

The model is built, compiled and its optimizer built on shapes only
(``nnkit/_keras/aot.py``), every variable given the layout the distribution
would give it, and Keras's own JAX train step is compiled ahead of time on
``jax.ShapeDtypeStruct``s carrying those shardings. XLA's
``memory_analysis()`` of that compile is the real compile's: per device,

    peak = arguments + outputs − aliased + temporaries

where the arguments are the state (parameters, optimizer state, metrics) and
the batch, the outputs the new state and the logs, *aliased* the state
buffers donated and reused for the new state, and *temporaries* the
activations, gradients and workspace of the step. Host memory stays small:
nothing of the model's size is allocated, on the host or on the devices.
"""

import dataclasses

import keras

from nnkit import _validation as v
from nnkit._keras import aot
from nnkit.distribute.model_parallelism import _require_jax
from nnkit.distribute.sharding import optimizer_state
from nnkit.distribute.sharding.report import dtype_bytes


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Per-device bytes of one training step, from an ahead-of-time compile.

    Attributes:
        parameter_bytes: The model's variables (trainable and not) on one device.
        optimizer_bytes: The optimizer's variables (slots, counters) on one device.
        argument_bytes: XLA's argument size (state and batch) per device.
        output_bytes: XLA's output size (new state and logs) per device.
        alias_bytes: Output bytes that reuse donated argument buffers.
        temporary_bytes: XLA's temporaries (activations, gradients, workspace).
    """

    parameter_bytes: int
    optimizer_bytes: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temporary_bytes: int

    @property
    def peak_bytes(self):
        """``arguments + outputs − aliased + temporaries``: the step's peak per device."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temporary_bytes

    @classmethod
    def from_compiled(cls, compiled, parameter_bytes, optimizer_bytes):
        stats = compiled.memory_analysis()
        return cls(
            parameter_bytes=int(parameter_bytes),
            optimizer_bytes=int(optimizer_bytes),
            argument_bytes=int(stats.argument_size_in_bytes),
            output_bytes=int(stats.output_size_in_bytes),
            alias_bytes=int(stats.alias_size_in_bytes),
            temporary_bytes=int(stats.temp_size_in_bytes),
        )


def shard_bytes(struct):
    """Bytes of one device's shard of an array or ``jax.ShapeDtypeStruct`` with a sharding."""
    size = dtype_bytes(struct.dtype)
    for n in struct.sharding.shard_shape(tuple(struct.shape)):
        size *= n
    return size


def _struct(shape, dtype, sharding):
    """A ``jax.ShapeDtypeStruct`` in the dtype JAX would hold (int64 is int32 without x64)."""
    import jax

    dtype = jax.dtypes.canonicalize_dtype(keras.backend.standardize_dtype(dtype))
    return jax.ShapeDtypeStruct(tuple(int(n) for n in shape), dtype, sharding=sharding)


def _check_batch(batch):
    ok = isinstance(batch, (tuple, list)) and len(batch) == 2
    ok = ok and all(hasattr(x, "shape") and hasattr(x, "dtype") for x in batch)
    if not ok:
        raise TypeError(
            "`batch` must be a pair (x, y) of objects with a shape and a dtype (numpy "
            f"arrays, jax.ShapeDtypeStruct, keras.KerasTensor). Received: batch={batch!r}"
        )
    return tuple(batch)


def estimate_memory(
    build_fn,
    layout_map,
    batch,
    *,
    optimizer="adam",
    loss="mse",
    batch_axis="batch",
    sequence_axis=None,
):
    """Estimate the per-device memory of a sharded training step without allocating the model.

    Use it before launching a large model to see whether a layout (from
    ``plan_layout`` or your own ``LayoutMap``) fits the devices: it builds the
    model on shapes only and compiles Keras's JAX train step ahead of time,
    so it costs seconds and little host memory whatever the model's size. The
    figures are XLA's ``memory_analysis()`` of that compile, equal to the real
    compile's on the same configuration; per device
    ``peak = arguments + outputs − aliased + temporaries``.

    Args:
        build_fn: A function with no arguments returning the (built)
            ``keras.Model``; called once, inside the distribution's scope
            and a ``keras.StatelessScope``. Required.
        layout_map: A ``keras.distribution.LayoutMap`` (an empty one is data
            parallelism over its mesh; ``plan_layout``'s ``"zero1"`` map also
            splits the optimizer state over the data axis). Required.
        batch: ``(x, y)``, one global batch as objects with a ``shape`` and a
            ``dtype`` (numpy arrays, ``jax.ShapeDtypeStruct``). Required.
        optimizer: A Keras optimizer or its name; an instance is copied from
            its config, never built. Defaults to ``"adam"``.
        loss: The loss, as for ``model.compile``. Defaults to ``"mse"``.
        batch_axis: The mesh axis that splits the batch. Defaults to ``"batch"``.
        sequence_axis: The mesh axis that splits the inputs' sequence
            (dimension 1) under sequence parallelism (``model_parallel``'s),
            or ``None``. Defaults to ``None``.

    Returns:
        A ``MemoryEstimate``: per-device parameter, optimizer-state,
        argument, output, aliased, temporary and peak bytes.

    Raises:
        ValueError: If the Keras backend is not JAX, or ``batch_axis`` or
            ``sequence_axis`` is not an axis of the layout map's mesh.
        TypeError: If ``build_fn`` is not callable or does not return a
            ``keras.Model``, or another argument has the wrong type.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.distribute import device_mesh, estimate_memory, plan_layout
    >>> def build():
    ...     return keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, name="up"),
    ...                              keras.layers.Dense(16, name="down")], name="mlp")
    >>> mesh = device_mesh(1, devices=[f"cpu:{i}" for i in range(8)])  # FSDP over 8
    >>> layout_map, _ = plan_layout(build(), mesh, "fsdp")  # JAX backend only  # doctest: +SKIP
    >>> batch = (np.zeros((32, 16), "float32"), np.zeros((32, 16), "float32"))
    >>> estimate = estimate_memory(build, layout_map, batch)  # doctest: +SKIP
    >>> estimate.parameter_bytes  # 4 · (2 · 16 · 64 / 8 + 64 + 16)  # doctest: +SKIP
    1344
    >>> estimate.optimizer_bytes  # Adam's two slots, its step and rate  # doctest: +SKIP
    2696
    """
    _require_jax("estimate_memory()")
    compiled, parameters, optimizer_bytes = compile_step(
        build_fn,
        layout_map,
        batch,
        optimizer=optimizer,
        loss=loss,
        batch_axis=batch_axis,
        sequence_axis=sequence_axis,
    )
    return MemoryEstimate.from_compiled(compiled, parameters, optimizer_bytes)


def check_step_arguments(build_fn, layout_map, batch, optimizer, loss):
    """Validate ``estimate_memory``'s arguments; return ``(layout_map, batch)``."""
    if not callable(build_fn):
        raise TypeError(
            f"`build_fn` must be a function returning a keras.Model. Received: build_fn={build_fn!r}"
        )
    layout_map = v.check_instance(
        "layout_map", layout_map, keras.distribution.LayoutMap, "a keras.distribution.LayoutMap"
    )
    batch = _check_batch(batch)
    if not isinstance(optimizer, (keras.optimizers.Optimizer, str)):
        raise TypeError(
            "`optimizer` must be a Keras optimizer or its name, such as 'adam'. "
            f"Received: optimizer={optimizer!r}"
        )
    if isinstance(loss, str):
        try:
            keras.losses.get(loss)
        except ValueError:
            raise ValueError(
                f"`loss` must be a Keras loss or its name, such as 'mse'. Received: loss={loss!r}"
            ) from None
    elif not callable(loss):
        raise TypeError(
            f"`loss` must be a Keras loss, a function or a loss name. Received: loss={loss!r}"
        )
    return layout_map, batch


def compile_step(build_fn, layout_map, batch, *, optimizer, loss, batch_axis, sequence_axis=None):
    """``(compiled train step, parameter bytes, optimizer bytes)`` per device, on shapes only.

    The ahead-of-time compile behind ``estimate_memory``; ``choose_layout``
    reads both the memory and the collectives (``collectives.py``) from it.
    """
    layout_map, batch = check_step_arguments(build_fn, layout_map, batch, optimizer, loss)
    from nnkit.distribute.model_parallelism import model_parallel

    distribution = model_parallel(layout_map, batch_axis=batch_axis, sequence_axis=sequence_axis)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        optimizer = keras.optimizers.serialize(optimizer)
    with distribution.scope():
        try:
            optimizer = keras.optimizers.get(optimizer)
        except ValueError as error:
            raise ValueError(
                f"`optimizer` must be a Keras optimizer or its name. Received: "
                f"optimizer={optimizer!r} ({error})"
            ) from None

    def checked_build():
        model = build_fn()
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"`build_fn` must return a keras.Model. Received: build_fn() returning "
                f"{type(model).__name__}"
            )
        return model

    model = aot.abstract_model(checked_build, distribution, optimizer, loss)
    axis = optimizer_state.optimizer_axis(layout_map)
    if axis is not None:  # ZeRO-1: the state split over the data axis
        optimizer_state.place_zero1(model.optimizer, layout_map.device_mesh, axis)
    state = tuple(
        [_struct(x.shape, x.dtype, aot.variable_sharding(x)) for x in group]
        for group in aot.state_groups(model)
    )
    data = tuple(
        _struct(x.shape, x.dtype, distribution.get_data_layout(tuple(x.shape)).backend_layout)
        for x in batch
    )
    compiled = aot.compile_train_step(model, state, data, distribution)
    parameters = sum(shard_bytes(s) for s in state[0] + state[1])
    return compiled, parameters, sum(shard_bytes(s) for s in state[2])
