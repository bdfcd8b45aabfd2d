"""L1, L2 and WeightDecay against closed forms, their gradients, and the optimizer equivalences."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.regularizers import L1, L2, WeightDecay
from nnkit.testing import assert_round_trip

RNG = np.random.default_rng(0)
W = RNG.normal(size=(7, 5)).astype("float32")  # no exact zeros: sign(W) is the L1 gradient

# (regularizer factory, closed-form value, closed-form gradient) for strength lam.
CASES = {
    "L1": (L1, lambda w, lam: lam * np.abs(w).sum(), lambda w, lam: lam * np.sign(w)),
    "L2": (L2, lambda w, lam: lam * (w**2).sum(), lambda w, lam: 2 * lam * w),
    "WeightDecay": (WeightDecay, lambda w, lam: lam / 2 * (w**2).sum(), lambda w, lam: lam * w),
}


def _run(fn, x, mode):
    if mode == "eager":
        return fn(x)
    return tf.function(fn, jit_compile=(mode == "xla"))(x)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("lam", [0.0, 1e-4, 0.3])
def test_value_matches_closed_form(name, lam, mode):
    cls, value, _ = CASES[name]
    got = float(_run(cls(lam), tf.constant(W), mode))
    np.testing.assert_allclose(got, value(W.astype(np.float64), lam), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_closed_form(name, mode):
    cls, _, gradient = CASES[name]
    regularizer, lam = cls(0.05), 0.05

    def grad(w):
        with tf.GradientTape() as tape:
            tape.watch(w)
            penalty = regularizer(w)
        return tape.gradient(penalty, w)

    got = _run(grad, tf.constant(W), mode).numpy()
    np.testing.assert_allclose(got, gradient(W, lam), rtol=1e-6)


def test_conventions_relate_as_documented():
    w = tf.constant(W)
    # L2(λ) is Keras's L2(λ) and twice WeightDecay(λ).
    np.testing.assert_allclose(float(L2(0.1)(w)), float(keras.regularizers.L2(0.1)(w)), rtol=1e-6)
    np.testing.assert_allclose(float(L1(0.1)(w)), float(keras.regularizers.L1(0.1)(w)), rtol=1e-6)
    np.testing.assert_allclose(float(L2(0.1)(w)), float(WeightDecay(0.2)(w)), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_keeps_the_weight_dtype(dtype):
    # Six ones: Σ|w| = Σw² = 6.
    for cls, expected in [(L1, 0.5 * 6), (L2, 0.5 * 6), (WeightDecay, 0.5 / 2 * 6)]:
        penalty = cls(0.5)(keras.ops.ones((2, 3), dtype=dtype))
        assert keras.backend.standardize_dtype(penalty.dtype) == dtype
        assert float(penalty) == pytest.approx(expected)


@pytest.mark.parametrize("cls, arg", [(L1, "l1"), (L2, "l2"), (WeightDecay, "weight_decay")])
@pytest.mark.parametrize(
    "bad, error, text",
    [
        (-0.1, ValueError, "must be >= 0.0. Received: {arg}=-0.1"),
        (float("nan"), ValueError, "must be a finite number. Received: {arg}=nan"),
        (float("inf"), ValueError, "must be a finite number. Received: {arg}=inf"),
        (True, TypeError, "must be a real number (int or float), not bool. Received: {arg}=True"),
        ("0.1", TypeError, "not str. Received: {arg}='0.1'"),
        (None, TypeError, "not NoneType. Received: {arg}=None"),
    ],
)
def test_rejects_bad_strength(cls, arg, bad, error, text):
    with pytest.raises(error) as info:
        cls(bad)
    assert f"`{arg}` " in str(info.value) and text.format(arg=arg) in str(info.value)


@pytest.mark.parametrize("cls", [L1, L2, WeightDecay])
def test_round_trip_and_integer_strength(cls):
    regularizer = cls(1)  # ints are accepted and stored as floats (plain JSON either way)
    assert list(regularizer.get_config().values()) == [1.0]
    restored = assert_round_trip(regularizer)
    assert float(restored(tf.constant(W))) == pytest.approx(float(regularizer(tf.constant(W))))


def _linear_model(regularizer, kernel):
    model = keras.Sequential(
        [keras.Input((kernel.shape[0],)), keras.layers.Dense(
            kernel.shape[1], use_bias=False, kernel_regularizer=regularizer)]
    )  # fmt: skip
    model.layers[0].kernel.assign(kernel)
    return model


def _data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 7)).astype("float32")
    y = rng.normal(size=(16, 5)).astype("float32")
    return x, y


def _mse_gradient(x, y, w):
    """d/dW mean((xW - y)²) over all elements, in float64."""
    x, y, w = (a.astype(np.float64) for a in (x, y, w))
    return 2.0 * x.T @ (x @ w - y) / y.size


@pytest.mark.parametrize("jit_compile", [False, True])
def test_in_a_model_losses_and_total_loss(jit_compile):
    x, y = _data()
    model = _linear_model(WeightDecay(0.3), W)
    model.compile(optimizer="sgd", loss="mse", jit_compile=jit_compile)
    w = W.astype(np.float64)
    (penalty,) = model.losses
    np.testing.assert_allclose(float(penalty), 0.15 * (w**2).sum(), rtol=1e-6)
    data_loss = np.mean((x @ w - y) ** 2)
    total = model.evaluate(x, y, batch_size=16, verbose=0)
    np.testing.assert_allclose(total, data_loss + 0.15 * (w**2).sum(), rtol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_weight_decay_with_plain_sgd_equals_the_optimizers_weight_decay(jit_compile):
    """One SGD step: WeightDecay(λ) ≡ SGD(weight_decay=λ) ≡ W - η(∇ + λW); L2(λ) ≡ 2λ."""
    x, y = _data()
    lr, lam = 0.1, 0.2
    expected = W - lr * (_mse_gradient(x, y, W) + lam * W)
    results = []
    for regularizer, decay in [(WeightDecay(lam), None), (None, lam), (L2(lam / 2), None)]:
        model = _linear_model(regularizer, W)
        model.compile(keras.optimizers.SGD(lr, weight_decay=decay), "mse", jit_compile=jit_compile)
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        results.append(model.layers[0].kernel.numpy())
    for got in results:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_with_adam_coupled_and_decoupled_decay_differ_as_documented():
    """First Adam step: the penalty's gradient is normalized away, AdamW's decay is not."""
    x, y = _data()
    lr, lam, beta_2, eps = 0.01, 0.5, 0.999, 1e-7
    g = _mse_gradient(x, y, W)
    eps_hat = eps / math.sqrt(1 - beta_2)  # Adam's first step is lr·g / (|g| + eps_hat)
    coupled = W - lr * (g + lam * W) / (np.abs(g + lam * W) + eps_hat)
    decoupled = W - lr * lam * W - lr * g / (np.abs(g) + eps_hat)

    adam = _linear_model(WeightDecay(lam), W)
    adam.compile(keras.optimizers.Adam(lr, beta_2=beta_2, epsilon=eps), "mse")
    adamw = _linear_model(None, W)
    adamw.compile(keras.optimizers.AdamW(lr, weight_decay=lam, beta_2=beta_2, epsilon=eps), "mse")
    for model in (adam, adamw):
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(adam.layers[0].kernel.numpy(), coupled, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(adamw.layers[0].kernel.numpy(), decoupled, rtol=1e-4, atol=1e-6)
    assert np.abs(coupled - decoupled).max() > lr * lam * np.abs(W).min()
