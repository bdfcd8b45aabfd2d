"""How ``KFAC`` sees a layer's inputs and output gradients inside an unmodified ``fit``.

Registering a model gives every eligible layer of a kind in ``KINDS`` (a
*block*; the per-kind code is in ``_kfac_layers.py``) two float32
*statistics channels*: trainable weights of the shapes of ``A`` and ``G``
whose value is never used, only their gradient. The layer's ``call`` is
shadowed (``nnkit._keras.shadow``, owner ``"kfac"``) by the same
computation with an identity *tap* on the pre-activation ``s``
(``ops.custom_gradient``). In the backward pass the tap hands the upstream
gradient on unchanged and returns, as the gradients of the two channels,
the statistics of this batch: ``E[ã ãᵀ]`` of the layer's inputs and
``E[g gᵀ]`` of the gradients with respect to ``s`` (or the output layer's
closed-form Fisher). A layer called several times in one forward pass
has one tap per call, and automatic differentiation adds the channels'
gradients: its statistics are summed over the uses. This is the route of Keras's float8 ``Dense``, which
carries its scaling statistics out of the backward pass through the gradient
of ``overwrite_with_gradient`` weights: it runs inside the compiled train
step on TensorFlow (with or without XLA, under ``tf.distribute``) and on
JAX (whose step is stateless, so no variable can be written from inside a
layer's backward pass), and costs nothing in inference (the statistics are
computed only when a gradient is). The optimizer takes the channels'
gradients out of the list before Keras's own update sees them.

While registered, the channels are part of ``layer.weights`` and of the
model's trainable weights; the layer's ``save_own_variables`` and
``load_own_variables`` are shadowed to leave them out, so a saved model
holds exactly the weights of the unregistered model and loads without
nnkit. ``remove`` undoes all of it.
"""

import contextlib
import dataclasses
import threading

import keras
from keras import ops

from nnkit._keras import layers as keras_layers
from nnkit._keras import shadow, train_function
from nnkit._keras.fit import explicit_strategy
from nnkit.optimizers import _kfac_layers as kinds
from nnkit.optimizers import _kfac_math as kmath

OWNER = "kfac"
KINDS = kinds.KINDS


@dataclasses.dataclass(eq=False)
class Block:
    """One registered layer: its weights, its statistics channels, and what was patched.

    The kernel is one ``(d_in, d_out)`` matrix after transposing its axes to
    ``kernel_order`` (``None``: as they are) and flattening all but the last
    ``output_axes``; ``diagonal_input``: ``A`` is diagonal and kept as its
    diagonal (an ``Embedding``). ``diagonal_output``: a diagonal block
    ``1 ⊗ diag(G)`` whose gradient matrix is the one row ``[∇γ, ∇β]`` (a
    normalization's scale and shift). ``layout``: an ``EinsumDense``'s parsed
    equation.
    """

    layer: object
    kind: str
    kernel: object
    bias: object  # None without a bias
    input_channel: object = None
    output_channel: object = None
    output_fisher: str = "empirical"  # or the loss of the output layer's closed form
    patches: list = dataclasses.field(default_factory=list)
    kernel_order: tuple = None
    output_axes: int = 1
    diagonal_input: bool = False
    diagonal_output: bool = False
    layout: dict = None

    @property
    def name(self):
        return self.layer.path if hasattr(self.layer, "path") else self.layer.name

    def _matrix_shape(self):
        shape = [int(size) for size in self.kernel.shape]
        if self.kernel_order is not None:
            shape = [shape[axis] for axis in self.kernel_order]
        return shape

    @property
    def input_dim(self):
        if self.diagonal_output:
            return 1
        return _prod(self._matrix_shape()[: -self.output_axes]) + (self.bias is not None)

    @property
    def output_dim(self):
        if self.diagonal_output:
            return _prod(self.kernel.shape) + (0 if self.bias is None else _prod(self.bias.shape))
        return _prod(self._matrix_shape()[-self.output_axes :])

    @property
    def a_shape(self):
        """``A``'s shape: ``(d_in,)`` when kept as its diagonal, else ``(d_in, d_in)``."""
        return (self.input_dim,) if self.diagonal_input else (self.input_dim,) * 2

    @property
    def g_shape(self):
        """``G``'s shape: ``(d_out,)`` when kept as its diagonal, else ``(d_out, d_out)``."""
        return (self.output_dim,) if self.diagonal_output else (self.output_dim,) * 2

    @property
    def channels(self):
        return (self.input_channel, self.output_channel)

    def gradient_matrix(self, kernel_grad, bias_grad):
        """``[∇W; ∇b]`` as the ``(input_dim, output_dim)`` matrix the factors act on."""
        kernel_grad = ops.cast(ops.convert_to_tensor(kernel_grad), "float32")
        if self.diagonal_output:
            row = [ops.reshape(kernel_grad, (1, -1))]
            if self.bias is not None:
                row.append(ops.reshape(ops.cast(bias_grad, "float32"), (1, -1)))
            return ops.concatenate(row, axis=1) if len(row) > 1 else row[0]
        if self.kernel_order is not None:
            kernel_grad = ops.transpose(kernel_grad, self.kernel_order)
        rows = ops.reshape(kernel_grad, (-1, self.output_dim))
        if self.bias is None:
            return rows
        bias_row = ops.reshape(ops.cast(bias_grad, "float32"), (1, self.output_dim))
        return ops.concatenate([rows, bias_row], axis=0)

    def split(self, matrix):
        """The inverse of ``gradient_matrix``: ``(kernel part, bias part or None)``."""
        if self.diagonal_output:
            size = _prod(self.kernel.shape)
            kernel = ops.reshape(matrix[0, :size], self.kernel.shape)
            bias = None if self.bias is None else ops.reshape(matrix[0, size:], self.bias.shape)
            return kernel, bias
        kernel_rows = self.input_dim - (self.bias is not None)
        kernel = ops.reshape(matrix[:kernel_rows], self._matrix_shape())
        if self.kernel_order is not None:
            inverse = sorted(range(len(self.kernel_order)), key=self.kernel_order.__getitem__)
            kernel = ops.transpose(kernel, inverse)
        bias = None if self.bias is None else ops.reshape(matrix[kernel_rows:], self.bias.shape)
        return kernel, bias


def _own_trainable_weights(layer):
    inner = {id(w) for sub in keras_layers.walk(layer, include_self=False) for w in sub.weights}
    return [w for w in layer.trainable_weights if id(w) not in inner]


def plan(model):
    """``(blocks to make: [(layer, kind)], first-order layers: ["path (reason)"])``."""
    blocks, fallback = [], []
    for layer in keras_layers.walk(model, include_self=False):
        kind = KINDS.get(type(layer))
        if kind is None:
            reason = kinds.FIRST_ORDER.get(type(layer), kinds.OTHER)
        else:
            reason = kinds.ineligible_reason(layer, kind)
        if reason is None:
            if shadow.is_shadowed(layer, "call", OWNER):
                raise ValueError(
                    f"Layer {layer.name!r} is already registered with a KFAC optimizer; "
                    "call that optimizer's unregister() first."
                )
            blocks.append((layer, kind))
        elif _own_trainable_weights(layer):
            fallback.append(f"{getattr(layer, 'path', layer.name)} ({reason})")
    return blocks, fallback


def check_output_layer(model, layer, output_fisher):
    """Raise unless ``layer`` (the model's last) can take the closed-form ``output_fisher``."""
    allowed = {
        "mean_squared_error": (keras.activations.linear,),
        "categorical_crossentropy": (keras.activations.linear, keras.activations.softmax),
        "binary_crossentropy": (keras.activations.linear, keras.activations.sigmoid),
    }[output_fisher]
    if layer is None or model.layers[-1] is not layer or KINDS[type(layer)] == "scale_shift":
        raise ValueError(
            f"`output_fisher={output_fisher!r}` needs the model's last layer to be a Dense, "
            "convolution, EinsumDense or Embedding layer that KFAC registers (its pre-activation is the output the loss "
            "sees). Use output_fisher='empirical' for this model. Received: last layer "
            f"{model.layers[-1].name!r}"
        )
    if kinds.activation_of(layer) not in allowed:
        raise ValueError(
            f"`output_fisher={output_fisher!r}` needs the output layer's activation to be one "
            f"of {[a.__name__ for a in allowed]}. Received: activation="
            f"{kinds.activation_of(layer).__name__!r} on layer {layer.name!r}"
        )


_LOCAL = threading.local()


@contextlib.contextmanager
def untapped():
    """A context in which registered layers compute without their taps (plain functions).

    For ``KFAC``'s curvature-vector products: forward-mode differentiation
    does not pass through a custom gradient (JAX's ``custom_vjp``), and the
    statistics are not wanted there.
    """
    before = getattr(_LOCAL, "untapped", False)
    _LOCAL.untapped = True
    try:
        yield
    finally:
        _LOCAL.untapped = before


def _tap(block, preactivation, inputs):
    """Identity on ``preactivation``; its backward pass returns the two statistics."""
    if getattr(_LOCAL, "untapped", False):
        return preactivation

    @ops.custom_gradient
    def tap(s, x, input_channel, output_channel):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            a = kinds.input_statistic(block, x)
            if block.output_fisher == "empirical":
                g = kinds.output_statistic(block, x, upstream)
            else:
                g = kmath.output_fisher_statistic(kinds.output_rows(block, s), block.output_fisher)
            return upstream, None, a, g

        return s, grad

    return tap(
        preactivation,
        inputs,
        ops.convert_to_tensor(block.input_channel),
        ops.convert_to_tensor(block.output_channel),
    )


def _save_without(channels):
    """``save_own_variables`` that writes what the unregistered layer writes."""

    def save_own_variables(call_next, store):
        written = {}
        call_next(written)
        kept = [
            written[key]
            for key in sorted(written, key=int)
            if not any(written[key] is c for c in channels)
        ]
        for index, value in enumerate(kept):
            store[str(index)] = value

    return save_own_variables


def _load_without(layer, channels):
    """``load_own_variables`` that reads what the unregistered layer wrote."""

    def load_own_variables(call_next, store):
        saved = iter(range(len(store.keys())))
        full = {}
        for index, weight in enumerate(layer.weights):
            if any(weight is c for c in channels):
                full[str(index)] = ops.convert_to_tensor(weight)
            else:
                key = next(saved, None)
                full[str(index)] = store[str(key)] if key is not None else None
        if any(value is None for value in full.values()) or next(saved, None) is not None:
            return call_next(store)  # a count mismatch: Keras reports it
        return call_next(full)

    return load_own_variables


def _channel(layer, shape, side):
    """The float32 statistics channel ``kfac_<side>_statistic`` of ``shape`` on ``layer``
    (inside ``unlocked``)."""
    return layer.add_weight(
        shape=shape,
        initializer="zeros",
        dtype="float32",
        trainable=True,
        autocast=False,
        aggregation="only_first_replica",
        overwrite_with_gradient=True,
        name=f"kfac_{side}_statistic",
    )


def make_blocks(model, planned, output_fisher):
    """Add the channels to and patch every planned layer; return the ``Block`` list.

    With a closed-form ``output_fisher`` the model's last layer (checked by
    ``check_output_layer``) takes it; every other block is empirical.
    """
    strategy = explicit_strategy(model)
    blocks = []
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        for layer, kind in planned:
            is_output = output_fisher != "empirical" and layer is model.layers[-1]
            block = Block(
                layer,
                kind,
                output_fisher=output_fisher if is_output else "empirical",
                **kinds.geometry(layer, kind),
            )
            with keras_layers.unlocked(layer):
                block.input_channel = _channel(layer, block.a_shape, "input")
                block.output_channel = _channel(layer, block.g_shape, "output")
            call = kinds.make_call(block, _tap)
            channels = block.channels
            block.patches = [
                shadow.shadow(layer, "call", call, owner=OWNER),
                shadow.shadow(layer, "save_own_variables", _save_without(channels), owner=OWNER),
                shadow.shadow(
                    layer, "load_own_variables", _load_without(layer, channels), owner=OWNER
                ),
            ]
            blocks.append(block)
    train_function.discard(model)
    return blocks


def remove(model, blocks):
    """Undo ``make_blocks``: the layers are exactly as they were."""
    for block in blocks:
        for patch in reversed(block.patches):
            shadow.unshadow(patch)
        block.patches = []
        for channel in block.channels:
            keras_layers.remove_weight(block.layer, channel)
    if model is not None:
        train_function.discard(model)


def _prod(shape):
    result = 1
    for size in shape:
        result *= int(size)
    return result
