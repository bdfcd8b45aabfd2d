"""Each layer kind K-FAC factors: which layers qualify, their kernel as a matrix, their call.

A *block* (``_kfac_capture.Block``) sees its kernel as one matrix
``W: (d_in, d_out)`` acting on rows: ``s_rows = ã_rows @ [W; b]``. Per kind:

- ``Dense``: the kernel as it is; every leading position of the input a row.
- ``Conv1D``/``Conv2D``/``Conv3D`` (``groups=1``): the kernel reshaped to
  ``(k₁·…·k_r·c_in, c_out)``; a row per output position, its input patch
  (Grosse & Martens 2016). ``Conv1D``'s ``"causal"`` padding is the
  left padding ``dilation·(k − 1)`` followed by a ``"valid"`` convolution.
- ``EinsumDense``: the equation parsed (``einsum_layout``) into *shared*
  axes (input and output, not the kernel: the rows), *contracted* axes
  (input and kernel: ``d_in``) and *output* axes (kernel and output:
  ``d_out``); the kernel transposed to (contracted, output) and reshaped.
  Any other form (the kernel sharing an axis with the input that is not
  contracted, an axis summed away, a repeated axis, a bias over only some
  output axes) cannot be one matrix and stays first-order, with the reason.
- ``Embedding``: a lookup is a ``Dense`` on one-hot rows, so ``A`` is the
  diagonal matrix of the tokens' frequencies, kept as its diagonal.
- ``LayerNormalization``: the scale and shift as one row ``[γ, β]`` of a
  diagonal block ``1 ⊗ diag(G)``, ``G`` the mean squared per-example gradient
  (``_kfac_math.scale_shift_statistic``). ``BatchNormalization`` stays first
  order (its examples are coupled through the batch statistics).

Each kind's shadowed ``call(call_next, inputs, *args, **kwargs)`` computes
what Keras's ``call`` computes (probes ``dense-call``, ``conv-call``,
``einsum-call``, ``embedding-call``, ``layer-norm-call``) with the identity tap (``tap``) on the
pre-activation.
"""

import re

import keras
from keras import ops

from nnkit.optimizers import _kfac_math as kmath

#: ``{Keras layer class: kind}``; exact classes (a subclass may compute otherwise).
KINDS = {
    keras.layers.Dense: "dense",
    keras.layers.Conv1D: "conv",
    keras.layers.Conv2D: "conv",
    keras.layers.Conv3D: "conv",
    keras.layers.EinsumDense: "einsum",
    keras.layers.Embedding: "embedding",
    keras.layers.LayerNormalization: "scale_shift",
}

#: Why layers that are no block keep the first-order rule (by class; the rest: ``OTHER``).
FIRST_ORDER = {
    keras.layers.BatchNormalization: (
        "BatchNormalization: its per-example gradients are coupled through the batch "
        "statistics, and its call updates the moving statistics; first order"
    ),
}
OTHER = "not a Dense, Conv1D/2D/3D, EinsumDense, Embedding or LayerNormalization layer"


# -- EinsumDense ------------------------------------------------------------------

_ELLIPSIS = "."  # one token standing for "..." while parsing


def _tokens(spec):
    return list(spec.replace("...", _ELLIPSIS))


def einsum_layout(equation, bias_axes):
    """``(layout, None)`` for an equation that is one matrix product, else ``(None, reason)``.

    ``layout``: ``{"input", "kernel", "output"}`` token lists (``"."`` for
    ``...``), ``"shared"`` (in output order), ``"contracted"`` (in input
    order) and ``"outputs"`` (in output order).
    """
    match = re.fullmatch(r"([a-zA-Z.]+),([a-zA-Z]+)->([a-zA-Z.]+)", equation.replace(" ", ""))
    if match is None:
        return None, f"einsum equation {equation!r} is not 'input,kernel->output'"
    x, w, out = (_tokens(part) for part in match.groups())
    for name, spec in (("input", x), ("kernel", w), ("output", out)):
        if len(set(spec)) != len(spec):
            return None, f"einsum equation {equation!r} repeats an axis of the {name}"
    if (_ELLIPSIS in x) != (_ELLIPSIS in out):
        return None, f"einsum equation {equation!r}: '...' on one side only"
    for axis in x:
        if axis in w and axis in out:
            return None, (
                f"einsum equation {equation!r}: the kernel shares the non-contracted axis "
                f"{axis!r} with the input (a batched kernel is no single matrix)"
            )
        if axis not in w and axis not in out:
            return None, f"einsum equation {equation!r} sums input axis {axis!r} away"
    shared = [axis for axis in out if axis in x]
    contracted = [axis for axis in x if axis in w]
    outputs = [axis for axis in out if axis in w]
    if not contracted:
        return None, f"einsum equation {equation!r} contracts no input axis with the kernel"
    if x[0] != out[0] or x[0] not in shared:
        return None, f"einsum equation {equation!r}: the batch axis must lead input and output"
    if bias_axes is not None and sorted(bias_axes) != sorted(outputs):
        return None, (
            f"bias over axes {bias_axes!r}, not exactly the output axes {''.join(outputs)!r} "
            "of the kernel (a bias shared over an output axis, or per shared position, is "
            "no homogeneous coordinate)"
        )
    layout = {"input": x, "kernel": w, "output": out}
    layout.update(shared=shared, contracted=contracted, outputs=outputs)
    return layout, None


def _expand(spec, rank):
    """``spec``'s tokens with ``"."`` expanded to the axes it stands for in a rank-``rank`` tensor."""
    if _ELLIPSIS not in spec:
        return list(spec)
    at = spec.index(_ELLIPSIS)
    extra = [f".{i}" for i in range(rank - len(spec) + 1)]
    return spec[:at] + extra + spec[at + 1 :]


def _shared(layout, rank_out):
    """The shared axes, ``"."`` expanded, in output order."""
    out = _expand(layout["output"], rank_out)
    return [axis for axis in out if axis.startswith(_ELLIPSIS) or axis in layout["shared"]]


def einsum_rows(layout, tensor, side):
    """``tensor`` (the ``"input"`` or ``"output"``) transposed to (shared axes, ``side``'s own axes).

    Not reshaped: its leading axis stays the batch's (``kmath`` reads it).
    """
    rank = len(tensor.shape)
    spec = _expand(layout[side], rank)
    other = len(layout["output" if side == "input" else "input"])
    rank_out = rank - len(layout[side]) + other
    own = layout["contracted"] if side == "input" else layout["outputs"]
    order = [spec.index(axis) for axis in _shared(layout, rank_out) + own]
    return ops.transpose(tensor, order)


def _einsum_geometry(layer):
    layout, _ = einsum_layout(layer.equation, layer.bias_axes)
    w = layout["kernel"]
    order = tuple(w.index(a) for a in layout["contracted"] + layout["outputs"])
    if order == tuple(range(len(order))):
        order = None  # the kernel is in matrix order already
    return {"layout": layout, "kernel_order": order, "output_axes": len(layout["outputs"])}


# -- eligibility and geometry -------------------------------------------------------


def ineligible_reason(layer, kind):
    """Why a layer of a block kind cannot be a block (``None`` when it can)."""
    if not layer.built:
        return "not built"
    if not layer.trainable:
        return "not trainable"
    if getattr(layer, "lora_enabled", False):
        return "LoRA enabled"
    if getattr(layer, "quantization_mode", None) is not None:
        return f"quantized ({layer.quantization_mode})"
    if kind == "conv" and layer.groups != 1:
        return f"grouped convolution (groups={layer.groups})"
    if kind == "einsum":
        return einsum_layout(layer.equation, layer.bias_axes)[1]
    if kind == "scale_shift":
        if layer.rms_scaling:
            return "LayerNormalization with rms_scaling=True (deprecated by Keras)"
        if 0 in layer.axis:
            return f"LayerNormalization over the batch axis (axis={layer.axis})"
    return None


def normalized_axes(layer, rank):
    """A ``LayerNormalization``'s normalized axes for an input of ``rank``, positive, sorted."""
    axes = sorted(axis % rank for axis in layer.axis)
    if 0 in axes:
        raise ValueError(
            f"KFAC cannot factor LayerNormalization {layer.name!r}: it normalizes over the "
            f"batch axis, so its examples' gradients are not separable. Unregister the "
            f"optimizer or change the layer's axis. Received: axis={layer.axis}, input rank {rank}"
        )
    return axes


def geometry(layer, kind):
    """``Block`` keyword arguments: kernel, bias and how the kernel is one matrix."""
    if kind == "embedding":
        return {"kernel": layer.embeddings, "bias": None, "diagonal_input": True}
    if kind == "scale_shift":
        weights = [w for w in (layer.gamma, layer.beta) if w is not None]
        return {"kernel": weights[0], "bias": weights[1] if len(weights) > 1 else None,
                "diagonal_output": True}  # fmt: skip
    extra = _einsum_geometry(layer) if kind == "einsum" else {}
    return {"kernel": layer.kernel, "bias": layer.bias, **extra}


# -- statistics --------------------------------------------------------------------


def _causal_padding(layer):
    left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
    if layer.data_format == "channels_last":
        return [[0, 0], [left, 0], [0, 0]]
    return [[0, 0], [0, 0], [left, 0]]


def input_statistic(block, x):
    """``A``'s statistic of this batch from the tap's ``x`` (what ``call`` handed it)."""
    layer, bias = block.layer, block.bias is not None
    if block.kind == "dense":
        return kmath.dense_input_statistic(x, bias=bias)
    if block.kind == "embedding":
        return kmath.token_frequencies(x, block.input_dim)
    if block.kind == "scale_shift":  # the block is 1 ⊗ diag(G)
        return ops.ones((1, 1), "float32")
    if block.kind == "einsum":
        rows = ops.reshape(einsum_rows(block.layout, x, "input"), (-1, block.input_dim - bias))
        return kmath.covariance(ops.cast(rows, "float32"), bias=bias)
    patches = kmath.conv_patches(
        x,
        layer.kernel_size,
        strides=list(layer.strides),
        padding="valid" if layer.padding == "causal" else layer.padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )
    return kmath.covariance(patches, bias=bias)


def output_statistic(block, x, upstream):
    """``G``'s empirical statistic of this batch (``x``: what ``call`` handed the tap)."""
    if block.kind == "scale_shift":
        layer = block.layer
        return kmath.scale_shift_statistic(
            x,
            upstream,
            axes=normalized_axes(layer, len(upstream.shape)),
            scale=layer.gamma is not None,
            center=layer.beta is not None,
        )
    return kmath.output_statistic(output_rows(block, upstream))


def output_rows(block, tensor):
    """The pre-activation (or its gradient) with the output units last, the batch first."""
    if block.kind == "einsum":
        rows = einsum_rows(block.layout, tensor, "output")
        return ops.reshape(rows, (ops.shape(rows)[0], -1, block.output_dim))
    if block.kind == "conv" and block.layer.data_format != "channels_last":
        return ops.moveaxis(tensor, 1, -1)
    return tensor


# -- the shadowed calls --------------------------------------------------------------


def activation_of(layer):
    activation = getattr(layer, "activation", None)
    return activation if activation is not None else keras.activations.linear


def make_call(block, tap):
    """The shadowed ``call`` of ``block``'s layer: Keras's computation, ``tap`` on ``s``."""
    layer = block.layer

    def dense(call_next, inputs, *args, **kwargs):
        s = ops.matmul(inputs, layer.kernel)
        if layer.bias is not None:
            s = ops.add(s, layer.bias)
        return activation_of(layer)(tap(block, s, inputs))

    def conv(call_next, inputs, *args, **kwargs):
        if layer.padding == "causal":
            inputs = ops.pad(inputs, _causal_padding(layer))
            s = ops.conv(
                inputs,
                layer.kernel,
                strides=list(layer.strides),
                padding="valid",
                dilation_rate=layer.dilation_rate,
                data_format=layer.data_format,
            )
        else:
            s = layer.convolution_op(inputs, layer.kernel)
        if layer.use_bias:
            if layer.data_format == "channels_last":
                shape = (1,) * (layer.rank + 1) + (layer.filters,)
            else:
                shape = (1, layer.filters) + (1,) * layer.rank
            s = ops.add(s, ops.reshape(layer.bias, shape))
        return activation_of(layer)(tap(block, s, inputs))

    def einsum(call_next, inputs, *args, **kwargs):
        s = ops.einsum(layer.equation, inputs, layer.kernel)
        if layer.bias is not None:
            s = ops.add(s, layer.bias)
        return activation_of(layer)(tap(block, s, inputs))

    def embedding(call_next, inputs, *args, **kwargs):
        if keras.backend.standardize_dtype(inputs.dtype) not in ("int32", "int64"):
            inputs = ops.cast(inputs, "int32")
        s = ops.cast(ops.take(layer.embeddings, inputs, axis=0), layer.compute_dtype)
        # The ids reach the tap as float32 (exact below 2²⁴): a tap input takes a gradient.
        return tap(block, s, ops.cast(inputs, "float32"))

    def scale_shift(call_next, inputs, *args, **kwargs):
        # y = x̂·γ + β, x̂ normalized in float32 over the layer's axes (as Keras computes it).
        x = ops.cast(inputs, "float32")
        rank = len(x.shape)
        axes = normalized_axes(layer, rank)
        mean, variance = ops.moments(x, axes=axes, keepdims=True)
        normalized = (x - mean) * ops.rsqrt(variance + layer.epsilon)
        shape = [1] * rank
        for axis in axes:
            shape[axis] = x.shape[axis]
        y = normalized
        if layer.gamma is not None:
            y = y * ops.reshape(ops.cast(layer.gamma, "float32"), shape)
        if layer.beta is not None:
            y = y + ops.reshape(ops.cast(layer.beta, "float32"), shape)
        return ops.cast(tap(block, y, normalized), layer.compute_dtype)

    calls = {"dense": dense, "conv": conv, "einsum": einsum, "embedding": embedding,
             "scale_shift": scale_shift}  # fmt: skip
    return calls[block.kind]
