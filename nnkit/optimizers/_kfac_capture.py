"""How ``KFAC`` sees a layer's inputs and output gradients inside an unmodified ``fit``.

Registering a model gives every eligible ``Dense`` and ``Conv2D`` layer (a
*block*) two float32 *statistics channels*: trainable weights of the shapes
of ``A`` and ``G`` whose value is never used, only their gradient. The
layer's ``call`` is shadowed (``nnkit._keras.shadow``, owner ``"kfac"``) by
the same computation with an identity *tap* on the pre-activation ``s``
(``ops.custom_gradient``). In the backward pass the tap hands the upstream
gradient on unchanged and returns, as the gradients of the two channels,
the statistics of this batch: ``E[ã ãᵀ]`` of the layer's inputs and
``E[g gᵀ]`` of the gradients with respect to ``s`` (or the output layer's
closed-form Fisher). This is the route of Keras's float8 ``Dense``, which
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
from nnkit.optimizers import _kfac_math as kmath

OWNER = "kfac"
KINDS = {keras.layers.Dense: "dense", keras.layers.Conv2D: "conv2d"}


@dataclasses.dataclass(eq=False)
class Block:
    """One registered layer: its weights, its statistics channels, and what was patched."""

    layer: object
    kind: str
    kernel: object
    bias: object  # None without a bias
    input_channel: object
    output_channel: object
    output_fisher: str  # "empirical", or the loss of the output layer's closed form
    patches: list = dataclasses.field(default_factory=list)

    @property
    def name(self):
        return self.layer.path if hasattr(self.layer, "path") else self.layer.name

    @property
    def input_dim(self):
        return _prod(self.kernel.shape[:-1]) + (self.bias is not None)

    @property
    def output_dim(self):
        return int(self.kernel.shape[-1])

    @property
    def channels(self):
        return (self.input_channel, self.output_channel)

    def gradient_matrix(self, kernel_grad, bias_grad):
        """``[∇W; ∇b]`` as the ``(input_dim, output_dim)`` matrix the factors act on."""
        rows = ops.reshape(ops.cast(kernel_grad, "float32"), (-1, self.output_dim))
        if self.bias is None:
            return rows
        bias_row = ops.reshape(ops.cast(bias_grad, "float32"), (1, self.output_dim))
        return ops.concatenate([rows, bias_row], axis=0)

    def split(self, matrix):
        """The inverse of ``gradient_matrix``: ``(kernel part, bias part or None)``."""
        kernel_rows = self.input_dim - (self.bias is not None)
        kernel = ops.reshape(matrix[:kernel_rows], self.kernel.shape)
        bias = None if self.bias is None else ops.reshape(matrix[kernel_rows:], self.bias.shape)
        return kernel, bias


def _ineligible_reason(layer):
    """Why a ``Dense``/``Conv2D`` layer cannot be a block (``None`` when it can)."""
    if not layer.built:
        return "not built"
    if not layer.trainable:
        return "not trainable"
    if getattr(layer, "lora_enabled", False):
        return "LoRA enabled"
    if layer.quantization_mode is not None:
        return f"quantized ({layer.quantization_mode})"
    if isinstance(layer, keras.layers.Conv2D) and layer.groups != 1:
        return f"grouped convolution (groups={layer.groups})"
    return None


def _own_trainable_weights(layer):
    inner = {id(w) for sub in keras_layers.walk(layer, include_self=False) for w in sub.weights}
    return [w for w in layer.trainable_weights if id(w) not in inner]


def plan(model):
    """``(blocks to make: [(layer, kind)], first-order layers: ["path (reason)"])``."""
    blocks, fallback = [], []
    for layer in keras_layers.walk(model, include_self=False):
        kind = KINDS.get(type(layer))
        reason = "not a Dense or Conv2D layer" if kind is None else _ineligible_reason(layer)
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


def _activation_of(layer):
    return layer.activation if layer.activation is not None else keras.activations.linear


def check_output_layer(model, layer, output_fisher):
    """Raise unless ``layer`` (the model's last) can take the closed-form ``output_fisher``."""
    allowed = {
        "mean_squared_error": (keras.activations.linear,),
        "categorical_crossentropy": (keras.activations.linear, keras.activations.softmax),
        "binary_crossentropy": (keras.activations.linear, keras.activations.sigmoid),
    }[output_fisher]
    if layer is None or model.layers[-1] is not layer:
        raise ValueError(
            f"`output_fisher={output_fisher!r}` needs the model's last layer to be a Dense or "
            "Conv2D layer that KFAC registers (its pre-activation is the output the loss "
            "sees). Use output_fisher='empirical' for this model. Received: last layer "
            f"{model.layers[-1].name!r}"
        )
    if _activation_of(layer) not in allowed:
        raise ValueError(
            f"`output_fisher={output_fisher!r}` needs the output layer's activation to be one "
            f"of {[a.__name__ for a in allowed]}. Received: activation="
            f"{_activation_of(layer).__name__!r} on layer {layer.name!r}"
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
    layer = block.layer
    bias = block.bias is not None

    @ops.custom_gradient
    def tap(s, x, input_channel, output_channel):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            if block.kind == "dense":
                a = kmath.dense_input_statistic(x, bias=bias)
            else:
                a = kmath.covariance(
                    kmath.conv_patches(
                        x,
                        layer.kernel_size,
                        strides=list(layer.strides),
                        padding=layer.padding,
                        dilation_rate=layer.dilation_rate,
                        data_format=layer.data_format,
                    ),
                    bias=bias,
                )
            g_rows = (
                upstream
                if block.kind == "dense" or layer.data_format == "channels_last"
                else (ops.moveaxis(upstream, 1, -1))
            )
            if block.output_fisher == "empirical":
                g = kmath.output_statistic(g_rows)
            else:
                s_rows = (
                    s
                    if block.kind == "dense" or layer.data_format == "channels_last"
                    else (ops.moveaxis(s, 1, -1))
                )
                g = kmath.output_fisher_statistic(s_rows, block.output_fisher)
            return upstream, None, a, g

        return s, grad

    return tap(
        preactivation,
        inputs,
        ops.convert_to_tensor(block.input_channel),
        ops.convert_to_tensor(block.output_channel),
    )


def _dense_call(block):
    layer = block.layer

    def call(call_next, inputs, *args, **kwargs):
        s = ops.matmul(inputs, layer.kernel)
        if layer.bias is not None:
            s = ops.add(s, layer.bias)
        return _activation_of(layer)(_tap(block, s, inputs))

    return call


def _conv_call(block):
    layer = block.layer

    def call(call_next, inputs, *args, **kwargs):
        s = layer.convolution_op(inputs, layer.kernel)
        if layer.use_bias:
            if layer.data_format == "channels_last":
                shape = (1,) * (layer.rank + 1) + (layer.filters,)
            else:
                shape = (1, layer.filters) + (1,) * layer.rank
            s = ops.add(s, ops.reshape(layer.bias, shape))
        return _activation_of(layer)(_tap(block, s, inputs))

    return call


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


def _channel(layer, dim, side):
    """The ``(dim, dim)`` float32 statistics channel ``kfac_<side>_statistic`` on ``layer``
    (inside ``unlocked``)."""
    return layer.add_weight(
        shape=(dim, dim),
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
            kernel, bias = layer.kernel, layer.bias
            input_dim = _prod(kernel.shape[:-1]) + (bias is not None)
            output_dim = int(kernel.shape[-1])
            with keras_layers.unlocked(layer):
                input_channel = _channel(layer, input_dim, "input")
                output_channel = _channel(layer, output_dim, "output")
            block = Block(
                layer,
                kind,
                kernel,
                bias,
                input_channel,
                output_channel,
                output_fisher if is_output else "empirical",
            )
            call = _dense_call(block) if kind == "dense" else _conv_call(block)
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
