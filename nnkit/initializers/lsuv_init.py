"""Layer-sequential unit-variance (LSUV) initialization of a built model."""

import contextlib
import math
import warnings

import keras
import numpy as np

from nnkit import _validation as v
from nnkit._arrays import to_numpy
from nnkit._keras import layers as keras_layers
from nnkit._keras import shadow
from nnkit.initializers.lsuv_report import LSUVLayerResult, LSUVReport

#: The owner of LSUV's patches in ``nnkit._keras.shadow.ORDER``.
_OWNER = "lsuv"

# The layers LSUV rescales: a single `kernel` that maps the input linearly,
# followed by an optional fused `activation`. Other layers (normalization,
# embeddings, attention wrappers, RNN cells, separable convolutions) are
# left as they are.
_KERNEL_LAYERS = (
    keras.layers.Dense,
    keras.layers.EinsumDense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)


def _check_model(model):
    v.check_instance("model", model, keras.Model, "a keras.Model")
    if not model.built:
        raise ValueError(
            "`model` must be built before LSUV (its kernels do not exist yet): give it a "
            "`keras.Input`, call `model.build(input_shape)`, or call it on a batch. "
            f"Received: model={model.name!r} (built=False)"
        )


def _check_batch(model, batch):
    """Compare the batch with the model's symbolic inputs, where it has them."""
    # Functional: `input` keeps the structure (array, list or dict) the model is called with;
    # Sequential has only `inputs`; a subclassed model has neither, and its forward pass
    # checks the shapes itself.
    for attribute in ("input", "inputs"):
        try:
            inputs = getattr(model, attribute)
            break
        except (AttributeError, ValueError):
            continue
    else:
        return
    expected = keras.tree.flatten(inputs)  # dicts flatten in sorted-key order on both sides
    received = keras.tree.flatten(batch)
    if len(received) != len(expected):
        raise ValueError(
            f"`batch` must hold {len(expected)} array(s), one per model input. "
            f"Received: batch with {len(received)} array(s)"
        )
    for spec, array in zip(expected, received, strict=True):
        shape = tuple(np.shape(array))
        want = tuple(spec.shape)
        matches = len(shape) == len(want) and all(
            w is None or w == s for w, s in zip(want[1:], shape[1:], strict=True)
        )
        if not matches or shape[0] < 2:
            raise ValueError(
                f"`batch` must have shape {want} with at least 2 examples (the variance "
                f"is measured over the batch). Received: batch of shape {shape}"
            )


@contextlib.contextmanager
def _recording(layers):
    """Record the arguments each of ``layers`` receives in its ``call``.

    Keras has no forward hooks, so each layer's ``call`` is shadowed
    (``nnkit._keras.shadow``, owner ``"lsuv"``) for the duration of the block
    and always restored. The recorder hands the call on unchanged, so another
    nnkit part's patch on the same layer (K-FAC's) stays in place and runs.
    """
    calls = {id(layer): [] for layer in layers}
    order = []

    def recorder(layer):
        def record(call_next, *args, **kwargs):
            if not calls[id(layer)]:
                order.append(layer)
            calls[id(layer)].append((args, kwargs))
            return call_next(*args, **kwargs)

        return record

    patches = []
    try:
        for layer in layers:
            patches.append(shadow.shadow(layer, "call", recorder(layer), owner=_OWNER))
        yield calls, order
    finally:
        for patch in patches:
            shadow.unshadow(patch)


@contextlib.contextmanager
def _without_activation(layer):
    """Measure the layer's linear output: its fused activation is skipped."""
    activation = getattr(layer, "activation", None)
    if activation is None:
        yield
        return
    layer.activation = keras.activations.linear
    try:
        yield
    finally:
        layer.activation = activation


def _forward(model, layers, batch):
    with _recording(layers) as (calls, order):
        model(batch, training=False)
    for layer in layers:
        count = len(calls[id(layer)])
        if count != 1:
            raise ValueError(
                f"LSUV needs each Dense/Conv layer to be called exactly once per forward pass, "
                f"but layer {layer.name!r} was called {count} time(s) (a shared layer, or one "
                "the model does not use). Initialize that model part another way."
            )
    return calls, order


def _variance(layer, args, kwargs):
    outputs = layer.call(*args, **kwargs)
    values = to_numpy(outputs).astype(np.float64)
    variance = float(np.var(values))
    if not math.isfinite(variance) or variance <= 0.0:
        raise ValueError(
            f"LSUV cannot rescale layer {layer.name!r}: its output variance on `batch` is "
            f"{variance!r} (expected a finite number > 0; is its input all zeros or non-finite?)"
        )
    return variance


def _kernel(layer):
    kernel = layer.kernel
    if not isinstance(kernel, keras.Variable):
        raise TypeError(
            f"LSUV needs a float kernel variable, but layer {layer.name!r} computes its kernel "
            f"(LoRA or quantization?). Received: {type(kernel).__name__}"
        )
    return kernel


def lsuv(model, batch, *, tolerance=0.1, max_iterations=10, orthogonal=True, seed=None):
    """Rescale each Dense/Conv kernel until its output variance on a batch is 1 (LSUV).

    Use it once, after building a deep model and before training, when the
    variance rules of ``for_activation`` do not hold (activations such as
    SiLU or GELU, no normalization, unusual depth): it measures instead of
    assuming. It is data-dependent, so pass a representative batch
    (hundreds of examples) preprocessed like the training data.

    Algorithm (Mishkin & Matas, 2016): optionally fill every kernel with an
    orthonormal matrix (Saxe et al., 2014); then for each Dense/Conv layer in
    forward order, repeat: run the batch, measure the variance ``v`` of the
    layer's output over all its elements, ``W ← W / sqrt(v)``, until
    ``|v - 1| < tolerance`` or ``max_iterations`` rescalings. The output
    measured is the layer's linear output ``W x + b``, before its own fused
    ``activation`` (like the paper, which measures the convolution or
    fully-connected layer's output, not the nonlinearity after it; a
    post-tanh or post-sigmoid variance of 1 is not even reachable). Biases
    are not changed. The forward pass uses ``training=False``, so dropout is
    off and batch normalization uses its moving statistics.

    Rescaled layers: ``Dense``, ``EinsumDense``, ``Conv1D/2D/3D``, their
    ``Transpose`` variants, ``DepthwiseConv1D/2D`` (and their subclasses),
    wherever they are in the model, nested or subclassed. Other layers are
    left as they are. Each must be called exactly once per forward pass.

    Args:
        model: A built ``keras.Model`` (Functional, Sequential or subclassed),
            changed in place. Required.
        batch: Inputs for one forward pass, shaped like the model's inputs
            (a list or dict for several inputs), at least 2 examples.
            Required.
        tolerance: Stop when ``|variance - 1| < tolerance``, in ``(0, 1)``.
            Defaults to ``0.1``.
        max_iterations: Most rescalings per layer, an int ``>= 1``.
            Defaults to ``10``.
        orthogonal: Fill every kernel with an orthonormal matrix first, as
            the paper does; ``False`` keeps the current kernels and only
            rescales them. Defaults to ``True``.
        seed: Seed for the orthonormal matrices, an int or ``None`` (draws
            from Keras's global seed). Defaults to ``None``.

    Returns:
        An ``LSUVReport``: one row per rescaled layer (name, initial and
        final variance, iterations, converged), printable as a table.

    Raises:
        TypeError: If ``model`` is not a ``keras.Model``, an argument has the
            wrong type, or a kernel is not a variable (LoRA, quantized).
        ValueError: If the model is not built, ``batch`` does not match its
            inputs, it has no Dense/Conv layer, a layer is shared or unused,
            a variance is 0 or not finite, or an argument is out of range.

    Warns:
        UserWarning: When some layer did not reach the tolerance within
            ``max_iterations`` (the report says which).

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.initializers import lsuv
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((16,))] + [keras.layers.Dense(32, "tanh") for _ in range(4)])
    >>> batch = np.random.default_rng(0).normal(size=(256, 16)).astype("float32")
    >>> report = lsuv(model, batch, seed=0)
    >>> report.converged, len(report.layers)
    (True, 4)
    >>> all(abs(row.final_variance - 1) < 0.1 for row in report.layers)
    True

    References:
        Mishkin & Matas, "All you need is a good init", ICLR 2016;
        Saxe et al., "Exact solutions to the nonlinear dynamics of learning in
        deep linear neural networks", ICLR 2014.
    """
    _check_model(model)
    tolerance = v.check_number(
        "tolerance", tolerance, minimum=0.0, maximum=1.0, min_inclusive=False, max_inclusive=False
    )
    max_iterations = v.check_positive_int("max_iterations", max_iterations)
    orthogonal = v.check_bool("orthogonal", orthogonal)
    seed = v.check_optional_int("seed", seed, limit=v.SEED_LIMIT)
    v.check_batches("batch", batch)
    _check_batch(model, batch)

    layers = [
        layer
        for layer in keras_layers.walk(model, include_self=False)
        if isinstance(layer, _KERNEL_LAYERS)
    ]
    if not layers:
        raise ValueError(
            "`model` has no layer LSUV can rescale (Dense, EinsumDense, Conv, DepthwiseConv). "
            f"Received: model={model.name!r}"
        )
    kernels = {id(layer): _kernel(layer) for layer in layers}
    _, order = _forward(model, layers, batch)

    if orthogonal:
        seeds = None if seed is None else keras.random.SeedGenerator(seed)
        for layer in order:
            kernel = kernels[id(layer)]
            # A fresh initializer per layer: one with seed=None fixes its seed
            # at construction and would repeat the same matrix.
            initializer = keras.initializers.Orthogonal(seed=seeds)
            kernel.assign(initializer(kernel.shape, dtype=kernel.dtype))

    rows = []
    for layer in order:
        kernel = kernels[id(layer)]
        calls, _ = _forward(model, [layer], batch)
        args, kwargs = calls[id(layer)][0]
        with _without_activation(layer):
            variance = initial = _variance(layer, args, kwargs)
            iterations = 0
            while abs(variance - 1.0) >= tolerance and iterations < max_iterations:
                kernel.assign(kernel / math.sqrt(variance))
                iterations += 1
                variance = _variance(layer, args, kwargs)
        rows.append(
            LSUVLayerResult(
                name=layer.name,
                initial_variance=initial,
                final_variance=variance,
                iterations=iterations,
                converged=abs(variance - 1.0) < tolerance,
            )
        )

    report = LSUVReport(tuple(rows), tolerance, max_iterations)
    failed = [row.name for row in rows if not row.converged]
    if failed:
        warnings.warn(
            f"LSUV did not bring the output variance of {failed} within tolerance={tolerance} "
            f"of 1 in max_iterations={max_iterations}; see the returned report.",
            UserWarning,
            stacklevel=2,
        )
    return report
