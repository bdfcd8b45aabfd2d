"""Giving optimizer variables a layout of their own (ZeRO-1) on the JAX backend.

Keras's optimizers make each slot with ``add_variable_from_reference``, which
copies its weight's ``variable._layout``: a ``LayoutMap`` cannot place the
optimizer state apart from the weights. ``nnkit.distribute.shard_optimizer_state``
re-places the optimizer's variables right after ``optimizer.build``, before
the train function is made, through this module.

Assumptions (each has a probe in ``tests/_keras/test_probes.py``, run on JAX):

- ``optimizer-state-layout``: a JAX ``keras.Variable`` keeps its layout in
  ``variable._layout`` (a ``TensorLayout`` or ``None``) and its array in
  ``variable._value`` (``None`` while deferred); ``assign`` (and so the JAX
  trainer's state sync after ``fit``) puts the new value on that layout, and
  the JAX trainer jits its train step with each optimizer variable's
  ``value.sharding`` as its ``out_shardings`` (``_get_state_sharding_spec``),
  so a variable re-placed before the train function is made stays so.
- ``optimizer-build-hook``: ``fit``, ``train_on_batch`` and ``evaluate``
  build the optimizer through ``optimizer.build(trainable_variables)``,
  looked up on the instance, before making the train function.
"""

from nnkit._keras import shadow


def layout(variable):
    """The ``TensorLayout`` a variable carries (``None``: none yet)."""
    return getattr(variable, "_layout", None)


def place(variable, tensor_layout):
    """Give ``variable`` the layout ``tensor_layout``; move its array there if it has one."""
    variable._layout = tensor_layout
    value = getattr(variable, "_value", None)
    if value is not None:
        import jax

        variable._value = jax.device_put(value, tensor_layout.backend_layout)


def after_build(optimizer, callback):
    """Call ``callback(optimizer)`` once the optimizer is built (at once if it is).

    Returns the ``shadow.Patch`` waiting for the build, or ``None``. The patch
    removes itself when the build has run.
    """
    if optimizer.built:
        callback(optimizer)
        return None
    patch = None

    def wrapper(call_next, *args, **kwargs):
        result = call_next(*args, **kwargs)
        shadow.unshadow(patch)
        callback(optimizer)
        return result

    existing = shadow.find(optimizer, "build", "optimizer_state")
    if existing is not None:
        shadow.unshadow(existing)
    patch = shadow.shadow(optimizer, "build", wrapper, owner="optimizer_state")
    return patch
