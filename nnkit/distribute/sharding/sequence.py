"""Sequence parallelism: inputs split on (batch, sequence), layer outputs split on the sequence.

Long inputs make the activations, not the weights, the largest part of a
step's memory. Sequence parallelism (Korthikanti et al., 2022) splits them
along the sequence as well as the batch: with a data axis of size ``B`` and
a sequence axis of size ``S``, each device holds ``1 / (B·S)`` of every
activation that has a sequence dimension, against ``1 / B`` when only the
batch is split. Two pieces, both public Keras hooks:

- the **inputs**: ``SequenceParallel`` is a ``keras.distribution.ModelParallel``
  whose ``get_data_layout`` splits dimension 0 of every input on the batch
  axis and dimension 1 (the sequence) on the sequence axis, for inputs of two
  or more dimensions whose dimension 1 divides by ``S`` (token ids
  ``(batch, seq)``, their labels, embeddings ``(batch, seq, d)``); other
  inputs are split on the batch only;
- the **activations**: ``LayoutMap`` keys ``"<layer path>/output"``, which
  Keras applies to a layer's output (``Distribution.get_tensor_layout``), put
  dimension 1 of a layer's output on the sequence axis where that is legal:
  the output is one tensor of three or more dimensions (batch, sequence,
  features...), its sequence divides by ``S``, and, when the sequence axis is
  also the tensor-parallel model axis, the layer's output is not itself split
  on it (a column-parallel ``Dense``, attention's query/key/value, a ``Conv``'s
  channels, a vocabulary-parallel output layer keep their split; the outputs
  of row-parallel layers, attention, normalization and embeddings are split
  on the sequence, as in Megatron-LM's sequence parallelism).

Only layers with a symbolic output in the model's graph (the layers of a
functional or ``Sequential`` model, nested ones included) get a key; the
sublayers a custom layer calls inside its ``call`` are left to XLA's sharding
propagation. Attention needs every key of the sequence: XLA gathers the keys
and values where they are used, so the attention scores stay split by query.
The numbers are the unsharded run's up to the order of floating-point sums.
"""

import re

import keras

from nnkit._keras.layers import walk
from nnkit.distribute.sharding import rules


class SequenceParallel(keras.distribution.ModelParallel):
    """``ModelParallel`` that also splits each input's dimension 1 (the sequence).

    Made by ``model_parallel(layout_map, sequence_axis=...)``; see the module
    docstring. ``get_data_layout`` is the only change.
    """

    def __init__(self, *, layout_map, batch_dim_name, sequence_axis):
        super().__init__(layout_map=layout_map, batch_dim_name=batch_dim_name)
        self.sequence_axis = sequence_axis
        mesh = layout_map.device_mesh
        self.sequence_parts = dict(zip(mesh.axis_names, mesh.shape, strict=True))[sequence_axis]

    def get_data_layout(self, data_shape):
        layout = super().get_data_layout(data_shape)
        if len(data_shape) >= 2 and data_shape[1] and data_shape[1] % self.sequence_parts == 0:
            axes = list(layout.axes)
            axes[1] = self.sequence_axis
            layout = keras.distribution.TensorLayout(axes, self.device_mesh)
        return layout


def _output_shape(layer):
    """The shape of the layer's one symbolic output, or ``None`` (none, several, not a graph)."""
    try:
        output = layer.output
    except (AttributeError, ValueError, RuntimeError):
        return None
    if not isinstance(output, keras.KerasTensor):
        return None
    return tuple(output.shape)


def _output_split(layer, report_by_path, axis):
    """Whether the plan splits ``layer``'s output features on ``axis`` (its kernel's output dims)."""
    if isinstance(layer, rules.ATTENTION):
        return False  # the output projection is row-parallel: its output is whole
    if isinstance(layer, keras.layers.Embedding):
        plan = report_by_path.get(layer.embeddings.path)
        return plan is not None and plan.axes[1] == axis
    kernel = getattr(layer, "kernel", None)
    plan = report_by_path.get(getattr(kernel, "path", None))
    if plan is None:
        return False
    if isinstance(layer, keras.layers.EinsumDense):
        outputs, _ = rules.einsum_dims(layer.equation, len(plan.shape))
    else:  # Dense, Conv: the last kernel dimension is the output's
        outputs = [len(plan.shape) - 1]
    return any(plan.axes[d] == axis for d in outputs)


def activation_layouts(model, axis_sizes, report_by_path, *, batch_axis, sequence_axis, tp_axis):
    """``{output key: (axes, reason)}`` for the layer outputs split on the sequence.

    ``report_by_path`` maps variable paths to their ``VariablePlan``;
    ``tp_axis`` is the model axis when the strategy uses tensor parallelism
    (else ``None``).
    """
    parts = axis_sizes[sequence_axis]
    batch = batch_axis if axis_sizes.get(batch_axis, 1) > 1 else None
    placed = {}
    for layer in walk(model, include_self=False):
        if isinstance(layer, keras.layers.InputLayer) or not layer.path:
            continue
        shape = _output_shape(layer)
        if shape is None or len(shape) < 3 or not shape[1] or shape[1] % parts:
            continue
        if tp_axis == sequence_axis and _output_split(layer, report_by_path, tp_axis):
            continue  # split on the model axis already (Megatron's column half)
        axes = (batch, sequence_axis) + (None,) * (len(shape) - 2)
        placed[f"{re.escape(layer.path)}/output"] = (axes, "sequence-parallel activation")
    return placed
