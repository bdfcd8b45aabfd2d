"""One predicate for "a parameter the user trains", checked by what each consumer's numbers mean.

Two models carry trainable variables that are not parameters (statistics
channels, ``overwrite_with_gradient=True``): one registered with
``KFAC(model=...)`` (its factor statistics) and one with a float8 ``Dense``
(its scales and amax histories). On both, the gradient monitor's norms, SAM's
perturbation, SWA's average, the regularizers' penalty and a meta-learner's
inner step are compared with independent computations over a list of
kernels and biases built by hand in the test (no predicate involved).
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit._parameters import is_parameter, parameters
from nnkit.callbacks import GradientNormMonitor, StochasticWeightAveraging
from nnkit.meta import MAML, MetaSGD
from nnkit.models import SharpnessAwareMinimization, _sam_step
from nnkit.optimizers import KFAC
from nnkit.regularizers import apply_regularization
from tests.distribute._mirrored import mirrored_strategy
from tests.meta._helpers import linear_tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ["kfac", "float8"]
RHO, LR = 0.5, 0.1


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, rng.normal(size=(n, 2)).astype("float32")


def _model(kind, inputs=4, outputs=2):
    """``(model, optimizer)``: two Dense layers, the first quantized or KFAC-registered."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(3, "tanh", name="hidden"),
            keras.layers.Dense(outputs, name="out"),
        ],
        name="net",
    )
    if kind == "float8":
        model.layers[0].quantize("float8")
        return model, keras.optimizers.SGD(LR)
    return model, KFAC(LR, model=model, refresh_every=2)


def _by_hand(model):
    """The parameters, listed by hand: every Dense layer's kernel and bias."""
    return [w for layer in model.layers for w in (layer.kernel, layer.bias)]


def _channels(model):
    hand = {id(w) for w in _by_hand(model)}
    return [w for w in model.trainable_variables if id(w) not in hand]


def _gradient(model, x, y, variables):
    """∇ of Keras's "mse" (the mean over every element) at ``variables``, float64."""

    @tf.function  # Keras's float8 custom gradient needs a graph
    def gradient():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        return tape.gradient(loss, variables)

    return [g.numpy().astype(np.float64) for g in gradient()]


def _norm(arrays):
    return float(np.sqrt(sum(np.sum(np.square(a)) for a in arrays)))


@pytest.mark.parametrize("kind", KINDS)
def test_parameters_are_the_kernels_and_biases(kind):
    model, _ = _model(kind)
    channels = _channels(model)
    assert len(channels) == (4 if kind == "kfac" else 6)  # A and G per layer; 3 scales, 3 amax
    assert all(w.overwrite_with_gradient for w in channels)
    assert [w.path for w in parameters(model)] == [w.path for w in _by_hand(model)]
    assert not any(is_parameter(w) for w in channels)
    model.layers[1].trainable = False
    assert [w.path for w in parameters(model)] == [w.path for w in _by_hand(model)[:2]]


@pytest.mark.parametrize("by", ["layer", "variable"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_norm_monitor_measures_the_parameters_gradient(kind, by):
    x, y = _data()
    model, optimizer = _model(kind)
    hand = _by_hand(model)
    grads = _gradient(model, x, y, hand)
    weights = [w.numpy().astype(np.float64) for w in hand]
    monitor = GradientNormMonitor(sample_every=1, by=by)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0, callbacks=[monitor])

    if by == "layer":
        assert monitor.layers == ["net/hidden", "net/out"]
        want = [_norm(grads[:2]), _norm(grads[2:])]
        want_weights = [_norm(weights[:2]), _norm(weights[2:])]
    else:
        assert monitor.layers == [w.path for w in hand]
        want = [_norm([g]) for g in grads]
        want_weights = [_norm([w]) for w in weights]
    assert monitor.history["steps"] == [0]
    np.testing.assert_allclose(monitor.history["global_norm"][0], _norm(grads), rtol=1e-5)
    np.testing.assert_allclose(monitor.history["grad_norms"][0], want, rtol=1e-5)
    np.testing.assert_allclose(monitor.history["weight_norms"][0], want_weights, rtol=1e-6)


_JAX_MONITOR = """
    import keras, numpy as np, jax, jax.numpy as jnp
    from nnkit.callbacks import GradientNormMonitor
    from nnkit.optimizers import KFAC

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)), rng.normal(size=(16, 2))
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, "tanh"), keras.layers.Dense(2)]
    )
    optimizer = KFAC(0.1, model=model, refresh_every=2)
    hand = [np.asarray(w.numpy(), np.float64) for l in model.layers for w in (l.kernel, l.bias)]

    def loss(p):
        return jnp.mean((jnp.tanh(x @ p[0] + p[1]) @ p[2] + p[3] - y) ** 2)

    g = [np.asarray(a) for a in jax.grad(loss)(hand)]
    norm = lambda arrays: np.sqrt(sum(np.sum(a ** 2) for a in arrays))
    monitor = GradientNormMonitor(sample_every=1)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x.astype("float32"), y.astype("float32"), batch_size=16, epochs=1,
              shuffle=False, verbose=0, callbacks=[monitor])
    np.testing.assert_allclose(monitor.history["global_norm"][0], norm(g), rtol=1e-5)
    np.testing.assert_allclose(monitor.history["grad_norms"][0], [norm(g[:2]), norm(g[2:])],
                               rtol=1e-5)
    print("ok")
"""


def test_gradient_norm_monitor_on_a_jax_kfac_model_measures_the_parameters_gradient():
    """JAX (a subprocess): the same figures, against jax.grad of the loss written in numpy terms."""
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_JAX_MONITOR)], capture_output=True, text=True,
        env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"


def test_gradient_norm_monitor_refuses_a_mirrored_kfac_model():
    """Two replicas: the monitor would read K-FAC's direction at Keras's all-reduce; refused."""
    x, y = _data()
    with mirrored_strategy().scope():
        model, optimizer = _model("kfac")
    monitor = GradientNormMonitor(sample_every=1)
    model.compile(optimizer=optimizer, loss="mse")
    with pytest.raises(
        ValueError, match="GradientNormMonitor cannot measure the gradients of KFAC"
    ):
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, callbacks=[monitor])


def test_sam_perturbs_only_the_parameters_of_a_float8_model():
    """One SAM step with SGD, by hand: θ' = θ − η ∇L(θ + ρ g/‖g‖), g over kernels and biases."""
    x, y = _data()
    model, optimizer = _model("float8")
    hand = _by_hand(model)
    channels = [w.numpy().copy() for w in _channels(model)]
    theta = [w.numpy().astype(np.float64) for w in hand]
    g = _gradient(model, x, y, hand)
    eps = [RHO * gi / _norm(g) for gi in g]
    assert _norm(eps) == pytest.approx(RHO)
    for w, t, e in zip(hand, theta, eps, strict=True):
        w.assign((t + e).astype("float32"))
    g2 = _gradient(model, x, y, hand)
    for w, t in zip(hand, theta, strict=True):
        w.assign(t.astype("float32"))
    # The step changes the channels only by what the optimizer writes into them.
    for w, before in zip(_channels(model), channels, strict=True):
        np.testing.assert_array_equal(w.numpy(), before)

    sam = SharpnessAwareMinimization(model, rho=RHO)
    sam.compile(optimizer=optimizer, loss="mse")
    sam.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    for w, t, gi in zip(hand, theta, g2, strict=True):
        np.testing.assert_allclose(w.numpy(), t - LR * gi, rtol=1e-5, atol=1e-6)


def test_sam_perturbs_only_the_parameters_of_a_kfac_model(monkeypatch):
    """ε = ρ g/‖g‖ over the kernels and biases; K-FAC's statistics channels get none."""
    x, y = _data()
    model, optimizer = _model("kfac")
    hand = _by_hand(model)
    g = _gradient(model, x, y, hand)
    seen = []

    def spy(variables, grads, weights, rho, adaptive, **scaling):
        eps = real(variables, grads, weights, rho, adaptive, **scaling)
        seen.append(([w.path for w in variables], [None if e is None else e.numpy() for e in eps]))
        return eps

    real = _sam_step.parameter_perturbation
    monkeypatch.setattr(_sam_step, "parameter_perturbation", spy)
    sam = SharpnessAwareMinimization(model, rho=RHO)
    sam.compile(optimizer=optimizer, loss="mse", run_eagerly=True)
    sam.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)

    ((paths, eps),) = seen
    perturbed = {p: e for p, e in zip(paths, eps, strict=True) if e is not None}
    assert list(perturbed) == [w.path for w in hand]
    assert all(eps[paths.index(w.path)] is None for w in _channels(model))
    assert _norm(perturbed.values()) == pytest.approx(RHO, rel=1e-5)
    for w, gi in zip(hand, g, strict=True):
        np.testing.assert_allclose(perturbed[w.path], RHO * gi / _norm(g), rtol=1e-4, atol=1e-7)


class _Snapshots(keras.callbacks.Callback):
    """The parameters (listed by hand) and the channels at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.parameters, self.channels = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.parameters.append([w.numpy().astype(np.float64) for w in _by_hand(self.model)])
        self.channels.append([w.numpy().copy() for w in _channels(self.model)])


@pytest.mark.parametrize("kind", KINDS)
def test_swa_averages_only_the_parameters(kind):
    x, y = _data(n=32)
    model, optimizer = _model(kind)
    snapshots = _Snapshots()
    swa = StochasticWeightAveraging(start_epoch=1)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[snapshots, swa])

    assert len(swa.average) == 4
    for k, w in enumerate(_by_hand(model)):
        want = np.mean([snapshot[k] for snapshot in snapshots.parameters[1:]], axis=0)
        np.testing.assert_allclose(w.numpy(), want, rtol=1e-6, atol=1e-7)
    for w, last in zip(_channels(model), snapshots.channels[-1], strict=True):
        np.testing.assert_array_equal(w.numpy(), last)  # not averaged, not overwritten


@pytest.mark.parametrize("kind", KINDS)
def test_regularizers_penalize_only_the_kernels(kind):
    model, _ = _model(kind)
    applied = apply_regularization(model, keras.regularizers.L2(0.1))
    assert applied == ["net/hidden/kernel", "net/out/kernel"]
    kernels = [layer.kernel.numpy().astype(np.float64) for layer in model.layers]
    want = 0.1 * sum(np.sum(np.square(k)) for k in kernels)
    np.testing.assert_allclose(float(sum(model.losses)), want, rtol=1e-6)
    assert all(w.regularizer is None for w in _channels(model))


def test_maml_adapts_only_the_parameters_of_a_float8_model():
    """Each task's query prediction after one inner step over kernels and biases, by hand."""
    inputs, _ = linear_tasks(tasks=2)
    model, _ = _model("float8", inputs=2, outputs=1)
    hand = _by_hand(model)
    theta = [w.numpy().astype(np.float64) for w in hand]
    want = []
    for task in range(2):
        xs, ys = inputs["x_support"][task], inputs["y_support"][task]
        g = _gradient(model, xs, ys, hand)
        for w, t, gi in zip(hand, theta, g, strict=True):
            w.assign((t - 0.1 * gi).astype("float32"))
        want.append(model(inputs["x_query"][task], training=True).numpy())
        for w, t in zip(hand, theta, strict=True):
            w.assign(t.astype("float32"))

    learner = MAML(model, inner_learning_rate=0.1)
    learner.compile(keras.optimizers.SGD(0.01), loss="mse")
    np.testing.assert_allclose(learner(inputs), np.stack(want), rtol=1e-5, atol=1e-6)
    assert len(MetaSGD(model, inner_learning_rate=0.1).inner_rates) == 4  # one per parameter
