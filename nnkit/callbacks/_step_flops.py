"""FLOPs of one training step: XLA's cost analysis on JAX, else the analytic count.

The compiled count (JAX) lowers and compiles, on shapes only (nothing is
allocated), the forward and backward pass of the model on one global batch,
``grad(sum(model(x)²))`` taken with respect to the trainable variables *and*
the floating-point inputs, and reads ``cost_analysis()["flops"]``. The input
gradient makes a stack of dense layers count exactly three times its forward
products (forward, input gradient, weight gradient): the "model FLOPs"
convention of MFU (Chowdhery et al. 2022, appendix B), where the first layer's
input gradient is counted although training skips it. The loss and the
optimizer update are not counted (elementwise, small beside the products);
XLA also counts the elementwise operations of the model.

The analytic count (any backend) is ``3 · count_flops(model) · batch_size``
with ``nnkit.search.count_flops``'s per-example forward count (dense kernels
and 1-D convolutions only, a dense kernel once per example: for a model whose
dense layers run at every position of a sequence pass ``flops_per_step``).
"""

import keras

from nnkit.search.cost import count_flops

#: Backward ÷ forward products of a dense stack is 2, so a step is 3 forwards.
BACKWARD_FACTOR = 3


def _input_specs(model, batch_size):
    """``(shape, dtype)`` of each model input for one global batch, or ``None`` if unknown."""
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    specs = []
    for tensor in inputs:
        rest = tuple(tensor.shape[1:])
        if any(n is None for n in rest):
            return None
        specs.append(((batch_size, *rest), keras.backend.standardize_dtype(tensor.dtype)))
    return specs


def compiled_flops(model, batch_size):
    """XLA's FLOP count of one forward and backward pass (JAX), or ``None`` where unavailable."""
    if keras.backend.backend() != "jax":
        return None
    specs = _input_specs(model, batch_size)
    if specs is None:
        return None
    import jax
    import jax.numpy as jnp

    floating = [jnp.issubdtype(jnp.dtype(dtype), jnp.floating) for _, dtype in specs]

    def loss(trainable, float_inputs, other_inputs, non_trainable):
        float_iter, other_iter = iter(float_inputs), iter(other_inputs)
        xs = [next(float_iter) if f else next(other_iter) for f in floating]
        outputs, _ = model.stateless_call(
            trainable, non_trainable, xs[0] if len(xs) == 1 else xs, training=True
        )
        leaves = jax.tree_util.tree_leaves(outputs)
        # Squared, not plain sums: the gradient of a sum is all ones, and XLA
        # turns a product with ones into a reduction, dropping its FLOPs.
        return sum(jnp.sum(jnp.square(leaf.astype("float32"))) for leaf in leaves)

    def struct(variable):
        return jax.ShapeDtypeStruct(tuple(variable.shape), jnp.dtype(variable.dtype))

    xs = [jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)) for shape, dtype in specs]
    args = (
        [struct(v) for v in model.trainable_variables],
        [x for x, f in zip(xs, floating, strict=True) if f],
        [x for x, f in zip(xs, floating, strict=True) if not f],
        [struct(v) for v in model.non_trainable_variables],
    )
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)  # the whole step's count, on one device
    try:
        step = jax.jit(jax.grad(loss, argnums=(0, 1)))
        analysis = step.lower(*args).compile().cost_analysis()
    finally:
        keras.distribution.set_distribution(distribution)
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return int(flops) if flops is not None and flops > 0 else None


def analytic_flops(model, batch_size):
    """``3 · count_flops(model) · batch_size``, or ``None`` for a model it cannot count."""
    try:
        per_example = count_flops(model)
    except (TypeError, AttributeError, ValueError):
        return None
    return BACKWARD_FACTOR * per_example * batch_size if per_example > 0 else None


def step_flops(model, batch_size):
    """``(flops, source)``: the compiled count where JAX gives one, else the analytic count.

    ``source`` is ``"compiled"``, ``"analytic"`` or ``None`` (neither: a
    subclassed model without known input shapes, or one with no dense kernel).
    """
    flops = compiled_flops(model, batch_size)
    if flops is not None:
        return flops, "compiled"
    flops = analytic_flops(model, batch_size)
    return (flops, "analytic") if flops is not None else (None, None)
