"""Adaptive SAM's two variants (issue 22) against closed forms written here with numpy.

Kwon et al.'s formula: ``T = |w|`` for every weight (``eta=0``,
``scale_biases=True``, the default). The official ASAM code: ``T = |w| + η``
for weights and ``T = 1`` for biases (``eta=0.01, scale_biases=False``).
One SGD step of a linear model ``y = x·W + b`` under mean squared error.
"""

import keras
import numpy as np
import pytest

from nnkit.models import SharpnessAwareMinimization

RHO, LR = 0.5, 0.1


def _gradients(x, y, w, b):
    residual = x @ w + b - y  # (n, k)
    scale = 2.0 / residual.size
    return scale * x.T @ residual, scale * residual.sum(axis=0)


def _closed_form(x, y, w, b, eta, scale_biases):
    gw, gb = _gradients(x, y, w, b)
    tw = np.abs(w) + eta
    tb = np.abs(b) + eta if scale_biases else np.ones_like(b)
    norm = np.sqrt(np.sum((tw * gw) ** 2) + np.sum((tb * gb) ** 2))
    ew, eb = RHO * tw**2 * gw / (norm + 1e-12), RHO * tb**2 * gb / (norm + 1e-12)
    gw2, gb2 = _gradients(x, y, w + ew, b + eb)
    return w - LR * gw2, b - LR * gb2


@pytest.mark.parametrize(
    "eta, scale_biases", [(0.0, True), (0.01, False), (0.01, True), (0.0, False)]
)
def test_one_step_matches_the_closed_form(eta, scale_biases):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    w = rng.normal(size=(3, 2)).astype("float32")
    b = np.zeros(2, "float32")  # zero-initialised: the paper's formula never perturbs it
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.set_weights([w, b])
    sam = SharpnessAwareMinimization(
        model, rho=RHO, adaptive=True, eta=eta, scale_biases=scale_biases
    )
    sam.compile(keras.optimizers.SGD(LR), loss="mse")
    sam.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    expected_w, expected_b = _closed_form(
        x.astype(float), y.astype(float), w.astype(float), b.astype(float), eta, scale_biases
    )
    got_w, got_b = model.get_weights()
    np.testing.assert_allclose(got_w, expected_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_b, expected_b, rtol=1e-5, atol=1e-6)


def test_the_variants_differ_and_round_trip():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    sam = SharpnessAwareMinimization(model, adaptive=True, eta=0.01, scale_biases=False)
    config = sam.get_config()
    assert (config["eta"], config["scale_biases"]) == (0.01, False)
    with pytest.raises(ValueError, match=r"Received: eta=-1"):
        SharpnessAwareMinimization(model, eta=-1)
    with pytest.raises(TypeError, match=r"Received: scale_biases=1"):
        SharpnessAwareMinimization(model, scale_biases=1)
