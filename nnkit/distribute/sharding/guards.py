"""``check_layout``: the guards Keras does not have, for any ``LayoutMap`` (the user's own too).

Keras ignores a ``LayoutMap`` key that matches no variable path (keys are
full-match regular expressions since Keras 3.14, so a partial path such as
``"dense/kernel"`` for ``"block/dense/kernel"`` matches nothing), and a model
built outside the distribution's scope is replicated without a word. Both
show up only as memory that does not shrink. ``check_layout`` fails loudly
instead, naming the keys or variables, on three conditions:

1. every key matches at least one variable path of the model, or (a key
   for an activation, ``"<layer path>/output"``) the output of a layer;
2. every variable is placed on the mesh as the layout map says (a variable
   no key matches: replicated);
3. at most ``max_replicated`` of the shardable bytes (variables of two or
   more dimensions with one divisible by a mesh axis of size > 1) is
   replicated: ``replicated bytes / shardable bytes <= max_replicated``
   (not checked on the ``"zero1"`` map of ``plan_layout``, whose weights
   are whole by design and whose optimizer state is what is split).
"""

import re

import keras

from nnkit import _validation as v
from nnkit._keras.layers import walk
from nnkit.distribute.model_parallelism import _require_jax
from nnkit.distribute.sharding.optimizer_state import optimizer_axis
from nnkit.distribute.sharding.report import dtype_bytes, is_shardable

#: ``max_replicated`` default: 2 % of the shardable bytes may stay whole on every device.
DEFAULT_MAX_REPLICATED = 0.02


def _placed_axes(variable):
    """A variable's mesh axes per dimension (``None`` per dimension off the mesh)."""
    ndim = len(variable.shape)
    spec = getattr(getattr(variable.value, "sharding", None), "spec", None)
    if spec is None:
        return None
    axes = tuple(spec) + (None,) * (ndim - len(tuple(spec)))
    return tuple(a[0] if isinstance(a, tuple) and len(a) == 1 else a for a in axes)


def _listing(items, limit=8):
    items = list(items)
    shown = "\n  ".join(items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {shown}{more}"


def check_layout(model, layout_map, *, max_replicated=DEFAULT_MAX_REPLICATED):
    """Check that ``layout_map`` places ``model``'s variables as it says, and shards enough.

    Run it once after building the model inside the distribution's scope
    (``model_parallel(layout_map).scope()``), on a layout from ``plan_layout``
    or written by hand. It raises where Keras stays silent: a key that
    matches no variable, a variable not placed as its key says (a model
    built outside the scope), or more than ``max_replicated`` of the
    shardable bytes replicated (keys ``"<layer path>/output"``, activation
    layouts, must match a layer), where shardable means two or more dimensions,
    one divisible by a mesh axis of size > 1, and the fraction is
    ``replicated shardable bytes / shardable bytes`` (not checked on the
    ``"zero1"`` map of ``plan_layout``: its weights are whole by design).

    Args:
        model: A ``keras.Model`` built under the layout map. Required.
        layout_map: A ``keras.distribution.LayoutMap``. Required.
        max_replicated: Largest replicated fraction allowed, a number in
            ``[0, 1]`` (``1`` turns the third check off, e.g. for data
            parallelism). Defaults to ``0.02``.

    Returns:
        A dict ``{variable path: mesh axes}`` of every model variable, in
        the model's variable order.

    Raises:
        ValueError: If the Keras backend is not JAX, ``max_replicated`` is
            outside ``[0, 1]``, a key matches no variable (nor layer
            output), a variable is not
            placed as the layout map says, or too many shardable bytes are
            replicated (the message names the keys or variables).
        TypeError: If an argument has the wrong type.

    Example:
    >>> import keras
    >>> from nnkit.distribute import check_layout, device_mesh, model_parallel
    >>> layout_map = keras.distribution.LayoutMap(device_mesh())
    >>> layout_map["mlp/up/kernel"] = (None, "model")
    >>> layout_map["up/kernel"] = (None, "model")  # a partial path: matches nothing
    >>> with model_parallel(layout_map).scope():  # JAX backend only  # doctest: +SKIP
    ...     model = keras.Sequential(
    ...         [keras.Input((16,)), keras.layers.Dense(64, name="up")], name="mlp")
    >>> check_layout(model, layout_map)  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    ValueError: 1 key of the layout map matches no variable of model 'mlp': ['up/kernel']. ...
    >>> del layout_map["up/kernel"]
    >>> check_layout(model, layout_map)  # doctest: +SKIP
    {'mlp/up/kernel': (None, 'model'), 'mlp/up/bias': (None,)}
    """
    _require_jax("check_layout()")
    v.check_instance("model", model, keras.Model, "a keras.Model")
    v.check_instance(
        "layout_map", layout_map, keras.distribution.LayoutMap, "a keras.distribution.LayoutMap"
    )
    max_replicated = v.check_number("max_replicated", max_replicated, minimum=0, maximum=1)
    variables = list(model.variables)
    paths = [variable.path for variable in variables]
    outputs = [f"{layer.path}/output" for layer in walk(model) if layer.path]
    unmatched = [
        key for key in layout_map if not any(re.fullmatch(key, p) for p in paths + outputs)
    ]
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} key{'s' if len(unmatched) > 1 else ''} of the layout map "
            f"match{'' if len(unmatched) > 1 else 'es'} no variable of model {model.name!r}: "
            f"{unmatched}. Keys are full-match regular expressions of whole variable paths "
            f"(Keras ignores a key that matches nothing). The model's paths include:"
            f"{_listing(paths)}"
        )
    mesh = layout_map.device_mesh
    axis_sizes = dict(zip(mesh.axis_names, mesh.shape, strict=True))
    placed, wrong = {}, []
    for variable in variables:
        layout = layout_map[variable.path]
        ndim = len(variable.shape)
        expected = tuple(layout.axes) if layout is not None else (None,) * ndim
        found = _placed_axes(variable)
        if found is None and mesh.devices.size == 1:  # one device: replicated is placed
            found = (None,) * ndim
        placed[variable.path] = found
        if found != expected:
            wrong.append(f"{variable.path}: expected {expected}, found {found}")
    if wrong:
        raise ValueError(
            f"Variables of model {model.name!r} are not placed as the layout map says "
            f"(was the model built inside `model_parallel(layout_map).scope()` or "
            f"`distribution.scope()`?):{_listing(wrong)}"
        )
    shardable, replicated = 0, []
    for variable in variables:
        shape = tuple(variable.shape)
        if not is_shardable(shape, axis_sizes):
            continue
        size = dtype_bytes(variable.dtype)
        for n in shape:
            size *= n
        shardable += size
        if all(axis is None for axis in placed[variable.path]):
            replicated.append((size, variable.path))
    fraction = sum(size for size, _ in replicated) / shardable if shardable else 0.0
    if fraction > max_replicated and optimizer_axis(layout_map) is None:
        replicated.sort(reverse=True)
        raise ValueError(
            f"{fraction:.1%} of the shardable bytes of model {model.name!r} are replicated on "
            f"every device, more than `max_replicated`={max_replicated}. Add layout map keys "
            f"for the largest replicated variables (or plan with `plan_layout`):"
            f"{_listing(f'{path} ({size} bytes)' for size, path in replicated)}"
        )
    return placed
