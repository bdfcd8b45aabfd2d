"""Model parallelism for ``nnkit.models.mlp`` on the JAX backend (``keras.distribution``).

``keras.distribution.ModelParallel`` places each variable by looking its path
up in a ``LayoutMap`` whose keys are *full-match* regular expressions: a key
such as ``"dense_a/kernel"`` matches only a variable whose whole path is
exactly that, and a key that matches nothing is silently ignored (the
variable is replicated). This module writes the keys from the MLP's real
variable paths and checks the built model afterwards.

Only the JAX backend implements ``keras.distribution``; on TensorFlow it is
silently ignored, so the functions that turn it on or inspect its result
(``model_parallel``, ``verify_layout``) raise there instead.
"""

import re

import keras

from nnkit import _validation as v
from nnkit._backend import require_backend

#: ``min_size`` default: kernels with at least 2**20 entries (4 MiB in float32) are sharded.
DEFAULT_MIN_SIZE = 2**20


def _require_jax(what):
    require_backend(
        what,
        ("jax",),
        reason="keras.distribution (ModelParallel, LayoutMap) is implemented only there and "
        "is silently ignored on the other backends (on TensorFlow, use data parallelism "
        "with a tf.distribute strategy)",
    )


def _check_mesh(name, value):
    return v.check_instance(
        name, value, keras.distribution.DeviceMesh, "a keras.distribution.DeviceMesh"
    )


def _check_axis(name, value, mesh):
    v.check_str(name, value)
    if value not in mesh.axis_names:
        raise ValueError(
            f"`{name}` must be one of the device mesh's axis names "
            f"{list(mesh.axis_names)}. Received: {name}={value!r}"
        )
    return value


def _check_sequence_axis(sequence_axis, batch_axis, mesh):
    _check_axis("sequence_axis", sequence_axis, mesh)
    if sequence_axis == batch_axis:
        raise ValueError(
            "`sequence_axis` must differ from `batch_axis` (the sequence is split over another "
            f"mesh axis than the batch). Received: sequence_axis={sequence_axis!r}, "
            f"batch_axis={batch_axis!r}"
        )
    return sequence_axis


def device_mesh(model_parallelism=None, *, devices=None, batch_axis="batch", model_axis="model"):
    """A two-axis device mesh ``(batch, model)`` for model parallelism.

    The ``model`` axis is the number of devices each sharded kernel is split
    over; the ``batch`` axis splits each global batch over the
    ``len(devices) // model_parallelism`` groups, as data parallelism would
    (``(1, n)``: pure model parallelism; ``(n, 1)``: pure data parallelism).
    The mesh only describes the devices; nothing is placed until a model is
    built under ``model_parallel``.

    Args:
        model_parallelism: Size of the model axis, an int ``>= 1`` that divides
            the number of devices, or ``None`` for all of them.
            Defaults to ``None``.
        devices: Device names such as ``["cpu:0", "cpu:1"]``, or ``None`` for
            ``keras.distribution.list_devices()`` (the accelerators, else the
            CPU devices). Defaults to ``None``.
        batch_axis: Name of the data-parallel axis. Defaults to ``"batch"``.
        model_axis: Name of the model-parallel axis. Defaults to ``"model"``.

    Returns:
        A ``keras.distribution.DeviceMesh`` of shape
        ``(len(devices) // model_parallelism, model_parallelism)`` with axis
        names ``(batch_axis, model_axis)``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``model_parallelism`` does not divide the number of
            devices, ``devices`` is empty or the axis names are equal.

    Example:
    >>> from nnkit.distribute import device_mesh
    >>> mesh = device_mesh(2, devices=["cpu:0", "cpu:1", "cpu:2", "cpu:3"])
    >>> mesh.shape, mesh.axis_names
    ((2, 2), ('batch', 'model'))
    >>> mesh.devices.tolist()  # one row per batch shard, one column per model shard
    [['cpu:0', 'cpu:1'], ['cpu:2', 'cpu:3']]
    """
    batch_axis = v.check_str("batch_axis", batch_axis)
    model_axis = v.check_str("model_axis", model_axis)
    if batch_axis == model_axis:
        raise ValueError(
            "`batch_axis` and `model_axis` must differ. "
            f"Received: batch_axis={batch_axis!r}, model_axis={model_axis!r}"
        )
    if devices is None:
        devices = keras.distribution.list_devices()
    else:
        expected = "a list of device names such as ['cpu:0', 'cpu:1'], or None"
        devices = v.check_sequence("devices", devices, expected)
        for i, device in enumerate(devices):
            v.check_str(f"devices[{i}]", device)
    if not devices:
        raise ValueError(f"`devices` must not be empty. Received: devices={devices!r}")
    if model_parallelism is None:
        model_parallelism = len(devices)
    model_parallelism = v.check_positive_int("model_parallelism", model_parallelism)
    if len(devices) % model_parallelism:
        raise ValueError(
            f"`model_parallelism` must divide the number of devices ({len(devices)}). "
            f"Received: model_parallelism={model_parallelism}"
        )
    return keras.distribution.DeviceMesh(
        (len(devices) // model_parallelism, model_parallelism),
        (batch_axis, model_axis),
        devices=devices,
    )


def _mlp_kernel_shapes(input_dim, widths, *, residual, output_units):
    """``{path: (rows, columns)}`` of every kernel ``mlp(...)`` creates, in call order.

    These are the names ``nnkit.models.mlp`` gives its layers
    (``dense_block_{i}/dense``; ``residual_block_{i}/dense_1``, ``dense_2`` and,
    where the width changes, ``projection``; ``output``) for a model built
    outside any ``keras.name_scope``. The tests compare them with a built model.
    """
    input_dim = v.check_positive_int("input_dim", input_dim)
    widths = v.check_int_list("widths", widths, minimum=1)
    residual = v.check_bool("residual", residual)
    output_units = v.check_optional_int("output_units", output_units, minimum=1)
    shapes = {}
    previous = input_dim
    for i, width in enumerate(widths):
        if residual:
            block = f"residual_block_{i}"
            shapes[f"{block}/dense_1/kernel"] = (previous, width)
            shapes[f"{block}/dense_2/kernel"] = (width, width)
            if previous != width:
                shapes[f"{block}/projection/kernel"] = (previous, width)
        else:
            shapes[f"dense_block_{i}/dense/kernel"] = (previous, width)
        previous = width
    if output_units is not None:
        shapes["output/kernel"] = (previous, output_units)
    return shapes


def _kernel_axes(path, shape, model_axis, parts):
    """``plan_layout``'s ``Dense`` rule, never paired: the columns if they divide, else the rows."""
    from nnkit.distribute.sharding import rules  # (the sharding package imports this module)

    kernel = keras.KerasTensor(shape)
    axes, _, _ = rules._matmul(kernel, [1], [0], parts, model_axis, rules.Pairing(), "Dense")
    if any(axes):
        return axes
    rows, columns = shape
    raise ValueError(
        f"Kernel {path!r} of shape {shape} has `min_size` or more entries but neither "
        f"dimension divides evenly over the {parts} devices of the model axis "
        f"{model_axis!r} (JAX shards only evenly). Raise `min_size` above "
        f"{rows * columns} to keep it replicated, or use a model axis whose size "
        f"divides {rows} or {columns}."
    )


def mlp_layout_map(
    device_mesh,
    input_dim,
    widths,
    *,
    residual=False,
    output_units=1,
    model_axis="model",
    min_size=DEFAULT_MIN_SIZE,
):
    """A ``LayoutMap`` that shards the large kernels of ``nnkit.models.mlp`` over a model axis.

    A special case of ``plan_layout(model, mesh, "tp")``, kept for its
    arguments (the ``mlp`` call's, no model needed, any backend) and its
    ``min_size``: each large kernel gets the planner's ``Dense`` rule on its
    own, never paired. For a built model prefer ``plan_layout``, whose
    Megatron pairing splits the second kernel of each pair by rows and so
    needs one all-reduce per pair instead of one per kernel.

    Use it with ``model_parallel`` when an MLP's parameters (and their
    optimizer slots) do not fit on one device. Every kernel with at least
    ``min_size`` entries is split over the ``model_axis`` of the mesh: by
    columns (each device holds a slice of the output units) when they divide
    evenly, else by rows; smaller kernels, biases and normalization variables
    are replicated. Keras gives the optimizer's slot variables the layout of
    their kernel. XLA inserts the collectives the sharded matmuls need, so the
    results equal an unsharded run up to floating-point reassociation.

    The keys are the kernels' full variable paths
    (``dense_block_0/dense/kernel``, ``residual_block_1/projection/kernel``,
    ``output/kernel``, ...), escaped as regular expressions, because
    ``LayoutMap`` keys must match the *whole* path: a partial key such as
    ``"dense_block_0/kernel"`` silently matches nothing. Build the model with
    the same arguments, outside any ``keras.name_scope``, and confirm the
    result with ``verify_layout``.

    Args:
        device_mesh: The ``keras.distribution.DeviceMesh`` to shard over
            (e.g. from ``device_mesh``). Required.
        input_dim: ``input_dim`` of the ``mlp`` call. Required.
        widths: ``widths`` of the ``mlp`` call. Required.
        residual: ``residual`` of the ``mlp`` call. Defaults to ``False``.
        output_units: ``output_units`` of the ``mlp`` call.
            Defaults to ``1``.
        model_axis: The mesh axis to shard kernels over. Defaults to
            ``"model"``.
        min_size: Shard kernels with at least this many entries, an int
            ``>= 1``. Defaults to ``2**20`` (4 MiB in float32).

    Returns:
        A ``keras.distribution.LayoutMap`` with one key per sharded kernel.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``model_axis`` is not an axis of the mesh, no kernel
            has ``min_size`` entries (nothing would be sharded), or a kernel
            to shard has no dimension divisible by the model axis size.

    Example:
    >>> from nnkit.distribute import device_mesh, mlp_layout_map
    >>> mesh = device_mesh(4, devices=["cpu:0", "cpu:1", "cpu:2", "cpu:3"])
    >>> layout_map = mlp_layout_map(mesh, 64, [512, 512], output_units=10, min_size=2**15)
    >>> {key: layout.axes for key, layout in layout_map.items()}
    {'dense_block_0/dense/kernel': (None, 'model'), 'dense_block_1/dense/kernel': (None, 'model')}
    >>> layout_map["output/kernel"] is None  # 512·10 < 2**15 entries: replicated
    True
    """
    mesh = _check_mesh("device_mesh", device_mesh)
    model_axis = _check_axis("model_axis", model_axis, mesh)
    min_size = v.check_positive_int("min_size", min_size)
    shapes = _mlp_kernel_shapes(input_dim, widths, residual=residual, output_units=output_units)
    parts = mesh.shape[list(mesh.axis_names).index(model_axis)]
    layout_map = keras.distribution.LayoutMap(mesh)
    for path, shape in shapes.items():
        if shape[0] * shape[1] >= min_size:
            layout_map[re.escape(path)] = _kernel_axes(path, shape, model_axis, parts)
    if not len(layout_map):
        largest = max(shapes.items(), key=lambda item: item[1][0] * item[1][1])
        raise ValueError(
            f"No kernel has `min_size` or more entries, so nothing would be sharded; the "
            f"largest is {largest[0]!r} with shape {largest[1]} "
            f"({largest[1][0] * largest[1][1]} entries). Lower `min_size` (or use data "
            f"parallelism). Received: min_size={min_size}"
        )
    return layout_map


def model_parallel(layout_map, *, batch_axis="batch", sequence_axis=None):
    """A ``keras.distribution.ModelParallel`` for ``layout_map``, on the JAX backend only.

    Build, compile and train the model inside ``distribution.scope()`` (or
    after ``keras.distribution.set_distribution(distribution)``): variables
    take their layout when they are created, and ``fit`` splits each global
    batch over ``batch_axis``. ``batch_size`` stays the global batch. With
    ``sequence_axis`` (sequence parallelism, for a layout map from
    ``plan_layout(..., sequence_axis=...)``) every input of two or more
    dimensions whose dimension 1 divides by that axis is split along it too.

    Args:
        layout_map: A ``keras.distribution.LayoutMap`` (e.g. from
            ``mlp_layout_map``). Required.
        batch_axis: The mesh axis that splits the batch.
            Defaults to ``"batch"``.
        sequence_axis: A mesh axis (not ``batch_axis``) that splits the
            inputs' dimension 1 (the sequence), or ``None``.
            Defaults to ``None``.

    Returns:
        A ``keras.distribution.ModelParallel`` (with ``sequence_axis``, a
        subclass whose ``get_data_layout`` also splits the sequence).

    Raises:
        ValueError: If the Keras backend is not JAX (``keras.distribution``
            would be silently ignored).
        TypeError: If ``layout_map`` is not a ``LayoutMap``.
        ValueError: If ``batch_axis`` or ``sequence_axis`` is not an axis of
            the layout map's mesh, or they are equal.

    Example:
    >>> from nnkit.distribute import device_mesh, mlp_layout_map, model_parallel
    >>> from nnkit.models import mlp
    >>> mesh = device_mesh()  # all devices on the model axis
    >>> layouts = mlp_layout_map(mesh, 64, [512, 512], output_units=10, min_size=2**15)
    >>> distribution = model_parallel(layouts)  # JAX backend only  # doctest: +SKIP
    >>> with distribution.scope():  # doctest: +SKIP
    ...     model = mlp(64, [512, 512], output_units=10)
    ...     model.compile(optimizer="adam", loss="mse")
    >>> tuple(model.layers[1].dense_layer.kernel.value.sharding.spec)  # doctest: +SKIP
    (None, 'model')
    """
    _require_jax("model_parallel()")
    layout_map = v.check_instance(
        "layout_map", layout_map, keras.distribution.LayoutMap, "a keras.distribution.LayoutMap"
    )
    _check_axis("batch_axis", batch_axis, layout_map.device_mesh)
    if sequence_axis is not None:
        from nnkit.distribute.sharding.sequence import SequenceParallel

        _check_sequence_axis(sequence_axis, batch_axis, layout_map.device_mesh)
        return SequenceParallel(
            layout_map=layout_map, batch_dim_name=batch_axis, sequence_axis=sequence_axis
        )
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name=batch_axis)


def _spec(variable, ndim):
    """A variable's mesh axes per dimension, or ``None`` if it is not on a mesh."""
    spec = getattr(variable.value.sharding, "spec", None)
    if spec is None:
        return None
    axes = tuple(spec)
    return axes + (None,) * (ndim - len(axes))


def verify_layout(model, layout_map):
    """Check that every key of ``layout_map`` placed variables of ``model`` as it says.

    Run it once after building the model under ``model_parallel``: a
    ``LayoutMap`` key that matches no variable path (a partial path, a
    different model, a model built inside a ``keras.name_scope``), or a model
    built outside the distribution's scope, leaves the kernels replicated
    without any error from Keras.

    Args:
        model: A built ``keras.Model``. Required.
        layout_map: The ``keras.distribution.LayoutMap`` it was built under.
            Required.

    Returns:
        A dict ``{variable path: mesh axes}`` of the model variables that the
        layout map placed, in the model's variable order.

    Raises:
        ValueError: If the Keras backend is not JAX.
        TypeError: If an argument has the wrong type.
        ValueError: If a key matches no variable of the model, or a matched
            variable's sharding differs from its layout.

    Example:
    >>> from nnkit.distribute import device_mesh, mlp_layout_map, model_parallel, verify_layout
    >>> from nnkit.models import mlp
    >>> layouts = mlp_layout_map(device_mesh(), 64, [512, 512], min_size=2**15)
    >>> with model_parallel(layouts).scope():  # JAX backend only  # doctest: +SKIP
    ...     model = mlp(64, [512, 512])
    >>> verify_layout(model, layouts)  # doctest: +SKIP
    {'dense_block_0/dense/kernel': (None, 'model'), 'dense_block_1/dense/kernel': (None, 'model')}
    >>> verify_layout(mlp(64, [512, 512]), layouts)  # built outside the scope  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    ValueError: Variables of model 'mlp' are not placed as the layout map says ...
    """
    _require_jax("verify_layout()")
    v.check_instance("model", model, keras.Model, "a keras.Model")
    v.check_instance(
        "layout_map", layout_map, keras.distribution.LayoutMap, "a keras.distribution.LayoutMap"
    )
    variables = model.variables
    if not variables:
        raise ValueError(
            f"`model` has no variables yet: build it (under the distribution's scope) first. "
            f"Received: model={model.name!r}"
        )
    placed, unmatched, wrong = {}, [], []
    for key, layout in layout_map.items():
        matched = [var for var in variables if var.path == key or re.fullmatch(key, var.path)]
        if not matched:
            unmatched.append(key)
        for var in matched:
            actual = _spec(var, len(var.shape))
            if actual != tuple(layout.axes):
                wrong.append(f"{var.path}: expected {tuple(layout.axes)}, found {actual}")
            placed[var.path] = actual
    if unmatched:
        paths = [var.path for var in variables if var.path.endswith("kernel")][:6]
        raise ValueError(
            f"LayoutMap keys must match a whole variable path (they are full-match regular "
            f"expressions), and these match no variable of model {model.name!r}: {unmatched}. "
            f"Its kernel paths look like {paths}; build the layout map from the same "
            f"arguments as the model, outside any keras.name_scope."
        )
    if wrong:
        raise ValueError(
            f"Variables of model {model.name!r} are not placed as the layout map says "
            f"(None: not on the device mesh; was the model built outside "
            f"`distribution.scope()`?): {wrong}"
        )
    return {var.path: placed[var.path] for var in variables if var.path in placed}
