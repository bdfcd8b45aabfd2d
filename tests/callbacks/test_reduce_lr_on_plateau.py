"""Tests for nnkit.callbacks.ReduceLROnPlateau.

Plateau decisions are checked by driving the hooks with scripted logs, side
by side with Keras's own callback; rates under a schedule against closed
forms written here with numpy; and a few small compiled fits check that the
train function really uses the reduced rate.
"""

import copy
import json
import math

import keras
import numpy as np
import pytest

from nnkit._keras.optimizer import learning_rate_object
from nnkit.callbacks import Reason, ReduceLROnPlateau
from nnkit.schedules import Constant, CosineAnnealing, Scaled, StepDecay
from nnkit.testing import assert_json_plain, assert_round_trip
from tests.conftest import KERAS_NUMPY2


def _model(optimizer, *, jit_compile=False, metrics=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile, metrics=metrics)
    return model


def _drive(callback, model, values, monitor="val_loss", steps_per_epoch=1):
    """Run the epoch hooks with scripted metric values; return per-epoch lr and logs."""
    callback.set_model(model)
    callback.set_params({"epochs": len(values), "steps": steps_per_epoch, "verbose": 0})
    callback.on_train_begin()
    rates, logs_seen = [], []
    optimizer = model.optimizer
    for epoch, value in enumerate(values):
        callback.on_epoch_begin(epoch)
        optimizer.iterations.assign_add(steps_per_epoch)
        logs = {monitor: value}
        callback.on_epoch_end(epoch, logs)
        rates.append(float(optimizer.learning_rate.numpy()))
        logs_seen.append(logs)
    callback.on_train_end()
    return rates, logs_seen


def _reductions(rates, initial):
    previous, epochs = initial, []
    for epoch, rate in enumerate(rates):
        if rate != previous:
            epochs.append(epoch)
        previous = rate
    return epochs


# -- the plateau logic, side by side with Keras ---------------------------------

NAN = float("nan")
# (kwargs, metric values, reduction epochs worked out by hand)
PLATEAU_CASES = [
    ({"patience": 2}, [1.0, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8], [3, 6]),
    ({"patience": 1, "cooldown": 2}, [1.0] * 7, [1, 3, 5]),
    ({"patience": 1, "factor": 0.5, "min_lr": 0.3}, [1.0] * 6, [1, 2]),
    ({"patience": 0}, [1.0, 0.5, 0.6, 0.7], [2, 3]),
    ({"patience": 3}, [1.0, 1.1, 1.2, 0.5, 0.6, 0.7, 0.8], [6]),
    ({"patience": 1, "min_delta": 1e-4}, [1.0, 0.99995, 0.9999, 0.9998], [1, 2]),
    # 1 - 1e-9 equals 1.0 in float32: Keras (and nnkit) see no improvement.
    ({"patience": 1, "min_delta": 0.0}, [1.0, 1.0 - 1e-9, 1.0 - 2e-9], [1, 2]),
    ({"patience": 1}, [1.0, NAN, NAN, 0.5], [1, 2]),
    ({"patience": 2, "mode": "max", "monitor": "val_accuracy"}, [0.5, 0.6, 0.6, 0.6, 0.7], [3]),
    ({"patience": 2, "mode": "min", "monitor": "val_accuracy"}, [0.5, 0.6, 0.6, 0.6, 0.7], [2, 4]),
    # Keras decrements the cooldown in the epoch it counts, so cooldown=1 never blocks.
    ({"patience": 1, "cooldown": 1, "factor": 0.2}, [3, 2, 2, 2, 1, 1, 1, 1], [2, 3, 5, 6, 7]),
    ({"patience": 10}, [1.0] * 5, []),
]


@pytest.mark.filterwarnings(KERAS_NUMPY2)  # Keras's own callback reads with convert_to_numpy
@pytest.mark.parametrize(("kwargs", "values", "expected"), PLATEAU_CASES)
def test_same_reductions_as_keras_with_float_learning_rate(kwargs, values, expected):
    monitor = kwargs.get("monitor", "val_loss")
    ours_model = _model(keras.optimizers.SGD(1.0))
    keras_model = _model(keras.optimizers.SGD(1.0))
    ours, ours_logs = _drive(ReduceLROnPlateau(**kwargs), ours_model, values, monitor)
    theirs, theirs_logs = _drive(
        keras.callbacks.ReduceLROnPlateau(**kwargs), keras_model, values, monitor
    )
    assert ours == theirs
    assert [logs["learning_rate"] for logs in ours_logs] == [
        logs["learning_rate"] for logs in theirs_logs
    ]
    assert _reductions(ours, 1.0) == expected


def test_auto_mode_infers_direction_from_compiled_metric():
    model = _model(keras.optimizers.SGD(1.0), metrics=["accuracy"])
    x = np.zeros((2, 1), "float32")
    model.evaluate(x, x, verbose=0)  # builds the compiled metrics
    callback = ReduceLROnPlateau(monitor="val_accuracy", patience=1)
    rates, _ = _drive(callback, model, [0.5, 0.6, 0.6], monitor="val_accuracy")
    assert _reductions(rates, 1.0) == [2]


def test_auto_mode_unknown_metric_raises():
    callback = ReduceLROnPlateau(monitor="val_mystery", patience=1)
    with pytest.raises(ValueError, match="monitor='val_mystery'"):
        _drive(callback, _model(keras.optimizers.SGD(1.0)), [1.0], monitor="val_mystery")


def test_missing_metric_raises_naming_the_logged_keys():
    """Issue 15 #3: one behaviour for every monitoring callback (EarlyStopping raises too)."""
    callback = ReduceLROnPlateau(monitor="val_los")
    callback.set_model(_model(keras.optimizers.SGD(0.5)))
    callback.on_train_begin()
    with pytest.raises(ValueError, match=r"`val_los`.*Logged keys: learning_rate, loss, val_loss"):
        callback.on_epoch_end(0, {"loss": 1.0, "val_loss": 1.0})


def test_missing_metric_warns_like_keras_on_request_and_still_logs_rate():
    callback = ReduceLROnPlateau(monitor="val_los", on_missing="warn")
    model = _model(keras.optimizers.SGD(0.5))
    callback.set_model(model)
    callback.on_train_begin()
    logs = {"loss": 1.0, "val_loss": 1.0}
    with pytest.warns(UserWarning) as caught:
        callback.on_epoch_end(0, logs)
    messages = [str(w.message) for w in caught]
    assert any("`val_los`, which is not in the epoch logs" in m for m in messages), messages
    assert logs["learning_rate"] == 0.5


def test_decide_is_pure_and_reports_reasons():
    callback = ReduceLROnPlateau(patience=2, cooldown=1, factor=0.5, min_lr=0.2)
    callback.wait, callback.best = 1, 1.0
    first = callback.decide(1.0, 1.0)
    assert callback.decide(1.0, 1.0) == first
    assert (callback.wait, callback.best, callback.cooldown_counter) == (1, 1.0, 0)
    assert first.act and first.reason is Reason.NO_IMPROVEMENT
    assert callback.reduced_rate(1.0) == (0.5, 0.5)
    assert (first.wait, first.cooldown, first.best) == (0, 1, 1.0)
    assert callback.decide(0.5, 1.0).reason is Reason.IMPROVED
    assert callback.reduced_rate(0.3)[1] == pytest.approx(0.2 / 0.3)
    assert callback.decide(1.0, 0.2).reason is Reason.AT_MIN_LR
    callback.wait = 0
    assert callback.decide(1.0, 1.0).reason is Reason.WAITING
    callback.cooldown_counter = 2
    assert callback.decide(1.0, 1.0).reason is Reason.COOLDOWN


# -- with a schedule ------------------------------------------------------------


def _step_decay(t):
    return 0.1 * 0.5 ** np.floor(t / 3)


def _cosine(t, peak=1.0, total=100):
    t = np.minimum(t, total)
    return 0.5 * peak * (1.0 + np.cos(np.pi * t / total))


def _exponential(t):
    return 0.2 * 0.5 ** (t / 10)


SCHEDULES = [
    pytest.param(lambda: StepDecay(0.1, step_size=3, factor=0.5), _step_decay, id="StepDecay"),
    pytest.param(lambda: CosineAnnealing(1.0, total_steps=100), _cosine, id="CosineAnnealing"),
    pytest.param(
        lambda: keras.optimizers.schedules.ExponentialDecay(0.2, 10, 0.5),
        _exponential,
        id="keras-ExponentialDecay",
    ),
]


@pytest.mark.parametrize(("make", "closed_form"), SCHEDULES)
@pytest.mark.parametrize("min_lr", [0.0, 0.02])
def test_schedule_is_scaled_by_closed_form(make, closed_form, min_lr):
    factor, steps = 0.5, 4
    optimizer = keras.optimizers.SGD(make())
    model = _model(optimizer)
    callback = ReduceLROnPlateau(factor=factor, patience=1, min_lr=min_lr)
    callback.set_model(model)
    callback.on_train_begin()
    scaled = learning_rate_object(optimizer)
    assert isinstance(scaled, Scaled) and scaled.get_scale() == 1.0

    scale = 1.0
    for epoch in range(6):
        optimizer.iterations.assign_add(steps)
        last = steps * (epoch + 1) - 1
        used = scale * closed_form(last)
        logs = {"val_loss": 1.0}
        callback.on_epoch_end(epoch, logs)
        assert logs["learning_rate"] == pytest.approx(used, rel=1e-5)
        if epoch >= 1 and used > min_lr:
            # the rule: the rate at the last step becomes max(factor * rate, min_lr)
            scale = max(factor * used, min_lr) / closed_form(last)
        assert scaled.get_scale() == pytest.approx(scale, rel=1e-5)
        # what the optimizer will use next: scale * schedule(next step)
        next_rate = float(optimizer.learning_rate.numpy())
        assert next_rate == pytest.approx(scale * closed_form(last + 1), rel=1e-5)


def test_min_lr_applies_to_effective_rate_closed_form():
    # Cosine 1.0 -> 0 over 100 steps; min_lr=0.3, factor=0.1: the scale drops
    # only as far as makes the current rate 0.3, then no more.
    optimizer = keras.optimizers.SGD(CosineAnnealing(1.0, total_steps=100))
    model = _model(optimizer)
    callback = ReduceLROnPlateau(factor=0.1, patience=0, min_lr=0.3)
    callback.set_model(model)
    callback.on_train_begin()
    optimizer.iterations.assign(11)  # last step used: 10
    callback.best = 0.0  # nothing improves: patience 0 reduces now
    callback.on_epoch_end(0, {"val_loss": 1.0})
    rate_10 = 0.5 * (1 + math.cos(math.pi * 10 / 100))
    assert learning_rate_object(optimizer).get_scale() == pytest.approx(0.3 / rate_10, rel=1e-6)
    # At min_lr now: a further plateau leaves the scale alone.
    callback.on_epoch_end(1, {"val_loss": 1.0})
    assert learning_rate_object(optimizer).get_scale() == pytest.approx(0.3 / rate_10, rel=1e-6)
    # Later the schedule itself goes below min_lr; the callback never raises it.
    optimizer.iterations.assign(61)
    callback.on_epoch_end(2, {"val_loss": 1.0})
    assert learning_rate_object(optimizer).get_scale() == pytest.approx(0.3 / rate_10, rel=1e-6)


def test_existing_scaled_is_used_not_rewrapped():
    scaled = Scaled(Constant(0.1), scale=0.5)
    optimizer = keras.optimizers.SGD(scaled)
    callback = ReduceLROnPlateau(patience=0, factor=0.5)
    _drive(callback, _model(optimizer), [1.0, 1.0])
    assert learning_rate_object(optimizer) is scaled
    assert scaled.get_scale() == pytest.approx(0.25)


def test_callable_learning_rate_raises():
    optimizer = keras.optimizers.SGD(lambda: 0.1)
    callback = ReduceLROnPlateau()
    callback.set_model(_model(optimizer))
    with pytest.raises(TypeError, match="plain callable"):
        callback.on_train_begin()


def test_loss_scale_optimizer_is_unwrapped():
    inner = keras.optimizers.SGD(StepDecay(0.1, step_size=3, factor=0.5))
    model = _model(keras.optimizers.LossScaleOptimizer(inner))
    callback = ReduceLROnPlateau(patience=1, factor=0.5)
    rates, logs = _drive(callback, model, [1.0, 1.0, 1.0], steps_per_epoch=2)
    assert isinstance(learning_rate_object(inner), Scaled)
    assert learning_rate_object(inner).get_scale() == pytest.approx(0.25)
    assert [entry["learning_rate"] for entry in logs] == pytest.approx(
        [_step_decay(1), _step_decay(3), 0.5 * _step_decay(5)], rel=1e-6
    )
    assert rates[-1] == pytest.approx(0.25 * _step_decay(6), rel=1e-6)


def test_loss_scale_optimizer_float_rate():
    inner = keras.optimizers.SGD(0.4)
    model = _model(keras.optimizers.LossScaleOptimizer(inner))
    _drive(ReduceLROnPlateau(patience=1, factor=0.5), model, [1.0, 1.0, 1.0])
    assert float(inner.learning_rate.numpy()) == pytest.approx(0.1)


# -- compiled fit ---------------------------------------------------------------


def _simulate_w(rates):
    """w after SGD on mse((w·1 - 1)²) with one full batch per epoch at these rates."""
    w = 0.0
    for rate in rates:
        w -= rate * 2.0 * (w - 1.0)
    return w


def _plateau_callback():
    # `loss` never improves by 100: epoch 0 sets best, every later epoch reduces.
    return ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=100.0)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("fit_before", [False, True], ids=["fresh", "traced-before"])
def test_compiled_fit_trains_with_reduced_scale(jit_compile, fit_before):
    x = np.ones((4, 1), "float32")
    schedule = StepDecay(0.1, step_size=2, factor=0.8)
    model = _model(keras.optimizers.SGD(schedule), jit_compile=jit_compile)
    done = 0
    if fit_before:  # trace the train function with the bare schedule first
        model.fit(x, x, batch_size=4, epochs=1, verbose=0)
        done = 1
    epochs = 4
    w_start = float(model.get_weights()[0].item())
    history = model.fit(
        x, x, batch_size=4, epochs=epochs, callbacks=[_plateau_callback()], verbose=0
    )
    base = [0.1 * 0.8 ** ((done + e) // 2) for e in range(epochs)]
    used = [base[e] * 0.5 ** max(e - 1, 0) for e in range(epochs)]
    w = w_start
    for rate in used:
        w -= rate * 2.0 * (w - 1.0)
    assert float(model.get_weights()[0].item()) == pytest.approx(w, rel=1e-5)
    assert history.history["learning_rate"] == pytest.approx(used, rel=1e-5)
    optimizer = model.optimizer
    assert learning_rate_object(optimizer).get_scale() == pytest.approx(0.5 ** (epochs - 1))
    next_rate = float(optimizer.learning_rate.numpy())
    assert next_rate == pytest.approx(0.5 ** (epochs - 1) * 0.1 * 0.8 ** ((done + epochs) // 2))


@pytest.mark.filterwarnings(KERAS_NUMPY2)  # Keras's own callback reads with convert_to_numpy
def test_compiled_fit_float_rate_matches_keras():
    x = np.ones((4, 1), "float32")
    results = []
    for callback in (
        _plateau_callback(),
        keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=100.0),
    ):
        model = _model(keras.optimizers.SGD(0.1))
        history = model.fit(x, x, batch_size=4, epochs=4, callbacks=[callback], verbose=0)
        results.append(
            (
                history.history["learning_rate"],
                float(model.optimizer.learning_rate.numpy()),
                float(model.get_weights()[0].item()),
            )
        )
    assert results[0] == results[1]
    assert results[0][2] == pytest.approx(_simulate_w([0.1, 0.1, 0.05, 0.025]), rel=1e-5)


def test_second_fit_keeps_scale_and_state_resets(tmp_path):
    x = np.ones((4, 1), "float32")
    model = _model(keras.optimizers.SGD(Constant(0.1)))
    callback = _plateau_callback()
    model.fit(x, x, batch_size=4, epochs=3, callbacks=[callback], verbose=0)
    scaled = learning_rate_object(model.optimizer)
    assert scaled.get_scale() == pytest.approx(0.25)
    history = model.fit(x, x, batch_size=4, epochs=2, callbacks=[callback], verbose=0)
    # not reset at train begin (like Keras): epoch 0 sets best, epoch 1 reduces
    assert learning_rate_object(model.optimizer) is scaled
    assert history.history["learning_rate"] == pytest.approx([0.025, 0.025])
    assert scaled.get_scale() == pytest.approx(0.125)


def test_saved_model_keeps_reduced_scale(tmp_path):
    x = np.ones((4, 1), "float32")
    model = _model(keras.optimizers.SGD(StepDecay(0.1, step_size=2, factor=0.5)))
    model.fit(x, x, batch_size=4, epochs=3, callbacks=[_plateau_callback()], verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    reloaded = learning_rate_object(loaded.optimizer)
    assert isinstance(reloaded, Scaled)
    assert reloaded.get_scale() == pytest.approx(0.25)
    assert float(loaded.optimizer.learning_rate.numpy()) == pytest.approx(0.25 * 0.1 * 0.5)
    assert_round_trip(reloaded)


def test_verbose_prints_message(capsys):
    model = _model(keras.optimizers.SGD(Constant(0.1)))
    _drive(ReduceLROnPlateau(patience=0, verbose=1, factor=0.5), model, [1.0, 1.0])
    out = capsys.readouterr().out
    # Issue 15 #12: old → new for both the scale and the rate, 4 significant digits.
    assert (
        "Epoch 2: ReduceLROnPlateau reducing the schedule scale 1 → 0.5 "
        "(learning rate 0.1 → 0.05 at the last step)."
    ) in out


# -- state, config, copies ------------------------------------------------------


def test_state_round_trip_restores_scale():
    model = _model(keras.optimizers.SGD(Constant(0.1)))
    callback = ReduceLROnPlateau(patience=2, cooldown=3, factor=0.5)
    _drive(callback, model, [1.0, 1.0, 1.0])
    state = callback.get_state()
    assert_json_plain(state, "get_state()")
    assert state == {
        "wait": 0,
        "cooldown_counter": 3,
        "best": 1.0,
        "scale": 0.5,
        "learning_rate": None,
    }

    # A fresh run: restored state is applied at train begin, after the wrap.
    other_model = _model(keras.optimizers.SGD(Constant(0.1)))
    restored = ReduceLROnPlateau(patience=2, cooldown=3, factor=0.5)
    restored.set_state(json.loads(json.dumps(state)))
    assert restored.get_state() == state
    restored.set_model(other_model)
    restored.on_train_begin()
    assert learning_rate_object(other_model.optimizer).get_scale() == 0.5
    restored.set_state(state)  # while attached: applied at once
    assert (restored.wait, restored.cooldown_counter, restored.best) == (0, 3, 1.0)


def test_state_round_trip_restores_float_rate():
    model = _model(keras.optimizers.SGD(0.1))
    callback = ReduceLROnPlateau(patience=0, factor=0.5)
    _drive(callback, model, [1.0, 1.0])
    state = callback.get_state()
    assert state["scale"] is None and state["learning_rate"] == pytest.approx(0.05)
    other = _model(keras.optimizers.SGD(0.1))
    callback.set_model(other)
    callback.on_train_begin()
    callback.set_state(state)
    assert float(other.optimizer.learning_rate.numpy()) == pytest.approx(0.05)


def test_state_of_other_kind_raises():
    callback = ReduceLROnPlateau()
    callback.set_model(_model(keras.optimizers.SGD(0.1)))
    callback.on_train_begin()
    state = {"wait": 0, "cooldown_counter": 0, "best": None, "scale": 0.5, "learning_rate": None}
    with pytest.raises(ValueError, match="holds a float learning rate"):
        callback.set_state(state)


def test_get_config_round_trip():
    callback = ReduceLROnPlateau(
        monitor="loss",
        factor=0.2,
        patience=3,
        verbose=1,
        mode="min",
        min_delta=0.01,
        cooldown=2,
        min_lr=1e-5,
    )
    config = callback.get_config()
    assert config == {
        "monitor": "loss",
        "factor": 0.2,
        "patience": 3,
        "verbose": 1,
        "mode": "min",
        "min_delta": 0.01,
        "cooldown": 2,
        "on_missing": "raise",
        "min_lr": 1e-5,
    }
    assert_round_trip(callback)


@pytest.mark.parametrize("after_fit", [False, True])
def test_deepcopy_does_not_copy_model(after_fit):
    x = np.ones((4, 1), "float32")
    model = _model(keras.optimizers.SGD(Constant(0.1)))
    callback = _plateau_callback()
    if after_fit:
        model.fit(x, x, batch_size=4, epochs=3, callbacks=[callback], verbose=0)
    clone = copy.deepcopy(callback)
    assert clone._model is None and clone._watched is None and clone._scaled is None
    assert clone.get_config() == callback.get_config()
    assert (clone.wait, clone.best) == (callback.wait, callback.best)
    if after_fit:
        assert callback.model is model
        # The copy works on a new model, whose rate starts unreduced.
        fresh = _model(keras.optimizers.SGD(Constant(0.1)))
        history = fresh.fit(x, x, batch_size=4, epochs=2, callbacks=[clone], verbose=0)
        assert history.history["learning_rate"] == pytest.approx([0.1, 0.1])
        assert learning_rate_object(fresh.optimizer).get_scale() == pytest.approx(0.5)
        assert learning_rate_object(model.optimizer).get_scale() == pytest.approx(0.25)


# -- validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"factor": 1.0}, ValueError, "Received: factor=1.0"),
        ({"factor": 1.5}, ValueError, "Received: factor=1.5"),
        ({"factor": 0.0}, ValueError, "Received: factor=0.0"),
        ({"factor": -0.1}, ValueError, "Received: factor=-0.1"),
        ({"factor": float("nan")}, ValueError, "factor"),
        ({"factor": True}, TypeError, "Received: factor=True"),
        ({"factor": "0.1"}, TypeError, "factor"),
        ({"patience": -1}, ValueError, "Received: patience=-1"),
        ({"patience": 1.5}, ValueError, "Received: patience=1.5"),
        ({"cooldown": -1}, ValueError, "Received: cooldown=-1"),
        ({"verbose": True}, TypeError, "Received: verbose=True"),
        ({"mode": "up"}, ValueError, "Received: mode='up'"),
        ({"min_delta": -1e-4}, ValueError, "Received: min_delta=-0.0001"),
        ({"min_lr": -1.0}, ValueError, "Received: min_lr=-1.0"),
        ({"min_lr": float("inf")}, ValueError, "min_lr"),
        ({"monitor": ""}, ValueError, "Received: monitor=''"),
        ({"monitor": None}, TypeError, "Received: monitor=None"),
    ],
)
def test_validation_errors(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        ReduceLROnPlateau(**kwargs)


def test_rejects_legacy_kwargs():
    with pytest.raises(TypeError):
        ReduceLROnPlateau(epsilon=1e-4)


# -- resuming with nnkit's BackupAndRestore ------------------------------------


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize(
    ("schedule", "backup_first"),
    [(True, True), (True, False), (False, True)],
    ids=["schedule-backup-first", "schedule-backup-last", "float-backup-first"],
)
def test_resumed_run_matches_uninterrupted_run(tmp_path, backup_first, schedule):
    from nnkit.callbacks import BackupAndRestore

    x = np.ones((4, 1), "float32")

    def run(backup_dir, *extra):
        rate = StepDecay(0.1, step_size=2, factor=0.8) if schedule else 0.1
        model = _model(keras.optimizers.SGD(rate))
        plateau = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, min_delta=100.0)
        backup = BackupAndRestore(str(backup_dir))
        callbacks = [backup, plateau] if backup_first else [plateau, backup]
        history = model.fit(
            x, x, batch_size=4, epochs=6, callbacks=callbacks + list(extra), verbose=0
        )
        return model, plateau, history

    reference, reference_plateau, _ = run(tmp_path / "reference")
    with pytest.raises(RuntimeError, match="interrupted"):
        run(tmp_path / "resumed", _Interrupt(3))
    model, plateau, history = run(tmp_path / "resumed")
    # Interrupted in an epoch end: the backup of that epoch was not written
    # yet (it is written once every callback of the epoch has run), so the
    # resumed run repeats epoch 3.
    assert history.epoch == [3, 4, 5]
    assert plateau.get_state() == reference_plateau.get_state()
    assert float(model.get_weights()[0].item()) == pytest.approx(
        float(reference.get_weights()[0].item()), rel=1e-6
    )
