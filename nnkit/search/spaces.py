"""Ready spaces over nnkit's blocks: a staged residual MLP and small Conv1D and Conv2D networks.

Both are `ArchitectureSpace`s built from `stage_choices` and plain `Choice`s:
the staged depth is a choice, each stage's width (and kernel) is conditional
on it, and the options a choice does not use (pre-activation and drop-path
for a plain stack) are conditional on the skip pattern. Write your own space
the same way (docs/architecture-search.md, "Adding a space").
"""

import keras

from nnkit import _validation as v
from nnkit.layers import DenseBlock, ResidualBlock
from nnkit.search.space import ArchitectureSpace, Choice, stage_choices

_NONE = "none"  # keras-tuner's Choice takes no None
_ACTIVATIONS = ("relu", "gelu", "silu", "swish", "elu", "selu", "tanh", "sigmoid", "linear")


def _options(name, values, allowed=None, kind=None):
    """``values`` as a tuple of options, checked with ``name`` in the message."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
        raise TypeError(
            f"`{name}` must be a non-empty list or tuple of options. Received: {name}={values!r}"
        )
    for value in values:
        if kind is int:
            v.check_positive_int(name, value)
        elif kind is float:
            v.check_number(name, value, minimum=0.0, maximum=0.99)
        elif kind is bool:
            v.check_bool(name, value)
        elif allowed is not None and value not in allowed:
            raise ValueError(
                f"`{name}` options must be among {allowed}. Received: {name}={values!r}"
            )
    if len(set(values)) != len(values):
        raise ValueError(f"`{name}` repeats an option. Received: {name}={values!r}")
    return tuple(values)


def _key(stage, name):
    return f"stage_{stage}_{name}"


def _norm(value):
    return None if value == _NONE else value


def build_residual_mlp(arch, input_shape, num_classes):
    """The MLP of ``arch`` (a `residual_mlp_space` architecture), uncompiled."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    residual = arch["skip"] == "residual"
    for i in range(arch["stages"]):
        for _ in range(arch[_key(i, "depth")]):
            width = arch[_key(i, "width")]
            if residual:
                x = ResidualBlock(
                    width,
                    activation=arch["activation"],
                    normalization=_norm(arch["normalization"]),
                    dropout=arch["dropout"],
                    drop_path=arch["drop_path"],
                    pre_activation=arch["pre_activation"],
                )(x)
            else:
                x = DenseBlock(
                    width,
                    activation=arch["activation"],
                    normalization=_norm(arch["normalization"]),
                    dropout=arch["dropout"],
                )(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs)


def residual_mlp_space(
    *,
    stages=(1, 2, 3),
    depths=(1, 2),
    widths=(32, 64, 128),
    activations=("relu", "gelu"),
    normalizations=("none", "batch", "layer"),
    dropouts=(0.0, 0.1),
):
    """A staged MLP space over `DenseBlock` / `ResidualBlock` (logits out).

    Choices: ``stages``; per stage ``stage_{i}_depth`` (blocks) and
    ``stage_{i}_width``; ``skip`` (``"residual"``: `ResidualBlock`s, ``"plain"``:
    `DenseBlock`s); ``activation``, ``normalization``, ``dropout``; and, only
    when ``skip="residual"``, ``pre_activation`` (pre/post-norm) and
    ``drop_path``. The built model has ``Σ_i stage_{i}_depth`` blocks.

    Args:
        stages: Options for the number of stages. Defaults to ``(1, 2, 3)``.
        depths: Options for the blocks per stage. Defaults to ``(1, 2)``.
        widths: Options for a stage's width. Defaults to ``(32, 64, 128)``.
        activations: Activation names. Defaults to ``("relu", "gelu")``.
        normalizations: ``"none"``, ``"batch"``, ``"layer"``.
            Defaults to ``("none", "batch", "layer")``.
        dropouts: Dropout rates. Defaults to ``(0.0, 0.1)``.

    Returns:
        An `ArchitectureSpace` named ``"residual_mlp"``.

    Example:
    >>> from nnkit.search import residual_mlp_space
    >>> space = residual_mlp_space(stages=(1,), depths=(2,), widths=(8,))
    >>> arch = space.architectures()[0]
    >>> model = space.build(arch, (4,), 3)
    >>> tuple(model.output_shape)
    (None, 3)
    """
    stages = _options("stages", stages, kind=int)
    depths = _options("depths", depths, kind=int)
    widths = _options("widths", widths, kind=int)
    activations = _options("activations", activations, allowed=_ACTIVATIONS)
    normalizations = _options("normalizations", normalizations, allowed=("none", "batch", "layer"))
    dropouts = tuple(float(d) for d in _options("dropouts", dropouts, kind=float))
    choices = stage_choices(stages, {"depth": depths, "width": widths})
    choices += [
        Choice("skip", ["residual", "plain"]),
        Choice("activation", activations),
        Choice("normalization", normalizations),
        Choice("dropout", dropouts),
        Choice("pre_activation", [False, True], parent="skip", parent_values=["residual"]),
        Choice("drop_path", [0.0, 0.1], parent="skip", parent_values=["residual"]),
    ]
    return ArchitectureSpace(choices, build=build_residual_mlp, name="residual_mlp")


def _build_staged_conv(arch, input_shape, num_classes, rank):
    """The staged convolutional network of ``arch`` in ``rank`` spatial dimensions, uncompiled."""
    layers = keras.layers
    conv, average, maximum, global_average, global_max = {
        1: (layers.Conv1D, layers.AveragePooling1D, layers.MaxPooling1D,
            layers.GlobalAveragePooling1D, layers.GlobalMaxPooling1D),
        2: (layers.Conv2D, layers.AveragePooling2D, layers.MaxPooling2D,
            layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D),
    }[rank]  # fmt: skip
    inputs = keras.Input(input_shape)
    x = layers.Reshape((*input_shape, 1))(inputs) if len(input_shape) == rank else inputs
    for i in range(arch["stages"]):
        channels = arch[_key(i, "channels")]
        kernel = arch[_key(i, "kernel")]
        stride = 2 if arch["downsample"] == "stride" else 1
        h = conv(channels, kernel, strides=stride, padding="same", activation="relu")(x)
        if arch["residual"]:
            h = conv(channels, kernel, padding="same")(h)
            shortcut = x
            if stride > 1:
                shortcut = average(2, padding="same")(shortcut)
            if shortcut.shape[-1] != channels:
                shortcut = conv(channels, 1, use_bias=False)(shortcut)
            h = layers.Activation("relu")(layers.Add()([h, shortcut]))
        if arch["downsample"] == "max":
            h = maximum(2, padding="same")(h)
        x = h
    if arch["head"] == "avg":
        x = global_average()(x)
    elif arch["head"] == "max":
        x = global_max()(x)
    else:
        x = layers.Flatten()(x)
    outputs = layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs)


def build_conv1d(arch, input_shape, num_classes):
    """The Conv1D network of ``arch`` (a `conv1d_space` architecture), uncompiled."""
    return _build_staged_conv(arch, input_shape, num_classes, rank=1)


def conv1d_space(
    *,
    stages=(1, 2, 3),
    channels=(8, 16, 32),
    kernels=(3, 5),
    downsample=("max", "stride"),
    residual=(False, True),
    head=("avg", "flatten"),
):
    """A small staged Conv1D space for sequences (logits out).

    Choices: ``stages``; per stage ``stage_{i}_channels`` and
    ``stage_{i}_kernel``; ``downsample`` (``"max"``: a max-pool by 2 after
    each stage, ``"stride"``: the stage's first convolution has stride 2);
    ``residual`` (a second convolution and a shortcut, 1×1-projected when
    the channels change); ``head`` (``"avg"``/``"max"`` global pooling or
    ``"flatten"``), then one ``Dense`` to the logits. The built model has
    ``stages`` (``2·stages`` when residual) convolutions besides projections.

    Args:
        stages: Options for the number of stages. Defaults to ``(1, 2, 3)``.
        channels: Options for a stage's channels. Defaults to ``(8, 16, 32)``.
        kernels: Options for a stage's kernel size. Defaults to ``(3, 5)``.
        downsample: ``"max"`` and/or ``"stride"``. Defaults to ``("max", "stride")``.
        residual: ``False`` and/or ``True``. Defaults to ``(False, True)``.
        head: ``"avg"``, ``"max"``, ``"flatten"``. Defaults to ``("avg", "flatten")``.

    Returns:
        An `ArchitectureSpace` named ``"conv1d"``.

    Example:
    >>> from nnkit.search import conv1d_space
    >>> space = conv1d_space(kernels=(5,), downsample=("max",))
    >>> space.size  # (3 + 9 + 27) channel patterns x residual x head
    156
    """
    stages = _options("stages", stages, kind=int)
    channels = _options("channels", channels, kind=int)
    kernels = _options("kernels", kernels, kind=int)
    downsample = _options("downsample", downsample, allowed=("max", "stride"))
    residual = _options("residual", residual, kind=bool)
    head = _options("head", head, allowed=("avg", "max", "flatten"))
    choices = stage_choices(stages, {"channels": channels, "kernel": kernels})
    choices += [
        Choice("downsample", downsample),
        Choice("residual", residual),
        Choice("head", head),
    ]
    return ArchitectureSpace(choices, build=build_conv1d, name="conv1d")


def build_conv2d(arch, input_shape, num_classes):
    """The Conv2D network of ``arch`` (a `conv2d_space` architecture), uncompiled."""
    return _build_staged_conv(arch, input_shape, num_classes, rank=2)


def conv2d_space(
    *,
    stages=(1, 2),
    channels=(8, 16, 32),
    kernels=(3, 5),
    downsample=("max", "stride", "none"),
    residual=(False, True),
    head=("avg", "flatten"),
):
    """A small staged Conv2D space for little images such as the 8×8 digits (logits out).

    Choices: ``stages``; per stage ``stage_{i}_channels`` and
    ``stage_{i}_kernel`` (square); ``downsample`` (``"max"``: a 2×2 max-pool
    after each stage, ``"stride"``: the stage's first convolution has stride
    2, ``"none"``: full resolution throughout); ``residual`` (a second
    convolution and a shortcut, 1×1-projected when the channels change,
    average-pooled when strided); ``head`` (``"avg"``/``"max"`` global
    pooling or ``"flatten"``), then one ``Dense`` to the logits. An input of
    rank 2 (``(8, 8)``) gets a channel axis. The built model has ``stages``
    (``2·stages`` when residual) convolutions besides projections.

    Args:
        stages: Options for the number of stages (two halvings take 8×8 to
            2×2). Defaults to ``(1, 2)``.
        channels: Options for a stage's channels. Defaults to ``(8, 16, 32)``.
        kernels: Options for a stage's kernel size. Defaults to ``(3, 5)``.
        downsample: ``"max"``, ``"stride"`` and/or ``"none"``.
            Defaults to ``("max", "stride", "none")``.
        residual: ``False`` and/or ``True``. Defaults to ``(False, True)``.
        head: ``"avg"``, ``"max"``, ``"flatten"``. Defaults to ``("avg", "flatten")``.

    Returns:
        An `ArchitectureSpace` named ``"conv2d"``.

    Example:
    >>> from nnkit.search import conv2d_space
    >>> space = conv2d_space()
    >>> space.size  # (6 + 36) stage patterns x 3 downsample x 2 residual x 2 head
    504
    >>> model = space.build(space.architectures()[0], (8, 8), 10)
    >>> tuple(model.output_shape)
    (None, 10)
    """
    stages = _options("stages", stages, kind=int)
    channels = _options("channels", channels, kind=int)
    kernels = _options("kernels", kernels, kind=int)
    downsample = _options("downsample", downsample, allowed=("max", "stride", "none"))
    residual = _options("residual", residual, kind=bool)
    head = _options("head", head, allowed=("avg", "max", "flatten"))
    choices = stage_choices(stages, {"channels": channels, "kernel": kernels})
    choices += [
        Choice("downsample", downsample),
        Choice("residual", residual),
        Choice("head", head),
    ]
    return ArchitectureSpace(choices, build=build_conv2d, name="conv2d")
