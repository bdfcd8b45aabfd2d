"""Properties of Shampoo, SOAP and KFAC over kernel shapes, block sizes and ``jit_compile``.

What must hold for every kernel shape (1-D to 4-D, sides from 1 to a few
thousand), every ``max_preconditioner_dim`` and compiled or not: one or two
``fit`` steps run, the loss and the weights stay finite and every weight
keeps its shape. The failing examples Hypothesis (or issue 22) found are kept
as ``@example``: a side of length ≡ 1 mod ``max_preconditioner_dim`` left a
block of length 1, whose ``1 × 1`` eigendecomposition TensorFlow's graph
optimizer broke (a raw ``InvalidArgumentError`` in ``fit`` outside XLA).

The same properties run on JAX in ``test_jax.py``.
"""

import math

import keras
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nnkit.optimizers import KFAC, SOAP, Shampoo

#: Kernels up to this many entries (a 2049-long side times a few columns).
MAX_ENTRIES = 12_000


class Kernel(keras.layers.Layer):
    """``y = x · W`` for a weight ``W`` of any shape seen as ``(d_1⋯d_{k−1}, d_k)`` (1-D: ``x ⊙ W``)."""

    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        self.kernel_shape = tuple(shape)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=self.kernel_shape, initializer="glorot_uniform")

    def call(self, x):
        if len(self.kernel_shape) == 1:
            return x * self.kernel
        rows = math.prod(self.kernel_shape[:-1])
        return keras.ops.matmul(x, keras.ops.reshape(self.kernel, (rows, self.kernel_shape[-1])))


def _fan(shape):
    return shape[0] if len(shape) == 1 else math.prod(shape[:-1])


def _outputs(shape):
    return shape[-1]


def _fit(shape, optimizer, jit_compile, steps=2, batch=4):
    model = keras.Sequential([keras.Input((_fan(shape),)), Kernel(shape)])
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * steps, _fan(shape))).astype("float32")
    y = rng.normal(size=(batch * steps, _outputs(shape))).astype("float32")
    history = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    return model, history.history["loss"][-1]


def _assert_sane(model, shape, loss):
    assert math.isfinite(loss), loss
    (kernel,) = model.layers[-1].weights
    assert tuple(kernel.shape) == tuple(shape)
    assert bool(keras.ops.all(keras.ops.isfinite(kernel.value)))


#: At most this many blocks per kernel: each is its own eigendecomposition in
#: the traced step (a 2049-long side in blocks of 2 would trace for minutes).
MAX_BLOCKS = 12


def _blocks(shape, max_dim):
    if len(shape) < 2:
        return 1
    return math.ceil(math.prod(shape[:-1]) / max_dim) * math.ceil(shape[-1] / max_dim)


@st.composite
def kernels(draw):
    """``(shape, max_dim)``: a 1-D to 4-D kernel and a block size it splits into a few blocks."""
    max_dim = draw(st.sampled_from([1, 2, 3, 4, 1024]))
    side = st.one_of(st.integers(1, 7), st.sampled_from([1025, 2049]))
    shape = draw(
        st.lists(side, min_size=1, max_size=4)
        .map(tuple)
        .filter(lambda s: math.prod(s) <= MAX_ENTRIES and _blocks(s, max_dim) <= MAX_BLOCKS)
    )
    return shape, max_dim


jit_modes = st.sampled_from(["auto", True])


@pytest.mark.parametrize("optimizer_cls", [Shampoo, SOAP])
@settings(max_examples=3)
@given(kernel=kernels(), jit_compile=jit_modes)
# Issue 22: each of these left a block of length 1 and crashed fit on TensorFlow.
@example(kernel=((1025, 2), 1024), jit_compile="auto")  # Dense on 1,025 inputs, the defaults
@example(kernel=((2, 3), 2), jit_compile="auto")
@example(kernel=((4, 6), 3), jit_compile="auto")
@example(kernel=((5, 3), 4), jit_compile="auto")
def test_shampoo_and_soap_fit_any_kernel(optimizer_cls, kernel, jit_compile):
    shape, max_dim = kernel
    kwargs = {"max_preconditioner_dim": max_dim}
    if optimizer_cls is Shampoo:  # precondition from the first step on
        kwargs.update(start_preconditioning_step=1, refresh_every=1)
    model, loss = _fit(shape, optimizer_cls(0.01, **kwargs), jit_compile)
    _assert_sane(model, shape, loss)


dense_sides = st.one_of(st.integers(1, 6), st.just(1025))


@settings(max_examples=3)
@given(
    layers=st.one_of(
        st.tuples(st.just("dense"), dense_sides, st.integers(1, 5)),
        st.tuples(
            st.just("conv"),
            st.integers(1, 3),
            st.integers(1, 3),
            st.integers(1, 3),
            st.integers(1, 4),
        ),
    ),
    jit_compile=jit_modes,
)
@example(layers=("dense", 1, 1), jit_compile="auto")
@example(layers=("conv", 3, 1, 1, 2), jit_compile=True)
def test_kfac_fits_any_dense_or_conv_kernel(layers, jit_compile):
    rng = np.random.default_rng(0)
    if layers[0] == "dense":
        _, fan_in, units = layers
        inputs, layer, shape = (fan_in,), keras.layers.Dense(units), (fan_in, units)
        y = rng.normal(size=(8, units)).astype("float32")
    else:
        _, kh, kw, c_in, c_out = layers
        inputs, layer = (4, 4, c_in), keras.layers.Conv2D(c_out, (kh, kw))
        shape = (kh, kw, c_in, c_out)
        y = rng.normal(size=(8, 5 - kh, 5 - kw, c_out)).astype("float32")
    model = keras.Sequential([keras.Input(inputs), layer])
    optimizer = KFAC(0.01, model=model, refresh_every=1)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    x = rng.normal(size=(8, *inputs)).astype("float32")
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert math.isfinite(history.history["loss"][-1])
    kernel = layer.kernel
    assert tuple(kernel.shape) == shape
    assert bool(keras.ops.all(keras.ops.isfinite(kernel.value)))
