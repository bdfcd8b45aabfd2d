"""Tensor-parallel rules by layer type: which dimension of each variable goes on the model axis.

Megatron-LM's layout (Shoeybi et al., 2019), read from layer types and
shapes rather than variable names:

- two consecutive matmuls (``Dense``/``EinsumDense``) form a column/row pair:
  the first splits its *output* units (column-parallel, no communication
  before the elementwise activation), the second splits its *contracted*
  input units, the ones the first produced (row-parallel, one all-reduce
  after it). A matmul whose input is not the width the previous
  column-parallel one produced starts a new pair;
- attention (``MultiHeadAttention``, ``GroupedQueryAttention``) splits its
  heads: query/key/value kernels ``(d, heads, head_dim)`` on the heads
  dimension, the output projection ``(heads, head_dim, d)`` row-parallel;
- ``Embedding`` splits the vocabulary (rows of the table);
- ``Conv1D``/``Conv2D``/``Conv3D`` split their output channels;
- everything else of one dimension (biases, normalization scales) is
  replicated; a size not divisible by the model axis falls back to another
  dimension or to replication, and the fallback is reported.

Each rule returns ``{variable: (axes, reason, fallback)}`` for the model axis
only; ``planning.py`` adds the data (FSDP) axis. Any layout gives the same
numbers (XLA inserts the collectives a layout needs); these rules choose the
one with the least communication.
"""

import keras

from nnkit._keras.layers import walk

ATTENTION = (keras.layers.MultiHeadAttention, keras.layers.GroupQueryAttention)
CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


class Pairing:
    """Megatron pairing state: the width the last column-parallel matmul produced, or ``None``."""

    def __init__(self):
        self.pending = None


def _split(shape, dim, axis):
    axes = [None] * len(shape)
    axes[dim] = axis
    return tuple(axes)


def _first_divisible(shape, dims, parts):
    return next((d for d in dims if shape[d] % parts == 0), None)


def _matmul(kernel, outputs, contracted, parts, axis, pairing, what):
    """A kernel's axes as the column (or, paired, row) half of a Megatron pair.

    ``outputs`` and ``contracted`` are the kernel dimensions that appear in the
    output and those summed over.
    """
    shape = tuple(kernel.shape)
    width_in = _product(shape, contracted)
    row = pairing.pending is not None and pairing.pending == width_in
    pairing.pending = None
    preferred, other = (contracted, outputs) if row else (outputs, contracted)
    name = "row-parallel" if row else "column-parallel"
    dim = _first_divisible(shape, preferred, parts)
    if dim is not None:
        if not row:
            pairing.pending = _product(shape, outputs)
        return _split(shape, dim, axis), f"{what} {name}", False
    dim = _first_divisible(shape, other, parts)
    sizes = [shape[d] for d in preferred]
    if dim is not None:
        return (
            _split(shape, dim, axis),
            f"{what}: {name} needs {sizes} divisible by {parts}; split dimension {dim} instead",
            True,
        )
    return (None,) * len(shape), f"{what}: no dimension divisible by {parts}; replicated", True


def _product(shape, dims):
    result = 1
    for d in dims:
        result *= shape[d]
    return result


def einsum_dims(equation, kernel_rank):
    """(output dims, contracted dims) of an ``EinsumDense`` kernel, from its equation."""
    inputs, output = equation.replace("...", "").split("->")
    data, kernel = inputs.split(",")
    letters = kernel[-kernel_rank:] if kernel_rank else kernel
    outputs = [i for i, c in enumerate(letters) if c in output]
    contracted = [i for i, c in enumerate(letters) if c in data and c not in output]
    return outputs, contracted


def _replicated(variables, reason):
    return {id(v): ((None,) * len(v.shape), reason, False) for v in variables}


def _attention(layer, parts, axis):
    placed = {}
    for sub in walk(layer, include_self=False):
        if not isinstance(sub, keras.layers.EinsumDense):
            continue
        output = sub.name == "attention_output"
        for variable in sub.weights:
            shape = tuple(variable.shape)
            kernel = variable is sub.kernel
            heads_dim = 0 if output or not kernel else 1
            if output and not kernel:  # the output bias (d,)
                placed[id(variable)] = ((None,) * len(shape), "attention output bias", False)
            elif shape[heads_dim] % parts == 0:
                what = "output projection row-parallel" if output else f"{sub.name} heads"
                placed[id(variable)] = (_split(shape, heads_dim, axis), f"attention {what}", False)
            else:
                placed[id(variable)] = (
                    (None,) * len(shape),
                    f"attention {sub.name}: {shape[heads_dim]} heads not divisible by {parts}; "
                    "replicated",
                    True,
                )
    return placed


def tensor_parallel(layer, parts, axis, pairing):
    """``{id(variable): (axes, reason, fallback)}`` for the variables ``layer`` owns a rule for."""
    if isinstance(layer, ATTENTION):
        pairing.pending = None
        return _attention(layer, parts, axis)
    if isinstance(layer, keras.layers.Dense) and layer.kernel is not None:
        axes, reason, fallback = _matmul(layer.kernel, [1], [0], parts, axis, pairing, "Dense")
        placed = {id(layer.kernel): (axes, reason, fallback)}
        others = [v for v in layer.weights if v is not layer.kernel]
        return {**placed, **_replicated(others, "bias: replicated")}
    if isinstance(layer, keras.layers.EinsumDense):
        kernel = layer.kernel
        outputs, contracted = einsum_dims(layer.equation, len(kernel.shape))
        axes, reason, fallback = _matmul(
            kernel, outputs, contracted, parts, axis, pairing, "EinsumDense"
        )
        placed = {id(kernel): (axes, reason, fallback)}
        others = [v for v in layer.weights if v is not kernel]
        return {**placed, **_replicated(others, "bias: replicated")}
    if isinstance(layer, keras.layers.Embedding):
        pairing.pending = None
        table = layer.embeddings
        shape = tuple(table.shape)
        if shape[0] % parts == 0:
            return {id(table): ((axis, None), "Embedding vocabulary-parallel", False)}
        if shape[1] % parts == 0:
            reason = f"Embedding: vocabulary {shape[0]} not divisible by {parts}; split the width"
            return {id(table): ((None, axis), reason, True)}
        reason = f"Embedding: no dimension divisible by {parts}; replicated"
        return {id(table): ((None, None), reason, True)}
    if isinstance(layer, CONV) and getattr(layer, "kernel", None) is not None:
        pairing.pending = None
        kernel = layer.kernel
        shape = tuple(kernel.shape)
        placed = _replicated([v for v in layer.weights if v is not kernel], "bias: replicated")
        if shape[-1] % parts == 0:
            placed[id(kernel)] = (
                _split(shape, len(shape) - 1, axis),
                "Conv output channels",
                False,
            )
        else:
            reason = f"Conv: {shape[-1]} output channels not divisible by {parts}; replicated"
            placed[id(kernel)] = ((None,) * len(shape), reason, True)
        return placed
    return {}
