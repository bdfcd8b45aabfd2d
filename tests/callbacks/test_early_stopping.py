"""nnkit.callbacks.EarlyStopping: scripted metric tables, checked against Keras's own callback."""

import copy
import json
import math

import keras
import numpy as np
import pytest

from nnkit.callbacks import EarlyStopping, StopReason
from nnkit.testing import assert_round_trip

NAN, INF = math.nan, math.inf
NNKIT_ONLY = ("check_finite", "divergence_threshold", "smoothing")


@pytest.fixture(scope="module")
def model():
    """A small real model whose compiled metrics (``accuracy``) are built."""
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    net.compile(keras.optimizers.SGD(0.1), loss="mse", metrics=["accuracy"])
    net.evaluate(np.zeros((2, 3)), np.zeros((2, 2)), verbose=0)  # builds the metrics
    return net


def drive(callback, model, values, monitor="val_loss", start=0, begin=True):
    """Feed ``values`` to the hooks from epoch ``start``; return the stop epoch or None."""
    callback.set_model(model)
    model.stop_training = False
    if begin:
        callback.on_train_begin()
    for epoch, value in enumerate(values, start=start):
        callback.on_epoch_end(epoch, {monitor: value})
        if model.stop_training:
            return epoch
    return None


# (id, kwargs, values, expected stop epoch or None, expected reason)
TABLE = [
    ("p0-improving", dict(patience=0), [1.0, 0.9, 0.8, 0.7], None, "not_stopped"),
    ("p0-plateau", dict(patience=0), [1.0, 0.9, 0.95, 0.8], 2, "no_improvement"),
    ("p0-equal-is-no-gain", dict(patience=0), [1.0, 1.0], 1, "no_improvement"),
    ("p2", dict(patience=2), [1.0, 0.9, 0.91, 0.92, 0.93], 3, "no_improvement"),
    ("p2-recovers", dict(patience=2), [1.0, 0.9, 0.91, 0.85, 0.86, 0.87, 0.88], 5, "no_improvement"),
    ("min_delta-strict", dict(min_delta=0.05, patience=1), [1.0, 0.95, 0.9], 1, "no_improvement"),
    ("min_delta", dict(min_delta=0.05, patience=1), [1.0, 0.94, 0.9, 0.8], 2, "no_improvement"),
    # Keras compares in float32: a float64-only improvement is none.
    ("float32-compare", dict(patience=0), [1.0, 1.0 - 1e-9], 1, "no_improvement"),
    ("max", dict(monitor="val_accuracy", mode="max", patience=1), [0.5, 0.6, 0.6, 0.7], 2, "no_improvement"),
    ("auto-accuracy-is-max", dict(monitor="val_accuracy", patience=1), [0.5, 0.6, 0.55, 0.7], 2, "no_improvement"),
    ("auto-loss-is-min", dict(monitor="loss", patience=1), [0.5, 0.6, 0.55, 0.7], 1, "no_improvement"),
    ("min-overrides-accuracy", dict(monitor="val_accuracy", mode="min", patience=1), [0.5, 0.6, 0.4], 1, "no_improvement"),
    # Improvements that miss the baseline never reset `wait`, but they return
    # before the patience check (a Keras quirk): a steady slow descent never stops.
    ("baseline-slow-descent", dict(baseline=0.8, patience=2), [0.9, 0.85, 0.82, 0.81], None, "not_stopped"),
    ("baseline-not-reached", dict(baseline=0.8, patience=3), [0.9, 0.85, 0.86, 0.87], 2, "baseline_not_reached"),
    ("baseline-reached", dict(baseline=0.8, patience=2), [0.9, 0.7, 0.75, 0.76], 3, "no_improvement"),
    ("baseline-max", dict(monitor="val_accuracy", baseline=0.9, patience=2), [0.5, 0.6, 0.55], 2, "baseline_not_reached"),
    ("start_from_epoch", dict(start_from_epoch=3, patience=1), [5.0, 6.0, 7.0, 3.5, 3.6, 3.7], 4, "no_improvement"),
    ("start_from_epoch-p0", dict(start_from_epoch=2), [1.0, 2.0, 3.0, 3.5, 1.0], 3, "no_improvement"),
    # NaN and inf.
    ("nan-stops-at-once", dict(patience=5), [1.0, 0.9, NAN, 0.8], 2, "non_finite"),
    ("inf-stops-at-once", dict(patience=5), [1.0, INF], 1, "non_finite"),
    ("-inf-at-epoch-0", dict(patience=5), [-INF], 0, "non_finite"),
    ("nan-in-warm-up", dict(start_from_epoch=3, patience=5), [1.0, NAN], 1, "non_finite"),
    ("nan-unchecked", dict(patience=2, check_finite=False), [1.0, 0.9, NAN, 0.8, 0.85], None, "not_stopped"),
    ("nan-unchecked-first", dict(patience=1, check_finite=False), [NAN, 1.0, 0.9], 1, "no_improvement"),
    ("nan-unchecked-p1", dict(patience=1, check_finite=False), [1.0, NAN, 0.9, NAN], 1, "no_improvement"),
    # Divergence.
    ("diverged", dict(patience=10, divergence_threshold=2.0), [1.0, 1.5, 2.5], 2, "diverged"),
    ("at-threshold-is-not-diverged", dict(patience=10, divergence_threshold=2.0), [1.0, 2.0], None, "not_stopped"),
    ("diverged-max", dict(monitor="val_accuracy", patience=10, divergence_threshold=0.2), [0.5, 0.3, 0.1], 2, "diverged"),
    ("diverged-after-warm-up-only", dict(start_from_epoch=2, divergence_threshold=2.0, patience=9), [9.0, 9.0, 1.0, 3.0], 3, "diverged"),
]  # fmt: skip


def _compare_with_keras(kwargs, values):
    nnkit_only = any(key in kwargs for key in NNKIT_ONLY if key != "check_finite")
    non_finite = not all(math.isfinite(x) for x in values)
    return not nnkit_only and (not non_finite or kwargs.get("check_finite") is False)


@pytest.mark.parametrize(
    "kwargs, values, stop, reason", [r[1:] for r in TABLE], ids=[r[0] for r in TABLE]
)
def test_table(model, kwargs, values, stop, reason):
    kwargs = dict(kwargs)
    monitor = kwargs.pop("monitor", "val_loss")
    ours = EarlyStopping(monitor, **kwargs)
    assert drive(ours, model, values, monitor) == stop
    assert ours.stop_reason is StopReason(reason)
    assert ours.stopped_epoch == (stop or 0)
    if stop is not None:
        assert ours.stop_message.startswith(
            f"Epoch {stop + 1} (stopped_epoch={stop}): early stopping ({reason})"
        )
    if _compare_with_keras(kwargs, values):
        keras_kwargs = {k: v for k, v in kwargs.items() if k not in NNKIT_ONLY}
        theirs = keras.callbacks.EarlyStopping(monitor, **keras_kwargs)
        assert drive(theirs, model, values, monitor) == stop
        assert ours.stopped_epoch == theirs.stopped_epoch
        assert ours.wait == theirs.wait
        assert ours.best_epoch == theirs.best_epoch
        if theirs.best is None or math.isnan(theirs.best):
            assert ours.best is None or math.isnan(ours.best)
        else:
            assert ours.best == float(theirs.best)


def test_table_rows_compare_with_keras_where_they_can():
    compared = [r[0] for r in TABLE if _compare_with_keras(r[1], r[2])]
    assert len(compared) >= 20, compared


def _ema(values, alpha):
    """Closed form s_t = α^t·x_0 + (1−α)·Σ_{i=1..t} α^(t−i)·x_i."""
    x = np.asarray(values, dtype=np.float64)
    return np.array(
        [
            alpha**t * x[0] + (1 - alpha) * sum(alpha ** (t - i) * x[i] for i in range(1, t + 1))
            for t in range(len(x))
        ]
    )


@pytest.mark.parametrize(
    "alpha, values, kwargs",
    [
        (0.5, [1.0, 0.5, 0.9, 0.9, 0.9, 0.9], dict(patience=1)),
        (0.8, [1.0, 0.7, 0.95, 0.6, 0.9, 0.9, 0.95, 1.0], dict(patience=2)),
        (0.0, [1.0, 0.9, 0.95, 0.99], dict(patience=1)),
        (0.6, [3.0, 2.0, 1.0, 0.95, 0.96, 0.97, 0.98], dict(patience=1, min_delta=0.02)),
        (0.5, [9.0, 9.0, 1.0, 0.8, 0.9, 0.95], dict(patience=1, start_from_epoch=2)),
    ],
)
def test_smoothing_matches_keras_on_the_closed_form_ema(model, alpha, values, kwargs):
    start = kwargs.get("start_from_epoch", 0)
    smoothed = _ema(values[start:], alpha)
    theirs = keras.callbacks.EarlyStopping(**kwargs)
    expected = drive(theirs, model, [*values[:start], *smoothed.tolist()])

    ours = EarlyStopping(smoothing=alpha, **kwargs)
    assert drive(ours, model, values) == expected
    last = (len(values) if expected is None else expected + 1) - start - 1
    assert ours.smoothed == pytest.approx(smoothed[last], rel=1e-12)
    assert ours.best == pytest.approx(theirs.best, rel=1e-12)
    assert (ours.wait, ours.best_epoch) == (theirs.wait, theirs.best_epoch)


def test_smoothing_delays_a_stop_on_a_noisy_metric(model):
    values = [1.0, 0.8, 0.85, 0.7, 0.75, 0.6, 0.65, 0.5]
    assert drive(EarlyStopping(patience=0), model, values) == 2
    assert drive(EarlyStopping(patience=0, smoothing=0.5), model, values) is None


def test_divergence_uses_the_smoothed_value(model):
    # raw 5.0 > 3, but s = 0.5·1 + 0.5·5 = 3.0 is not > 3.
    assert (
        drive(EarlyStopping(divergence_threshold=3.0, patience=9, smoothing=0.5), model, [1.0, 5.0])
        is None
    )
    assert drive(EarlyStopping(divergence_threshold=3.0, patience=9), model, [1.0, 5.0]) == 1


def test_no_reason_code_in_the_epoch_logs(model):
    """Issue 15 #5: the stop reason is an attribute and a message, not a number in every line."""
    callback = EarlyStopping(patience=2)
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, value in enumerate([1.0, 0.9, 0.95, 0.99]):
        logs = {"val_loss": value}
        callback.on_epoch_end(epoch, logs)
        assert set(logs) == {"val_loss"}
    assert callback.stop_reason is StopReason.NO_IMPROVEMENT and callback.stopped_epoch == 3


def test_stop_reason_enum():
    assert [r.code for r in StopReason][:5] == [0, 1, 2, 3, 4]
    assert list(StopReason)[:5] == [
        StopReason.NOT_STOPPED, StopReason.NO_IMPROVEMENT, StopReason.BASELINE_NOT_REACHED,
        StopReason.NON_FINITE, StopReason.DIVERGED,
    ]  # fmt: skip
    assert StopReason.DIVERGED == "diverged" and str(StopReason.DIVERGED) == "diverged"
    assert json.dumps(StopReason.NON_FINITE) == '"non_finite"'


def test_decide_has_no_side_effects(model):
    callback = EarlyStopping(patience=1, restore_best_weights=True, smoothing=0.3)
    drive(callback, model, [1.0, 0.9])
    before = json.dumps({k: v for k, v in callback.get_state().items() if k != "best_weights"})
    decision = callback.decide(2, 0.95)
    assert decision.should_stop and decision.reason is StopReason.NO_IMPROVEMENT
    should_stop, reason, *_ = callback.decide(2, NAN)
    assert (should_stop, reason) == (True, StopReason.NON_FINITE)
    after = json.dumps({k: v for k, v in callback.get_state().items() if k != "best_weights"})
    assert before == after and not model.stop_training


def test_missing_monitor_warns_like_keras_on_request(model):
    callback = EarlyStopping("val_los", patience=0, on_missing="warn")
    callback.set_model(model)
    callback.on_train_begin()
    with pytest.warns(UserWarning, match="`val_los`, which is not in the epoch logs"):
        callback.on_epoch_end(0, {"loss": 1.0, "val_loss": 1.0})
    assert callback.wait == 0 and callback.best is None


@pytest.mark.parametrize("monitor", ["val_acc", "val_los"])
def test_a_monitor_that_is_not_logged_raises_naming_the_logged_keys(monitor):
    """Issue 15 #3, as the user met it: a typo or a metric that is not compiled."""
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    net.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.ones((8, 4)), np.zeros((8,))
    with pytest.raises(ValueError, match=rf"`{monitor}`.*Logged keys: .*val_accuracy.*val_loss"):
        net.fit(x, y, validation_split=0.25, epochs=3, verbose=0,
                callbacks=[EarlyStopping(monitor, mode="max")])  # fmt: skip


def test_a_validation_key_is_skipped_in_epochs_without_validation(model):
    callback = EarlyStopping(patience=0)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_end(0, {"loss": 1.0})  # validation_freq=2: no val_* keys this epoch
    callback.on_epoch_end(1, {"loss": 0.9, "val_loss": 0.8})
    assert callback.best == 0.8


def test_auto_mode_without_a_known_direction_raises(model):
    callback = EarlyStopping("val_unknown")
    callback.set_model(model)
    callback.on_train_begin()
    with pytest.raises(ValueError, match="monitor='val_unknown'"):
        callback.on_epoch_end(0, {"val_unknown": 1.0})


# -- best weights -------------------------------------------------------------


def _drive_with_weights(callback, model, values):
    """Give the model distinct weights per epoch (all = epoch); return the stop epoch."""
    callback.set_model(model)
    model.stop_training = False
    callback.on_train_begin()
    stop = None
    for epoch, value in enumerate(values):
        model.set_weights([np.full(w.shape, float(epoch), w.dtype) for w in model.get_weights()])
        callback.on_epoch_end(epoch, {"val_loss": value})
        if model.stop_training:
            stop = epoch
            break
    callback.on_train_end()
    return stop


@pytest.mark.parametrize(
    "values, stop, best_epoch",
    [
        ([1.0, 0.5, 0.7, 0.8, 0.9], 3, 1),  # stops: weights of epoch 1
        ([1.0, 0.5, 0.7], None, 1),  # last epoch without a stop: still epoch 1
        ([1.0, 0.9, 0.8, 0.7], None, 3),  # best is the last epoch
    ],
)
def test_restore_best_weights(model, values, stop, best_epoch):
    ours = EarlyStopping(patience=2, restore_best_weights=True)
    assert _drive_with_weights(ours, model, values) == stop
    assert ours.best_epoch == best_epoch
    for weight in model.get_weights():
        np.testing.assert_array_equal(weight, np.full(weight.shape, float(best_epoch)))
    theirs = keras.callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    assert _drive_with_weights(theirs, model, values) == stop
    assert theirs.best_epoch == best_epoch


def test_restore_best_weights_after_a_nan(model):
    ours = EarlyStopping(patience=5, restore_best_weights=True)
    assert _drive_with_weights(ours, model, [1.0, 0.5, NAN]) == 2
    assert ours.stop_reason is StopReason.NON_FINITE
    for weight in model.get_weights():
        np.testing.assert_array_equal(weight, np.ones(weight.shape))


def test_no_restore_without_the_flag(model):
    _drive_with_weights(EarlyStopping(patience=1), model, [1.0, 2.0])
    for weight in model.get_weights():
        np.testing.assert_array_equal(weight, np.ones(weight.shape))


def test_verbose_messages(model, capsys):
    callback = EarlyStopping(patience=1, verbose=1, restore_best_weights=True)
    _drive_with_weights(callback, model, [1.0, 0.5, 0.7])
    out = capsys.readouterr().out
    assert "Epoch 3 (stopped_epoch=2): early stopping (no_improvement): `val_loss` did not" in out
    # Issue 15 #11: 1-based in the message, and the 0-based attribute beside it.
    assert "best 0.5 at epoch 2 (best_epoch=1)" in out and callback.best_epoch == 1
    assert "Restoring model weights from the end of the best epoch: 2 (best_epoch=1)." in out


# -- state ----------------------------------------------------------------------


def _json_round_trip(state):
    plain = {k: v for k, v in state.items() if k != "best_weights"}
    restored = json.loads(json.dumps(plain))
    if "best_weights" in state:
        weights = state["best_weights"]
        restored["best_weights"] = None if weights is None else [np.array(w) for w in weights]
    return restored


STATE_ROWS = [r for r in TABLE if r[3] is not None and r[3] >= 2]


@pytest.mark.parametrize("row", STATE_ROWS, ids=[r[0] for r in STATE_ROWS])
def test_state_round_trip_mid_sequence_continues_to_the_same_stop(model, row):
    _, kwargs, values, stop, reason = row
    kwargs = dict(kwargs)
    monitor = kwargs.pop("monitor", "val_loss")
    kwargs["restore_best_weights"] = True
    uninterrupted = EarlyStopping(monitor, **kwargs)
    assert drive(uninterrupted, model, values, monitor) == stop
    for k in range(1, stop):
        first = EarlyStopping(monitor, **kwargs)
        assert drive(first, model, values[:k], monitor) is None
        state = _json_round_trip(first.get_state())
        second = EarlyStopping(monitor, **kwargs)
        second.set_model(model)
        second.on_train_begin()
        second.set_state(state)
        assert drive(second, model, values[k:], monitor, start=k, begin=False) == stop
        assert second.stop_reason is StopReason(reason)
        expected = uninterrupted.get_state()
        got = second.get_state()
        for key in ("wait", "stopped_epoch", "best_epoch", "stop_reason", "stop_message"):
            assert got[key] == expected[key], key
        assert got["best"] == expected["best"] or math.isnan(got["best"])


def test_state_is_json_plain_except_best_weights(model):
    callback = EarlyStopping(patience=3, restore_best_weights=True, smoothing=0.2)
    drive(callback, model, [1.0, 0.9])
    state = callback.get_state()
    weights = state.pop("best_weights")
    assert all(isinstance(w, np.ndarray) for w in weights) and len(weights) == 2
    assert json.loads(json.dumps(state)) == state
    assert "best_weights" not in EarlyStopping().get_state()


def test_set_state_rejects_a_foreign_dict():
    with pytest.raises(ValueError, match="lacks 'wait'"):
        EarlyStopping().set_state({"best": 1.0})
    with pytest.raises(TypeError, match="state"):
        EarlyStopping().set_state([1, 2])


def test_on_train_begin_resets_state(model):
    callback = EarlyStopping(patience=0)
    assert drive(callback, model, [1.0, 2.0]) == 1
    assert drive(callback, model, [1.0, 0.5]) is None
    assert callback.stop_reason is StopReason.NOT_STOPPED and callback.stopped_epoch == 0


# -- copies, config, validation ---------------------------------------------------


def test_deepcopy_before_and_after_a_fit():
    keras.utils.set_random_seed(1)
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    net.compile(keras.optimizers.SGD(0.1), loss="mse")
    callback = EarlyStopping("loss", patience=0, restore_best_weights=True, smoothing=0.5)
    fresh = copy.deepcopy(callback)
    assert fresh.get_config() == callback.get_config()
    net.fit(np.ones((4, 2)), np.zeros((4, 1)), epochs=2, verbose=0, callbacks=[callback])
    copied = copy.deepcopy(callback)
    assert callback.model is net
    assert copied._model is None
    assert copied.get_config() == callback.get_config()
    assert copied.best == callback.best and copied.best_epoch == callback.best_epoch
    assert copied.best_weights is not callback.best_weights
    for a, b in zip(copied.best_weights, callback.best_weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_config_round_trip():
    callback = EarlyStopping(
        "val_accuracy", 0.01, 3, 1, "max", 0.5, True, 2,
        check_finite=False, divergence_threshold=0.1, smoothing=0.9,
    )  # fmt: skip
    restored = assert_round_trip(callback)
    assert restored.get_config() == callback.get_config()
    assert EarlyStopping().get_config() == {
        "monitor": "val_loss", "min_delta": 0.0, "patience": 0, "verbose": 0, "mode": "auto",
        "baseline": None, "restore_best_weights": False, "start_from_epoch": 0,
        "check_finite": True, "divergence_threshold": None, "smoothing": None,
        "on_missing": "raise",
    }  # fmt: skip


def test_same_positional_arguments_as_keras():
    import inspect

    ours = list(inspect.signature(EarlyStopping).parameters.values())
    theirs = list(inspect.signature(keras.callbacks.EarlyStopping).parameters.values())
    assert [(p.name, p.default) for p in ours[: len(theirs)]] == [
        (p.name, p.default) for p in theirs
    ]
    assert all(p.kind is p.KEYWORD_ONLY for p in ours[len(theirs) :])


@pytest.mark.parametrize(
    "kwargs, error, received",
    [
        (dict(monitor=1), TypeError, "monitor=1"),
        (dict(monitor=""), ValueError, "monitor=''"),
        (dict(min_delta=-0.1), ValueError, "min_delta=-0.1"),
        (dict(min_delta=NAN), ValueError, "min_delta=nan"),
        (dict(min_delta=True), TypeError, "min_delta=True"),
        (dict(patience=-1), ValueError, "patience=-1"),
        (dict(patience=1.5), ValueError, "patience=1.5"),
        (dict(patience=True), TypeError, "patience=True"),
        (dict(verbose=True), TypeError, "verbose=True"),
        (dict(mode="maximize"), ValueError, "mode='maximize'"),
        (dict(mode=None), ValueError, "mode=None"),
        (dict(baseline=INF), ValueError, "baseline=inf"),
        (dict(baseline="0.5"), TypeError, "baseline='0.5'"),
        (dict(restore_best_weights=1), TypeError, "restore_best_weights=1"),
        (dict(start_from_epoch=-2), ValueError, "start_from_epoch=-2"),
        (dict(check_finite="yes"), TypeError, "check_finite='yes'"),
        (dict(divergence_threshold=NAN), ValueError, "divergence_threshold=nan"),
        (dict(divergence_threshold=False), TypeError, "divergence_threshold=False"),
        (dict(smoothing=1.0), ValueError, "smoothing=1.0"),
        (dict(smoothing=-0.1), ValueError, "smoothing=-0.1"),
        (dict(smoothing=True), TypeError, "smoothing=True"),
    ],
)
def test_validation(kwargs, error, received):
    with pytest.raises(error, match=f"Received: {received}".replace("(", r"\(")):
        EarlyStopping(**kwargs)


def test_nnkit_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        EarlyStopping("val_loss", 0, 0, 0, "auto", None, False, 0, False)


# -- fit ------------------------------------------------------------------------


def test_fit_integration(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1))).astype("float32")
    x_val = rng.normal(size=(16, 4)).astype("float32")
    y_val = (x_val @ rng.normal(size=(4, 1))).astype("float32")  # another target: overfits
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    net.compile(keras.optimizers.SGD(0.05), loss="mse")
    stop = EarlyStopping(patience=2, restore_best_weights=True)
    csv = tmp_path / "log.csv"
    history = net.fit(
        x, y, validation_data=(x_val, y_val), batch_size=8, epochs=30, shuffle=False,
        verbose=0, callbacks=[stop, keras.callbacks.CSVLogger(str(csv))],
    )  # fmt: skip
    epochs = len(history.history["loss"])
    assert stop.stop_reason is StopReason.NO_IMPROVEMENT
    assert epochs == stop.stopped_epoch + 1 < 30
    assert stop.stopped_epoch - stop.best_epoch == 2
    assert stop.best == min(history.history["val_loss"])
    assert {len(column) for column in history.history.values()} == {epochs}
    assert len(csv.read_text().strip().splitlines()) == epochs + 1
    best_val = net.evaluate(x_val, y_val, verbose=0)
    assert best_val == pytest.approx(stop.best, rel=1e-5)


def test_a_one_element_metric_is_read_and_a_vector_refused():
    import numpy as np

    from nnkit.callbacks import EarlyStopping

    stop = EarlyStopping(monitor="f1")
    assert stop.monitored_value({"f1": np.array([0.5])}) == 0.5
    with pytest.raises(ValueError, match=r"`f1`, which is not a single number.*Received: f1="):
        stop.monitored_value({"f1": np.array([0.5, 0.25])})
