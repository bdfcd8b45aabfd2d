"""GradientNormMonitor where new users met trouble: unbuilt models, NaN epochs, huge gradients.

Each test reproduces a report from issue 11 or 15 as the user met it. Expected
norms are computed here with ``tf.GradientTape`` and numpy.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.callbacks import GradientNormMonitor


class Net(keras.Model):
    """Layers created in ``__init__``, ``call`` defined, not built before ``fit``."""

    def __init__(self, custom_step=False):
        super().__init__(name="net")
        self.hidden = keras.layers.Dense(16, activation="relu", name="hidden")
        self.out = keras.layers.Dense(10, name="out")
        self.custom_step = custom_step

    def call(self, x):
        return self.out(self.hidden(x))

    def train_step(self, data):
        if not self.custom_step:
            return super().train_step(data)
        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return {"loss": loss}


def _digits_like(n=64, features=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, features)).astype("float32"), rng.integers(0, 10, n)


@pytest.mark.parametrize("custom_step", [False, True], ids=["keras-step", "custom-step"])
@pytest.mark.parametrize("build", [False, True], ids=["unbuilt", "build-called"])
def test_an_ordinary_subclassed_model_is_monitored(custom_step, build):
    """Issue 15 #1: it raised 'the optimizer received a variable that is not one of ...'."""
    keras.utils.set_random_seed(0)
    x, y = _digits_like()
    model = Net(custom_step)
    if build:
        with pytest.warns(UserWarning, match="does not have a `build\\(\\)` method"):
            model.build((None, 64))  # Keras marks it built without creating variables
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.SGD(0.0), loss)
    monitor = GradientNormMonitor(sample_every=1)
    model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[monitor])
    assert monitor.layers == ["net/hidden", "net/out"]
    with tf.GradientTape() as tape:
        value = loss(y, model(x))
    grads = tape.gradient(value, model.trainable_variables)
    expected = math.sqrt(sum(float(np.sum(np.square(g.numpy()))) for g in grads))
    np.testing.assert_allclose(monitor.history["global_norm"], [expected] * 2, rtol=1e-5)


def test_epochs_without_a_sampled_step_log_numbers_not_nan():
    """Issue 11: at the default cadence a short epoch logged grad_norm = nan."""
    x, y = np.ones((12, 3), "float32"), np.zeros((12, 1), "float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    monitor = GradientNormMonitor()  # every 10 steps; 3 steps per epoch
    history = model.fit(x, y, batch_size=4, epochs=4, verbose=0, callbacks=[monitor])
    for key in ("grad_norm", "grad_norm_min", "grad_norm_max"):
        assert all(math.isfinite(v) for v in history.history[key]), key
    # The epoch's last step is sampled when the cadence leaves the epoch without one.
    assert monitor.history["steps"] == [0, 5, 8, 10]


def test_epochs_without_a_sample_repeat_the_last_figures_when_steps_are_unknown():
    x, y = np.ones((12, 3), "float32"), np.zeros((12, 1), "float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    monitor = GradientNormMonitor(sample_every=10)
    history = model.fit(
        data, steps_per_epoch=3, epochs=3, shuffle=False, verbose=0, callbacks=[monitor]
    )
    assert all(math.isfinite(v) for v in history.history["grad_norm"])


def test_a_huge_finite_gradient_is_not_called_non_finite():
    """Issue 11: Σg² in float32 overflows for |g| ≥ ~1.8e19; 'skip' skipped a valid step."""
    keras.utils.set_random_seed(0)
    x = np.full((4, 1), 1e20, "float32")
    y = np.zeros((4, 1), "float32")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[-1].kernel.assign([[1e-20]])
    model.compile(keras.optimizers.SGD(0.0), loss="mae")  # gradient = x = 1e20, finite
    for sample_every in (1, 3):  # the sampling step and the plain step
        monitor = GradientNormMonitor(sample_every=sample_every, on_nonfinite="skip")
        model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[monitor])
        assert monitor.nonfinite_steps == 0, sample_every
    assert int(model.optimizer.iterations.numpy()) == 8  # no step skipped


def test_stop_says_where_the_first_nan_is(capsys):
    """Issue 15 #4: on_nonfinite='stop' ended training without a word."""
    x = np.ones((32, 3), "float32")
    x[9] = np.nan
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(1)],
        name="seq",
    )
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    monitor = GradientNormMonitor(sample_every=1, on_nonfinite="stop")
    history = model.fit(
        x, x[:, :1], batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[monitor]
    )
    out = capsys.readouterr().out
    assert "GradientNormMonitor stopped training: NaN/inf gradients at step 2" in out
    assert "in 'seq/hidden' first" in out and monitor.stop_message in out
    assert len(history.history["loss"]) == 1


def test_an_unsupported_backend_is_refused_at_train_begin(monkeypatch):
    """Issue 11: on the PyTorch backend the monitor ran and logged NaN."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    monitor = GradientNormMonitor()
    monitor.set_model(model)
    monitor.set_params({"epochs": 1, "steps": 1, "verbose": 0})
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(ValueError, match=r"TensorFlow and JAX.*Received: backend='torch'"):
        monitor.on_train_begin()
