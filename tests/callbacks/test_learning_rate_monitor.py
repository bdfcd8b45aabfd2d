"""Tests for nnkit.callbacks.LearningRateMonitor.

Every expected rate is a closed form written here with numpy, evaluated at
the step the optimizer used (the last update: raw step ``T - 1`` after ``T``
raw steps). Hooks are driven by hand with the optimizer's step counter set
directly; small compiled fits check the real thing.
"""

import copy
import csv
import glob

import keras
import numpy as np
import pytest

from nnkit.callbacks import LearningRateMonitor, ReduceLROnPlateau
from nnkit.schedules import (
    Constant,
    CosineAnnealing,
    MultiStepDecay,
    Scaled,
    StepDecay,
    Warmup,
)
from nnkit.testing import assert_round_trip
from tests.conftest import KERAS_NUMPY2


def _model(optimizer, *, jit_compile=False):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    return model


def _epoch_value(monitor, model, raw_steps):
    """Set the raw step counter, run on_epoch_end, return the logged value."""
    from nnkit.callbacks._optimizer import unwrap

    unwrap(model.optimizer)._iterations.assign(raw_steps)
    logs = {}
    monitor.on_epoch_end(0, logs)
    return logs["lr"]


# closed forms, independent of nnkit
def _cosine(t, peak=0.1, total=100, floor=0.0):
    t = np.minimum(np.asarray(t, "float64"), total)
    return floor + 0.5 * (peak - floor) * (1.0 + np.cos(np.pi * t / total))


def _warmup_cosine(t):
    t = np.asarray(t, "float64")
    return np.where(t < 10, 0.1 * t / 10, _cosine(t - 10, total=90))


def _keras_cosine_warmup(t):
    # Keras CosineDecay(0.0, 50, warmup_target=0.1, warmup_steps=10)
    t = np.asarray(t, "float64")
    decay = 0.1 * 0.5 * (1 + np.cos(np.pi * np.minimum(t - 10, 50) / 50))
    return np.where(t < 10, 0.1 * t / 10, decay)


SCHEDULES = [
    pytest.param(lambda: 0.05, lambda t: np.full_like(np.asarray(t, "float64"), 0.05), id="float"),
    pytest.param(
        lambda: Constant(0.02),
        lambda t: np.full_like(np.asarray(t, "float64"), 0.02),
        id="Constant",
    ),
    pytest.param(
        lambda: StepDecay(0.1, step_size=7, factor=0.5),
        lambda t: 0.1 * 0.5 ** np.floor(np.asarray(t) / 7),
        id="StepDecay",
    ),
    pytest.param(
        lambda: MultiStepDecay(0.1, [5, 20], factor=0.1),
        lambda t: 0.1 * 0.1 ** np.searchsorted([5, 20], np.asarray(t), side="right"),
        id="MultiStepDecay",
    ),
    pytest.param(lambda: CosineAnnealing(0.1, total_steps=100), _cosine, id="CosineAnnealing"),
    pytest.param(
        lambda: Warmup(CosineAnnealing(0.1, total_steps=90), warmup_steps=10),
        _warmup_cosine,
        id="Warmup-Cosine",
    ),
    pytest.param(
        lambda: Scaled(StepDecay(0.1, step_size=7, factor=0.5), scale=0.25),
        lambda t: 0.025 * 0.5 ** np.floor(np.asarray(t) / 7),
        id="Scaled",
    ),
    pytest.param(
        lambda: keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5),
        lambda t: 0.1 * 0.5 ** (np.asarray(t) / 10),
        id="keras-ExponentialDecay",
    ),
    pytest.param(
        lambda: keras.optimizers.schedules.PiecewiseConstantDecay([5, 20], [0.1, 0.01, 0.001]),
        lambda t: np.select([np.asarray(t) <= 5, np.asarray(t) <= 20], [0.1, 0.01], 0.001),
        id="keras-PiecewiseConstantDecay",
    ),
    # Not elementwise (a cond inside): evaluated one step at a time.
    pytest.param(
        lambda: keras.optimizers.schedules.CosineDecay(0.0, 50, warmup_target=0.1, warmup_steps=10),
        _keras_cosine_warmup,
        id="keras-CosineDecay-warmup",
    ),
]


@pytest.mark.parametrize(("make", "closed_form"), SCHEDULES)
def test_epoch_value_is_rate_of_last_step(make, closed_form):
    model = _model(keras.optimizers.SGD(make()))
    monitor = LearningRateMonitor()
    monitor.set_model(model)
    monitor.on_train_begin()
    for raw in (0, 1, 6, 7, 8, 21, 55, 150):
        expected = closed_form(max(raw - 1, 0))
        assert _epoch_value(monitor, model, raw) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(("make", "closed_form"), SCHEDULES)
def test_sample_every_samples_match_closed_form(make, closed_form):
    model = _model(keras.optimizers.SGD(make()))
    monitor = LearningRateMonitor(sample_every=3)
    monitor.set_model(model)
    monitor.on_train_begin()
    iterations = model.optimizer.iterations
    for epoch, end in enumerate((7, 15, 16, 40)):
        monitor.on_epoch_begin(epoch)
        iterations.assign(end)
        monitor.on_epoch_end(epoch, {})
    steps = [s for s, _ in monitor.samples]
    assert steps == list(range(0, 40, 3))
    rates = [r for _, r in monitor.samples]
    np.testing.assert_allclose(rates, closed_form(np.array(steps)), rtol=1e-5)


def test_samples_continue_from_a_restored_step_count():
    model = _model(keras.optimizers.SGD(StepDecay(0.1, step_size=4)))
    model.optimizer.iterations.assign(10)
    monitor = LearningRateMonitor(sample_every=4)
    monitor.set_model(model)
    monitor.on_train_begin()
    monitor.on_epoch_begin(0)
    model.optimizer.iterations.assign(21)
    monitor.on_epoch_end(0, {})
    assert [s for s, _ in monitor.samples] == [12, 16, 20]
    np.testing.assert_allclose(
        [r for _, r in monitor.samples], [0.1 * 0.1**3, 0.1 * 0.1**4, 0.1 * 0.1**5], rtol=1e-5
    )


def test_scaled_factor_is_read_at_epoch_end():
    scaled = Scaled(Constant(0.1), scale=1.0)
    model = _model(keras.optimizers.SGD(scaled))
    monitor = LearningRateMonitor(sample_every=1)
    monitor.set_model(model)
    monitor.on_train_begin()
    monitor.on_epoch_begin(0)
    model.optimizer.iterations.assign(2)
    scaled.set_scale(0.5)  # a change by user code, mid-epoch: seen as it is at the end
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert logs["lr"] == pytest.approx(0.05)
    assert monitor.samples == [(0, pytest.approx(0.05)), (1, pytest.approx(0.05))]


def test_gradient_accumulation_uses_raw_steps_and_counts_updates():
    # G=2: update j evaluates the schedule at raw step 2j + 1.
    schedule = StepDecay(0.1, step_size=1, factor=0.5)
    model = _model(keras.optimizers.SGD(schedule, gradient_accumulation_steps=2))
    monitor = LearningRateMonitor(sample_every=1)
    monitor.set_model(model)
    monitor.on_train_begin()
    optimizer = model.optimizer
    monitor.on_epoch_begin(0)
    optimizer._iterations.assign(7)  # updates 0, 1, 2 done (raw 1, 3, 5); raw 6 accumulated
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert logs["lr"] == pytest.approx(0.1 * 0.5**5)
    assert monitor.samples == [
        (0, pytest.approx(0.1 * 0.5**1)),
        (1, pytest.approx(0.1 * 0.5**3)),
        (2, pytest.approx(0.1 * 0.5**5)),
    ]
    # Before any update: the rate the first update will use.
    assert _epoch_value(monitor, model, 1) == pytest.approx(0.1 * 0.5)


def test_gradient_accumulation_fit_uses_the_logged_rates():
    # w <- w - lr * 2(w - 1) at each update; the accumulated gradient is the
    # mean of G identical gradients (no update in between), i.e. the same.
    x = np.ones((8, 1), "float32")
    schedule = StepDecay(0.1, step_size=1, factor=0.8)
    model = _model(keras.optimizers.SGD(schedule, gradient_accumulation_steps=2))
    monitor = LearningRateMonitor(sample_every=1)
    history = model.fit(x, x, batch_size=2, epochs=2, shuffle=False, callbacks=[monitor], verbose=0)
    rates = [0.1 * 0.8 ** (2 * j + 1) for j in range(4)]
    assert [s for s, _ in monitor.samples] == [0, 1, 2, 3]
    np.testing.assert_allclose([r for _, r in monitor.samples], rates, rtol=1e-5)
    np.testing.assert_allclose(history.history["lr"], [rates[1], rates[3]], rtol=1e-5)
    w = 0.0
    for rate in rates:
        w -= rate * 2.0 * (w - 1.0)
    assert float(model.get_weights()[0].item()) == pytest.approx(w, rel=1e-5)


@pytest.fixture
def mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def test_loss_scale_optimizer_under_mixed_precision(mixed_precision):
    x = np.full((8, 1), 0.5, "float32")
    model = _model(keras.optimizers.SGD(StepDecay(0.1, step_size=3, factor=0.5)))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    monitor = LearningRateMonitor(sample_every=2)
    history = model.fit(x, x, batch_size=2, epochs=2, callbacks=[monitor], verbose=0)
    inner = model.optimizer.inner_optimizer
    steps = int(inner.iterations.numpy())  # steps with non-finite gradients are skipped
    assert steps > 0
    assert history.history["lr"][-1] == pytest.approx(0.1 * 0.5 ** ((steps - 1) // 3), rel=1e-5)
    assert [s for s, _ in monitor.samples] == list(range(0, steps, 2))
    np.testing.assert_allclose(
        [r for _, r in monitor.samples],
        [0.1 * 0.5 ** (s // 3) for s in range(0, steps, 2)],
        rtol=1e-5,
    )


def test_loss_scale_optimizer_float_rate():
    model = _model(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.03)))
    monitor = LearningRateMonitor()
    monitor.set_model(model)
    assert _epoch_value(monitor, model, 5) == pytest.approx(0.03)


def test_history_and_csv_logger_see_the_column(tmp_path):
    x = np.ones((8, 1), "float32")
    model = _model(keras.optimizers.SGD(StepDecay(0.1, step_size=4, factor=0.5)))
    path = tmp_path / "log.csv"
    history = model.fit(
        x,
        x,
        batch_size=2,
        epochs=3,
        verbose=0,
        callbacks=[LearningRateMonitor(), keras.callbacks.CSVLogger(str(path))],
    )
    expected = [0.1 * 0.5 ** ((4 * (e + 1) - 1) // 4) for e in range(3)]
    np.testing.assert_allclose(history.history["lr"], expected, rtol=1e-6)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    np.testing.assert_allclose([float(r["lr"]) for r in rows], expected, rtol=1e-6)


def test_custom_log_name():
    model = _model(keras.optimizers.SGD(0.5))
    monitor = LearningRateMonitor("lr")
    monitor.set_model(model)
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert logs == {"lr": 0.5}


@pytest.mark.parametrize("monitor_first", [True, False])
def test_agrees_with_reduce_lr_on_plateau_in_either_order(monitor_first):
    # The plateau callback reduces at every epoch end from epoch 1 on; both
    # callbacks must log the rate the epoch used, before that reduction.
    x = np.ones((4, 1), "float32")
    model = _model(keras.optimizers.SGD(StepDecay(0.1, step_size=2, factor=0.8)))
    monitor = LearningRateMonitor(sample_every=1)
    plateau = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=100.0)
    callbacks = [monitor, plateau] if monitor_first else [plateau, monitor]
    history = model.fit(x, x, batch_size=2, epochs=3, callbacks=callbacks, verbose=0)
    scale = [1.0, 1.0, 0.5]  # per epoch
    per_step = [scale[t // 2] * 0.1 * 0.8 ** (t // 2) for t in range(6)]
    np.testing.assert_allclose([r for _, r in monitor.samples], per_step, rtol=1e-6)
    np.testing.assert_allclose(history.history["lr"], per_step[1::2], rtol=1e-6)


@pytest.mark.filterwarnings(KERAS_NUMPY2)  # Keras's own callback reads with convert_to_numpy
def test_agrees_with_keras_reduce_lr_on_plateau_listed_after():
    x = np.ones((4, 1), "float32")
    model = _model(keras.optimizers.SGD(0.1))
    keras_plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.5, patience=1, min_delta=100.0
    )
    logged = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logged.append(logs["lr"])

    callbacks = [LearningRateMonitor(), Spy(), keras_plateau]
    history = model.fit(x, x, batch_size=4, epochs=3, callbacks=callbacks, verbose=0)
    np.testing.assert_allclose(logged, [0.1, 0.1, 0.05], rtol=1e-6)
    np.testing.assert_allclose(history.history["lr"], logged, rtol=1e-6)


def _read_scalars(log_dir, tag):
    import tensorflow as tf

    values = []
    for path in sorted(glob.glob(f"{log_dir}/events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values.append((event.step, float(tf.make_ndarray(value.tensor))))
    return values


def test_writes_samples_to_tensorboard(tmp_path):
    x = np.ones((8, 1), "float32")
    model = _model(keras.optimizers.SGD(CosineAnnealing(0.1, total_steps=8)))
    log_dir = tmp_path / "lr"
    monitor = LearningRateMonitor(sample_every=2, log_dir=log_dir)
    model.fit(x, x, batch_size=2, epochs=2, callbacks=[monitor], verbose=0)
    assert monitor._writer is None  # closed at train end
    written = _read_scalars(str(log_dir), "lr")
    assert [s for s, _ in written] == [0, 2, 4, 6]
    np.testing.assert_allclose(
        [r for _, r in written], _cosine([0, 2, 4, 6], total=8), rtol=1e-5, atol=1e-8
    )


def test_small_fit_with_jit_compile():
    x = np.ones((8, 1), "float32")
    model = _model(keras.optimizers.SGD(CosineAnnealing(0.1, total_steps=12)), jit_compile=True)
    monitor = LearningRateMonitor(sample_every=3)
    history = model.fit(x, x, batch_size=2, epochs=3, callbacks=[monitor], verbose=0)
    np.testing.assert_allclose(history.history["lr"], _cosine([3, 7, 11], total=12), rtol=1e-5)
    assert [s for s, _ in monitor.samples] == [0, 3, 6, 9]
    # Rates really used: SGD on mse((w - 1)^2), one step per batch.
    w = 0.0
    for rate in _cosine(np.arange(12), total=12):
        w -= rate * 2.0 * (w - 1.0)
    assert float(model.get_weights()[0].item()) == pytest.approx(w, rel=1e-5)


def test_no_batch_hooks_and_async_safe():
    monitor = LearningRateMonitor(sample_every=5)
    assert monitor.async_safe is True
    for hook in ("on_batch_end", "on_train_batch_end", "on_train_batch_begin", "on_batch_begin"):
        assert getattr(LearningRateMonitor, hook) is getattr(keras.callbacks.Callback, hook)


def test_get_config_round_trip(tmp_path):
    assert LearningRateMonitor().get_config() == {
        "log_name": "lr",
        "sample_every": None,
        "log_dir": None,
    }
    monitor = LearningRateMonitor("lr", sample_every=10, log_dir=tmp_path / "tb")
    assert monitor.get_config() == {
        "log_name": "lr",
        "sample_every": 10,
        "log_dir": str(tmp_path / "tb"),
    }
    assert_round_trip(monitor)


@pytest.mark.parametrize("after_fit", [False, True])
def test_deepcopy_does_not_copy_model_or_writer(after_fit, tmp_path):
    x = np.ones((4, 1), "float32")
    model = _model(keras.optimizers.SGD(0.1))
    monitor = LearningRateMonitor(sample_every=1, log_dir=tmp_path)
    if after_fit:
        model.fit(x, x, batch_size=2, epochs=1, callbacks=[monitor], verbose=0)
    clone = copy.deepcopy(monitor)
    assert clone._model is None and clone._writer is None
    assert clone.get_config() == monitor.get_config()
    assert clone.samples == monitor.samples and clone.samples is not monitor.samples
    if after_fit:
        assert monitor.model is model


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"log_name": ""}, ValueError, r"Received: log_name=''"),
        ({"log_name": 3}, TypeError, r"Received: log_name=3"),
        ({"sample_every": 0}, ValueError, r"Received: sample_every=0"),
        ({"sample_every": 2.5}, ValueError, r"Received: sample_every=2\.5"),
        ({"sample_every": True}, TypeError, r"Received: sample_every=True"),
        ({"log_dir": 5, "sample_every": 1}, TypeError, r"Received: log_dir=5"),
        ({"log_dir": "logs"}, ValueError, r"Received: log_dir='logs', sample_every=None"),
    ],
)
def test_validation_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        LearningRateMonitor(**kwargs)


def test_sample_every_is_keyword_only():
    with pytest.raises(TypeError):
        LearningRateMonitor("learning_rate", 5)


def test_keras_tensorboard_shows_the_used_rate(tmp_path):
    """The epoch value reaches keras.callbacks.TensorBoard through the logs.

    Keras's TensorBoard writes its own ``learning_rate`` (the rate of the *next*
    step, ``schedule(iterations)``) over that key in its copy of the logs, so
    the used rate shows in TensorBoard under another ``log_name``.
    """
    x = np.ones((8, 1), "float32")
    model = _model(keras.optimizers.SGD(CosineAnnealing(0.1, total_steps=8)))
    board = keras.callbacks.TensorBoard(log_dir=str(tmp_path / "tb"))
    monitor = LearningRateMonitor("used_learning_rate")
    model.fit(x, x, batch_size=2, epochs=2, callbacks=[monitor, board], verbose=0)
    used = _read_scalars(str(tmp_path / "tb" / "train"), "epoch_used_learning_rate")
    assert [step for step, _ in used] == [0, 1]
    np.testing.assert_allclose([r for _, r in used], _cosine([3, 7], total=8), rtol=1e-5, atol=1e-8)
    keras_own = _read_scalars(str(tmp_path / "tb" / "train"), "epoch_learning_rate")
    np.testing.assert_allclose([r for _, r in keras_own], _cosine([4, 8], total=8), atol=1e-7)


def test_samples_are_resumable_state():
    from nnkit.callbacks import LearningRateMonitor, StatefulCallback

    monitor = LearningRateMonitor(sample_every=2)
    assert isinstance(monitor, StatefulCallback)
    monitor.samples, monitor._last_end = [(0, 0.1), (2, 0.05)], 4
    state = monitor.get_state()
    assert state == {"samples": [[0, 0.1], [2, 0.05]], "last_end": 4}
    other = LearningRateMonitor(sample_every=2)
    other.set_state(state)
    assert other.samples == [(0, 0.1), (2, 0.05)] and other._last_end == 4
