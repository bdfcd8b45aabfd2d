"""KFAC's layer kinds against numpy: Conv1D/Conv3D patches, EinsumDense, MultiHeadAttention.

Every case is one layer with a linear output under ``mse``, so the gradient of
the batch-mean loss with respect to the pre-activation is ``u = 2(s − y)/N``
(``N`` the number of output elements) and the per-example gradient is ``B·u``.
Numpy builds the layer's rows (patches, transposed einsum operands) by hand,
then ``A = E[ã ãᵀ]`` over the rows, ``G = B·Σ u uᵀ`` and one K-FAC step with eigenvalue damping ``(A ⊗ G + λI)⁻¹ vec ∇`` (learning rate 1,
no momentum, no averaging). The factors are the statistics channels'
gradients of that step (``statistics_decay=0``). Embedding, LayerNormalization,
tied layers and the JAX backend: ``test_kfac_layers_diagonal.py``.
"""

import keras
import numpy as np
import pytest

from nnkit.optimizers import KFAC

DAMPING = 0.05


def _np(value):
    """A variable's or tensor's value as a numpy array, on any backend."""
    tensor = keras.ops.convert_to_tensor(value)
    return tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)


def _kfac(model):
    return KFAC(
        1.0, model=model, damping=DAMPING, damping_type="eigen", momentum=0.0,
        statistics_decay=0.0, refresh_every=1, kl_clip=None,
    )  # fmt: skip


def _factor(optimizer, side):
    (factor,) = [v for v in optimizer.variables if v.name.endswith(f"_{side}_factor")]
    return _np(factor)


def _numpy_step(rows, u, batch, *, bias):
    """``(A, G, Δ)`` of one K-FAC step from the rows ``ã`` and the rows of ``u = ∂L/∂s``."""
    if bias:
        rows = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
    a = rows.T @ rows / len(rows)
    g = batch * u.T @ u
    grad = rows.T @ u
    fisher = np.kron(a, g)  # row-major vec of the (d_in, d_out) gradient matrix
    delta = np.linalg.solve(fisher + DAMPING * np.eye(len(fisher)), grad.reshape(-1))
    return a, g, delta.reshape(grad.shape)


def check_one_step(model, layer, x, y, case, *, diagonal=False):
    """Fit one full-batch step; compare the factors and the new weights with numpy's."""
    kernel0 = _np(case["kernel"](layer)).astype("float64")
    w = case["to_matrix"](kernel0)
    bias = getattr(layer, "bias", None)
    b = None if bias is None else _np(bias).astype("float64").reshape(-1)
    rows = case["rows"](x.astype("float64"))
    s = rows @ w + (0.0 if b is None else b)
    out = case["out_rows"](_np(model(x)))
    np.testing.assert_allclose(out, s, rtol=1e-4, atol=1e-4)  # the rows are the layer's
    u = 2.0 * (s - case["out_rows"](y.astype("float64"))) / y.size
    a, g, delta = _numpy_step(rows, u, len(x), bias=b is not None)
    optimizer = _kfac(model)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(_factor(optimizer, "a"), np.diag(a) if diagonal else a,
                               rtol=1e-4, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(_factor(optimizer, "g"), g, rtol=1e-4, atol=1e-7)
    kernel = _np(case["kernel"](layer))
    d_in = w.shape[0]
    np.testing.assert_allclose(kernel, case["from_matrix"](w - delta[:d_in]), rtol=1e-3,
                               atol=1e-5)  # fmt: skip
    if b is not None:
        got = _np(layer.bias).reshape(-1)
        np.testing.assert_allclose(got, b - delta[d_in], rtol=1e-3, atol=1e-5)
    return optimizer


# -- convolutions ------------------------------------------------------------------


def _same_padding(size, k, stride, dilation):
    span = dilation * (k - 1) + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def _patches(x, k, *, stride, dilation, padding):
    """Channels-last patches ``(rows, k₁·…·c_in)`` of a 1-, 2- or 3-D input, row-major offsets."""
    rank = x.ndim - 2
    pads = [(0, 0)]
    for axis in range(rank):
        size = x.shape[1 + axis]
        if padding == "valid":
            pads.append((0, 0))
        elif padding == "causal":
            pads.append((dilation[axis] * (k[axis] - 1), 0))
        else:
            pads.append(_same_padding(size, k[axis], stride[axis], dilation[axis]))
    x = np.pad(x, [*pads, (0, 0)])
    counts = [(x.shape[1 + a] - dilation[a] * (k[a] - 1) - 1) // stride[a] + 1 for a in range(rank)]
    rows = []
    for n in range(x.shape[0]):
        for position in np.ndindex(*counts):
            window = []
            for offset in np.ndindex(*k):
                index = tuple(
                    position[a] * stride[a] + offset[a] * dilation[a] for a in range(rank)
                )
                window.append(x[(n, *index)])
            rows.append(np.concatenate(window))
    return np.array(rows)


CONVS = {
    "conv1d-valid-strided": (keras.layers.Conv1D, dict(kernel_size=3, strides=2), (9, 2)),
    "conv1d-causal-dilated": (
        keras.layers.Conv1D, dict(kernel_size=2, dilation_rate=2, padding="causal"), (7, 3),
    ),
    "conv1d-same-no-bias": (
        keras.layers.Conv1D, dict(kernel_size=3, padding="same", use_bias=False), (6, 2),
    ),
    "conv1d-channels-first": (
        keras.layers.Conv1D, dict(kernel_size=2, data_format="channels_first"), (2, 6),
    ),
    "conv3d-valid": (keras.layers.Conv3D, dict(kernel_size=2), (3, 4, 3, 2)),
    "conv3d-same-strided": (
        keras.layers.Conv3D, dict(kernel_size=(2, 3, 2), strides=2, padding="same"), (4, 5, 3, 1),
    ),
}  # fmt: skip


def conv_case(key, seed=0):
    cls, kwargs, shape = CONVS[key]
    keras.utils.set_random_seed(seed)
    layer = cls(2, **kwargs)
    model = keras.Sequential([keras.Input(shape), layer])
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=(3, *shape)).astype("float32")
    y = rng.normal(size=(3, *model.output_shape[1:])).astype("float32")
    first = kwargs.get("data_format") == "channels_first"
    rank = len(shape) - 1

    def last(t):
        return np.moveaxis(t, 1, -1) if first else t

    k = tuple(layer.kernel_size)
    case = {
        "kernel": lambda layer: layer.kernel,
        "to_matrix": lambda kernel: kernel.reshape(-1, kernel.shape[-1]),
        "from_matrix": lambda m: m.reshape(*k, -1, 2),
        "rows": lambda x: _patches(
            last(x),
            k,
            stride=layer.strides,
            dilation=layer.dilation_rate,
            padding=kwargs.get("padding", "valid"),
        ),  # fmt: skip
        "out_rows": lambda t: last(t).reshape(-1, 2),
    }
    assert len(k) == rank
    return model, layer, x, y, case


@pytest.mark.parametrize("key", sorted(CONVS))
def test_conv_factors_are_patch_statistics_and_the_step_is_numpys(key):
    model, layer, x, y, case = conv_case(key)
    optimizer = check_one_step(model, layer, x, y, case)
    assert optimizer.registered_layers == [layer.path]


def test_grouped_convolution_stays_first_order_with_its_reason():
    model = keras.Sequential([keras.Input((6, 4)), keras.layers.Conv1D(4, 2, groups=2)])
    with pytest.warns(UserWarning, match=r"grouped convolution \(groups=2\)"):
        optimizer = KFAC(model=model)
    assert optimizer.registered_layers == []


# -- EinsumDense -------------------------------------------------------------------

EINSUMS = {
    # equation, output shape, bias axes, input shape
    "sequence": ("abc,cd->abd", (4, 3), "d", (4, 5)),
    "transposed-kernel": ("abc,dc->abd", (4, 3), "d", (4, 5)),
    "two-output-axes": ("abc,cde->abde", (4, 2, 3), "de", (4, 5)),
    "two-contracted-axes": ("abcd,cde->abe", (4, 3), "e", (4, 2, 3)),
    "ellipsis-no-bias": ("...b,bc->...c", 3, None, (4, 5)),
    "interleaved-output": ("abc,cd->adb", (3, 4), "d", (4, 5)),
}


def einsum_case(key, seed=0):
    equation, output_shape, bias_axes, shape = EINSUMS[key]
    keras.utils.set_random_seed(seed)
    layer = keras.layers.EinsumDense(equation, output_shape, bias_axes=bias_axes)
    model = keras.Sequential([keras.Input(shape), layer])
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=(3, *shape)).astype("float32")
    y = rng.normal(size=(3, *model.output_shape[1:])).astype("float32")
    kernel_shape = tuple(layer.kernel.shape)
    if key == "transposed-kernel":  # kernel (d, c): the matrix is its transpose
        to_matrix, from_matrix = (lambda k: k.T), (lambda m: m.T)
    elif key == "two-output-axes":  # kernel (c, d, e): c rows, (d, e) columns
        to_matrix = lambda k: k.reshape(kernel_shape[0], -1)  # noqa: E731
        from_matrix = lambda m: m.reshape(kernel_shape)  # noqa: E731
    else:  # the contracted axes lead the kernel, one output axis
        to_matrix = lambda k: k.reshape(-1, kernel_shape[-1])  # noqa: E731
        from_matrix = lambda m: m.reshape(kernel_shape)  # noqa: E731
    contracted = 2 if key == "two-contracted-axes" else 1
    case = {
        "kernel": lambda layer: layer.kernel,
        "to_matrix": to_matrix,
        "from_matrix": from_matrix,
        "rows": lambda x: x.reshape(-1, int(np.prod(x.shape[x.ndim - contracted :]))),
        "out_rows": lambda t: t.reshape(-1, int(np.prod(t.shape[2:]))),
    }
    if key == "interleaved-output":  # output (a, d, b): the rows are (a, b)
        case["out_rows"] = lambda t: np.swapaxes(t, 1, 2).reshape(-1, t.shape[1])
    return model, layer, x, y, case


@pytest.mark.parametrize("key", sorted(EINSUMS))
def test_einsum_dense_is_a_matrix_block_and_the_step_is_numpys(key):
    model, layer, x, y, case = einsum_case(key)
    optimizer = check_one_step(model, layer, x, y, case)
    assert optimizer.registered_layers == [layer.path]


@pytest.mark.parametrize(
    ("equation", "output_shape", "bias_axes", "shape", "reason"),
    [
        ("abc,bcd->abd", (4, 3), "d", (4, 5), "shares the non-contracted axis 'b'"),
        ("abc,cde->abde", (None, 2, 3), "e", (4, 5), "not exactly the output axes 'de'"),
        ("abc,cd->abd", (4, 3), "b", (4, 5), "not exactly the output axes 'd'"),
        ("abc,cd->ad", 3, "d", (4, 5), "sums input axis 'b' away"),
    ],
)
def test_einsum_dense_that_is_no_matrix_stays_first_order(
    equation, output_shape, bias_axes, shape, reason
):
    layer = keras.layers.EinsumDense(equation, output_shape, bias_axes=bias_axes)
    model = keras.Sequential([keras.Input(shape), layer])
    with pytest.warns(UserWarning, match="first-order rule"):
        optimizer = KFAC(model=model)
    assert optimizer.registered_layers == []
    (listed,) = optimizer.first_order_layers
    assert reason in listed


def test_multi_head_attention_projections_are_blocks():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((5, 6))
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)
    outputs = attention(inputs, inputs)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 5, 6)).astype("float32")
    y = rng.normal(size=(4, 5, 6)).astype("float32")
    before = _np(model(x))
    optimizer = KFAC(0.1, model=model, statistics_decay=0.0, refresh_every=1)
    paths = [attention.query_dense, attention.key_dense, attention.value_dense,
             attention.output_dense]  # fmt: skip
    assert sorted(optimizer.registered_layers) == sorted(p.path for p in paths)
    assert optimizer.first_order_layers == []
    np.testing.assert_allclose(_np(model(x)), before, atol=1e-6)
    model.compile(optimizer=optimizer, loss="mse")
    history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    # The query, key and value projections read the same rows: A = E[[x, 1][x, 1]ᵀ].
    rows = np.concatenate([x.reshape(-1, 6), np.ones((20, 1))], axis=1)
    expected = rows.T @ rows / len(rows)
    factors = {v.name: _np(v) for v in optimizer.variables}
    for projection in ("query", "key", "value"):
        (name,) = [n for n in factors if n.endswith(f"{projection}_a_factor")]
        np.testing.assert_allclose(factors[name], expected, rtol=1e-4, atol=1e-5)
    (name,) = [n for n in factors if n.endswith("attention_output_a_factor")]
    assert factors[name].shape == (7, 7)  # heads × key_dim + 1
