"""Where nnkit's optimizer state goes under ``keras.distribution`` (JAX): with its weight.

Keras gives each of its own slots its weight's layout. nnkit's ``Shampoo``
and ``SOAP`` make their state with ``add_state``; this module gives it a
layout from the current distribution (``keras.distribution.distribution()``),
so that under FSDP or tensor parallelism it shrinks with the weights:

- a state shaped like its weight (moments) takes the weight's layout;
- a Kronecker factor ``n × n`` of a weight split on mesh axes ``a_1, a_2``
  (at most two) is split on the same axes: first the axes of the side it
  preconditions (the rows for ``L``, the columns for ``R``), then the
  others, each on the first factor dimension not yet split that ``n``
  divides. Per device it then holds ``n² / prod(sizes)``, as its weight
  holds ``1 / prod(sizes)`` of itself. An axis that divides neither
  dimension is left off (the factor is replicated on it).

A factor is eigendecomposed (Shampoo's inverse roots, SOAP's bases) as a
whole matrix: XLA gathers it for the decomposition at each refresh (a
temporary), and stores the result split again. With no distribution (and on
TensorFlow) nothing is placed and Keras decides as before.

``KFAC`` (``_kfac_factors``) uses the same rule through ``block_layout``: a
block's kernel is one matrix ``(d_in, d_out)`` (its axes reordered by the
block's ``kernel_order``, the last ``output_axes`` being the output side),
its ``A`` factor (``d_in × d_in``, ``d_in`` counting a bias row) the
``"left"`` side and its ``G`` factor the ``"right"`` side. A factor kept as
its diagonal (a vector of ``n``) is split on the axis its first dimension
would have. Where ``n`` divides by no axis of the weight (``d_in + 1``
with a bias often does not) the factor stays whole: deliberately, since
splitting it unevenly would pad every device.
"""

import keras


def weight_layout(variable):
    """The ``TensorLayout`` the current distribution gives ``variable``, or ``None``."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return None
    return distribution.get_variable_layout(variable)


def factor_axes(weight_axes, side, n, axis_sizes, output_axes=1):
    """The mesh axes ``(dim 0, dim 1)`` of an ``n × n`` factor of a weight placed on ``weight_axes``.

    The weight's last ``output_axes`` axes are its columns (the right side),
    the others its rows (the left side).
    """
    split = len(weight_axes) - output_axes
    rows = [a for a in weight_axes[:split] if a is not None]
    cols = [a for a in weight_axes[split:] if a is not None]
    order = rows + cols if side == "left" else cols + rows
    dims = [None, None]
    for axis in order:
        for d in (0, 1):
            if dims[d] is None and n % axis_sizes[axis] == 0:
                dims[d] = axis
                break
    return tuple(dims)


def factor_layout(weight, side, n):
    """The ``TensorLayout`` of an ``n × n`` factor of ``weight`` (``None``: no distribution)."""
    layout = weight_layout(weight)
    if layout is None:
        return None
    mesh = layout.device_mesh
    sizes = dict(zip(mesh.axis_names, mesh.shape, strict=True))
    axes = (
        tuple(layout.axes) if len(layout.axes) == len(weight.shape) else (None,) * len(weight.shape)
    )
    return keras.distribution.TensorLayout(factor_axes(axes, side, n, sizes), mesh)


def block_layout(weight, side, shape, *, kernel_order=None, output_axes=1):
    """The ``TensorLayout`` of a K-FAC factor of ``shape`` (``(n, n)``, or ``(n,)`` kept as its
    diagonal) on ``side`` of ``weight`` seen as a matrix (``None``: no distribution)."""
    layout = weight_layout(weight)
    if layout is None:
        return None
    mesh = layout.device_mesh
    sizes = dict(zip(mesh.axis_names, mesh.shape, strict=True))
    axes = tuple(layout.axes)
    if len(axes) != len(weight.shape):
        axes = (None,) * len(weight.shape)
    if kernel_order is not None:
        axes = tuple(axes[i] for i in kernel_order)
    dims = factor_axes(axes, side, shape[0], sizes, min(output_axes, len(axes)))
    return keras.distribution.TensorLayout(dims[: len(shape)], mesh)
