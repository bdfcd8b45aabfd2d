"""Tests for nnkit.callbacks.GradientNormMonitor.

Every expected norm is computed here, independently, with ``tf.GradientTape``
and numpy on the same weights and batch (SGD at a zero learning rate keeps
the weights fixed, so every step sees them).
"""

import copy
import csv
import glob
import json
import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.callbacks import GradientNormMonitor
from nnkit.diagnostics import DiagnosisRules
from nnkit.testing import assert_round_trip


def _data(n=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], "float32")) + 0.3
    return x, y


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.hidden = keras.layers.Dense(4, "tanh", name="hidden")
        self.out = keras.layers.Dense(1, name="out")

    def call(self, x):
        return self.out(self.hidden(x))


def _model(kind="sequential"):
    keras.utils.set_random_seed(0)
    if kind == "sequential":
        layers = [keras.layers.Dense(4, "tanh", name="hidden"), keras.layers.Dense(1, name="out")]
        return keras.Sequential([keras.Input((3,)), *layers], name="seq")
    if kind == "functional":
        inputs = keras.Input((3,))
        hidden = keras.layers.Dense(4, "tanh", name="hidden")(inputs)
        return keras.Model(inputs, keras.layers.Dense(1, name="out")(hidden), name="fn")
    model = _Subclassed()
    model(np.zeros((1, 3), "float32"))
    return model


def _tape_norms(model, x, y):
    """Global and per-layer gradient norms of the mean squared error, with numpy."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(tf.cast(model(x), "float32") - y))
    grads = tape.gradient(loss, model.trainable_variables)
    layers = {}
    for w, g in zip(model.trainable_variables, grads, strict=True):
        layer = w.path.rpartition("/")[0]
        layers[layer] = layers.get(layer, 0.0) + float(np.sum(np.square(g.numpy())))
    return math.sqrt(sum(layers.values())), {k: math.sqrt(s) for k, s in layers.items()}


def _weight_norms(model):
    layers = {}
    for w in model.trainable_variables:
        layer = w.path.rpartition("/")[0]
        layers[layer] = layers.get(layer, 0.0) + float(np.sum(np.square(np.asarray(w.value))))
    return {k: math.sqrt(s) for k, s in layers.items()}


def _fit(model, monitor, x, y, *, optimizer=None, epochs=2, batch_size=16, jit=False, **kw):
    model.compile(optimizer or keras.optimizers.SGD(0.0), loss="mse", jit_compile=jit)
    return model.fit(
        x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0,
        callbacks=[monitor, *kw.pop("callbacks", [])], **kw,
    )  # fmt: skip


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_norms_match_gradient_tape(kind, jit):
    x, y = _data()
    model = _model(kind)
    expected_global, expected = _tape_norms(model, x, y)
    weights = _weight_norms(model)
    monitor = GradientNormMonitor(sample_every=1, log_layers=True)
    history = _fit(model, monitor, x, y, jit=jit)
    assert monitor.layers == list(expected)
    assert monitor.history["steps"] == [0, 1]
    np.testing.assert_allclose(monitor.history["global_norm"], [expected_global] * 2, rtol=1e-5)
    want = [expected[name] for name in monitor.layers]
    np.testing.assert_allclose(monitor.history["grad_norms"], [want] * 2, rtol=1e-5)
    want_w = [weights[name] for name in monitor.layers]
    np.testing.assert_allclose(monitor.history["weight_norms"], [want_w] * 2, rtol=1e-5)
    np.testing.assert_allclose(monitor.history["update_ratios"], np.zeros((2, 2)))
    for name in monitor.layers:
        np.testing.assert_allclose(history.history[f"grad_norm/{name}"], expected[name], rtol=1e-5)
    np.testing.assert_allclose(history.history["grad_norm"], expected_global, rtol=1e-5)


def test_loss_scale_optimizer_reports_unscaled_norms():
    x, y = _data()
    expected_global, expected = _tape_norms(_model(), x, y)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _model()
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.0))
        monitor = GradientNormMonitor(sample_every=1)
        _fit(model, monitor, x, y, optimizer=optimizer, epochs=4)
    finally:
        keras.config.set_dtype_policy(previous)
    # Steps whose scaled gradients overflow never reach the inner optimizer.
    samples = len(monitor.history["steps"])
    assert samples >= 1 and optimizer.dynamic_scale.numpy() > 1000  # the loss was scaled
    np.testing.assert_allclose(
        monitor.history["global_norm"], [expected_global] * samples, rtol=2e-2
    )
    want = [expected[name] for name in monitor.layers]
    np.testing.assert_allclose(monitor.history["grad_norms"], [want] * samples, rtol=2e-2)


@pytest.mark.parametrize("clip", ["global_clipnorm", "clipnorm"])
def test_post_clip_norms_are_at_most_the_clip_value(clip):
    x, y = _data()
    model = _model()
    monitor = GradientNormMonitor(sample_every=1)
    history = _fit(model, monitor, x, y, optimizer=keras.optimizers.SGD(0.0, **{clip: 0.05}))
    assert min(monitor.history["global_norm"]) > 0.05
    clipped = np.asarray(monitor.history["clipped_global_norm"])
    if clip == "global_clipnorm":
        np.testing.assert_allclose(clipped, 0.05, rtol=1e-5)
    else:  # each of the 4 variables is clipped to 0.05
        assert np.all(clipped <= 0.05 * 2 + 1e-6)
        assert np.all(np.asarray(monitor.history["clipped_grad_norms"]) <= 0.05 * 2**0.5 + 1e-6)
    assert "clipped_grad_norm" in history.history


def test_update_ratio_matches_weights_before_and_after():
    x, y = _data()
    model = _model()
    before = [np.asarray(w.value).copy() for w in model.trainable_variables]
    monitor = GradientNormMonitor(sample_every=1)
    _fit(model, monitor, x, y, optimizer=keras.optimizers.SGD(0.1), epochs=1)
    after = [np.asarray(w.value) for w in model.trainable_variables]
    for k in range(2):  # layer k owns variables 2k (kernel) and 2k+1 (bias)
        delta = sum(np.sum((after[i] - before[i]) ** 2) for i in (2 * k, 2 * k + 1))
        weight = sum(np.sum(before[i] ** 2) for i in (2 * k, 2 * k + 1))
        expected = math.sqrt(delta) / math.sqrt(weight)
        assert expected > 0
        np.testing.assert_allclose(monitor.history["update_ratios"][0][k], expected, rtol=1e-4)


def _bad_data():
    x, y = _data(32)
    x[20, 1] = np.nan  # in the third batch of 8 (step 2)
    return x, y


def test_warn_names_the_first_step_and_layer():
    x, y = _bad_data()
    monitor = GradientNormMonitor(sample_every=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        history = _fit(_model(), monitor, x, y, batch_size=8, epochs=1)
    ours = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert len(ours) == 1 and "first at step 2, in 'seq/hidden'" in ours[0]
    assert history.history["nonfinite_grads"] == [2]  # the NaN update poisons step 3 too
    assert monitor.first_nonfinite_step == 2
    assert "seq/hidden" in monitor.last_report.flagged("nonfinite")


class _NaNGate(keras.layers.Layer):
    """``x + √(w - sg(w))``: the forward pass and the input's gradient as ``x``'s, ``w``'s inf."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(1,), initializer="ones", name="w")

    def call(self, x):
        return x + keras.ops.sqrt(self.w - keras.ops.stop_gradient(self.w))


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_first_bad_layer_is_the_first_group_with_nan_not_group_zero(jit):
    """Only the middle layer's gradient is inf: the first bad group is 1, not 0 or the last."""
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(4, "tanh", name="hidden"), _NaNGate(name="gate")]
    model = keras.Sequential([keras.Input((3,)), *layers, keras.layers.Dense(1, name="out")],
                             name="seq")  # fmt: skip
    x, y = _data(16)
    monitor = GradientNormMonitor(sample_every=1, on_nonfinite="skip")
    with pytest.warns(RuntimeWarning, match="skipped"):
        _fit(model, monitor, x, y, batch_size=8, epochs=1, jit=jit)
    assert (monitor.nonfinite_steps, monitor.first_nonfinite_step) == (2, 0)
    assert monitor.first_nonfinite_layer == "seq/gate"
    nonfinite = np.asarray(monitor.history["nonfinite"])
    assert nonfinite.tolist() == [[0, 1, 0], [0, 1, 0]]  # per layer, per sample


def test_stop_ends_training_early():
    x, y = _bad_data()
    monitor = GradientNormMonitor(sample_every=1, on_nonfinite="stop")
    history = _fit(_model(), monitor, x, y, batch_size=8, epochs=5)
    assert len(history.history["loss"]) == 1
    assert monitor.nonfinite_steps >= 1


def test_skip_leaves_weights_finite_and_skips_the_step():
    x, y = _bad_data()
    model = _model()
    monitor = GradientNormMonitor(sample_every=1, on_nonfinite="skip")
    with pytest.warns(RuntimeWarning, match="skipped 1 update") as caught:
        history = _fit(model, monitor, x, y, optimizer=keras.optimizers.Adam(0.01),
                       batch_size=8, epochs=2)  # fmt: skip
    # Issue 15 #4: one warning per epoch with a count, saying what it does to the schedule.
    skipped = [w for w in caught if "skipped" in str(w.message)]
    assert len(skipped) == 2 and "optimizer.iterations" in str(skipped[0].message)
    assert all(np.all(np.isfinite(np.asarray(w.value))) for w in model.trainable_variables)
    assert int(model.optimizer.iterations.numpy()) == 8 - 2  # one bad batch per epoch
    assert history.history["nonfinite_grads"] == [1, 2]
    assert monitor.history["steps"] == list(range(8))
    assert len(history.history["loss"]) == 2


def test_logs_reach_history_csv_and_tensorboard(tmp_path):
    x, y = _data(32)
    monitor = GradientNormMonitor(sample_every=3, log_dir=str(tmp_path / "tb"))
    csv_path = tmp_path / "log.csv"
    history = _fit(_model(), monitor, x, y, batch_size=4, epochs=2,
                   callbacks=[keras.callbacks.CSVLogger(str(csv_path))])  # fmt: skip
    # Issue 15 #5: a few summary figures, not two keys per layer.
    keys = {"grad_norm", "grad_norm_min", "grad_norm_max", "nonfinite_grads"}
    assert set(history.history) == keys | {"loss"}
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and keys | {"loss", "epoch"} <= set(rows[0])
    assert not [key for key in rows[0] if "/" in key]  # no per-layer columns
    norms = np.asarray(monitor.history["grad_norms"])
    assert history.history["grad_norm_min"][-1] == pytest.approx(norms[-1].min(), rel=1e-6)
    assert history.history["grad_norm_max"][-1] == pytest.approx(norms[-1].max(), rel=1e-6)
    # 8 steps per epoch, every 3rd: ceil(8 / 3) = 3 samples in the first epoch
    assert monitor.history["steps"] == [0, 3, 6, 9, 12, 15]
    assert glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))


def test_per_layer_figures_reach_the_logs_on_request():
    x, y = _data(32)
    monitor = GradientNormMonitor(sample_every=3, log_layers=True)
    history = _fit(_model(), monitor, x, y, batch_size=4, epochs=1)
    per_layer = {
        f"{kind}/seq/{layer}"
        for kind in ("grad_norm", "update_ratio")
        for layer in ("hidden", "out")
    }
    assert per_layer <= set(history.history)


def test_removal_restores_the_optimizer_and_saving(tmp_path):
    x, y = _data()
    model = _model()
    model.compile(keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    count = len(model.optimizer.variables)
    bare = model.train_function
    monitor = GradientNormMonitor(sample_every=1)
    hooks = []
    grab = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: hooks.append(monitor._hook))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[monitor, grab])
    assert "apply" not in vars(model.optimizer)
    assert model.optimizer.apply.__func__ is type(model.optimizer).apply
    assert model.train_function is bare  # fit's own step, put back
    samples = hooks[0].counters(), hooks[0].current_step()
    model.fit(x, y, epochs=2, verbose=0)  # fit's own step: not measured
    assert (hooks[0].counters(), hooks[0].current_step()) == samples
    assert int(model.optimizer.iterations.numpy()) == 4
    assert len(model.optimizer.variables) == count
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert len(loaded.optimizer.variables) == count


def test_gradient_accumulation_measures_micro_batches():
    x, y = _data()
    model = _model()
    _, expected = _tape_norms(model, x[:8], y[:8])
    monitor = GradientNormMonitor(sample_every=1)
    optimizer = keras.optimizers.SGD(0.0, gradient_accumulation_steps=2)
    _fit(model, monitor, x, y, optimizer=optimizer, batch_size=8, epochs=1)
    assert monitor.history["steps"] == [0, 1]
    want = [expected[name] for name in monitor.layers]
    np.testing.assert_allclose(monitor.history["grad_norms"][0], want, rtol=1e-5)


def test_state_copies_and_report(tmp_path):
    x, y = _data()
    monitor = GradientNormMonitor(sample_every=1, by="variable", rules=DiagnosisRules(window=2))
    assert copy.deepcopy(monitor).get_config() == monitor.get_config()
    _fit(_model(), monitor, x, y, epochs=3)
    assert len(monitor.layers) == 4  # one group per variable
    state = json.loads(json.dumps(monitor.get_state()))
    other = copy.deepcopy(monitor)
    assert other.model is None and other.last_report is None
    other._reset_state()
    other.set_state(state)
    assert other.get_state() == monitor.get_state()
    report = monitor.report()
    assert list(report.steps) == [0, 1, 2] and "seq/hidden/kernel" in str(report)
    assert json.dumps(report.to_dict())
    png = report.plot(tmp_path / "r.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_config_round_trip():
    assert_round_trip(GradientNormMonitor(5, on_nonfinite="skip", rules=DiagnosisRules()))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sample_every": 0}, ValueError, "sample_every"),
        ({"sample_every": True}, TypeError, "sample_every"),
        ({"by": "block"}, ValueError, "by='block'"),
        ({"on_nonfinite": "ignore"}, ValueError, "on_nonfinite='ignore'"),
        ({"rules": {}}, TypeError, "rules"),
        ({"log_dir": 3}, TypeError, "log_dir=3"),
        ({"verbose": 2}, ValueError, "verbose=2"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GradientNormMonitor(**kwargs)


def test_skip_catches_a_bad_step_between_samples():
    """Step 2 is not a sample step at sample_every=3: the cheap per-step check still sees it."""
    x, y = _bad_data()
    model = _model()
    monitor = GradientNormMonitor(sample_every=3, on_nonfinite="skip")
    with pytest.warns(RuntimeWarning, match="skipped 1 update"):
        _fit(model, monitor, x, y, optimizer=keras.optimizers.Adam(0.01), batch_size=8, epochs=1)
    assert all(np.all(np.isfinite(np.asarray(w.value))) for w in model.trainable_variables)
    assert int(model.optimizer.iterations.numpy()) == 3
    assert (monitor.nonfinite_steps, monitor.first_nonfinite_step) == (1, 2)
    assert monitor.first_nonfinite_layer == "seq/hidden"
    assert monitor.history["steps"] == [0, 3]
