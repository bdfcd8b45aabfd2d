"""MedianStopping: the pure rule on scripted curves, the hooks, the shared files, a real fit."""

import copy
import json

import keras
import numpy as np
import pytest

from nnkit.callbacks import Reason
from nnkit.testing import assert_round_trip
from nnkit.tuning import MedianStopping


def _best_so_far(curve, direction="min"):
    return (np.minimum if direction == "min" else np.maximum).accumulate(np.asarray(curve))


def _expected_stop(curve, references, min_trials, warmup, direction="min"):
    """The first epoch at which the rule stops ``curve``, written independently with numpy."""
    best = _best_so_far(curve, direction)
    ref_best = [_best_so_far(r, direction) for r in references]
    for epoch in range(len(curve)):
        at = [r[epoch] for r in ref_best if epoch < len(r)]
        if epoch < warmup or len(at) < min_trials:
            continue
        median = np.median(at)
        if (best[epoch] > median) if direction == "min" else (best[epoch] < median):
            return epoch
    return None


REFERENCES = [
    [1.0, 0.8, 0.6, 0.5, 0.45],
    [1.2, 0.9, 0.7, 0.65],  # stopped early by its EarlyStopping: no epoch 4
    [0.9, 0.85, 0.5, 0.55, 0.4],  # a bump: best-so-far stays 0.5 at epoch 3
]

# (curve of the new run, min_trials, warmup_epochs, expected stop epoch or None)
TABLE = [
    ([1.1, 0.95, 0.9, 0.9, 0.9], 3, 0, 0),  # 1.1 > median(1.0, 1.2, 0.9) = 1.0
    ([1.1, 0.95, 0.9, 0.9, 0.9], 3, 2, 2),  # warm-up: first check at epoch 2 (0.9 > 0.6)
    ([0.95, 0.8, 0.6, 0.5, 0.5], 3, 0, None),  # at the median or better: never
    ([0.95, 0.8, 0.6, 0.5, 0.46], 3, 0, None),  # epoch 4 has only 2 references (< 3)
    ([0.95, 0.8, 0.6, 0.5, 0.46], 2, 0, 4),  # ... 2 suffice: 0.46 > median(0.45, 0.4)
    ([1.1, 0.95, 0.9, 0.9, 0.9], 4, 0, None),  # never 4 references
]


def _run(callback, curve, *, monitor="val_loss"):
    """Drive the hooks of one training run with scripted logs; return the epochs run."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    callback.set_model(model)
    callback.set_params({"epochs": len(curve)})
    callback.on_train_begin()
    epochs = 0
    for epoch, value in enumerate(curve):
        callback.on_epoch_end(epoch, {monitor: value, "loss": 0.0})
        epochs += 1
        if getattr(model, "stop_training", False):
            break
    callback.on_train_end()
    return epochs


@pytest.mark.parametrize("curve, min_trials, warmup, stop", TABLE)
def test_decide_on_scripted_curves(curve, min_trials, warmup, stop):
    assert _expected_stop(curve, REFERENCES, min_trials, warmup) == stop  # the table is right
    rule = MedianStopping(min_trials=min_trials, warmup_epochs=warmup, mode="min")
    refs = [dict(enumerate(_best_so_far(r))) for r in REFERENCES]
    best = _best_so_far(curve)
    decisions = [rule.decide(e, best[e], refs).should_stop for e in range(len(curve))]
    got = decisions.index(True) if True in decisions else None
    assert got == stop


def test_decide_maximizes_and_reports_median_and_count():
    rule = MedianStopping("val_accuracy", min_trials=2, warmup_epochs=0, mode="max")
    refs = [[0.5, 0.7], [0.6, 0.8], [0.4, 0.9]]
    worse, better = rule.decide(1, 0.75, refs), rule.decide(1, 0.85, refs)
    assert (worse.act, worse.reason, worse.reference, worse.count) == (
        True, Reason.WORSE_THAN_MEDIAN, 0.8, 3
    )  # fmt: skip
    assert (better.act, better.reason, better.reference, better.count) == (
        False, Reason.WAITING, 0.8, 3
    )  # fmt: skip
    assert rule.decide(0, float("nan"), refs).should_stop is False  # no finite value yet
    with pytest.raises(ValueError, match="direction='auto'"):
        MedianStopping().decide(3, 0.1, refs, direction="auto")


@pytest.mark.parametrize("curve, min_trials, warmup, stop", TABLE)
def test_hooks_share_curves_through_the_directory(tmp_path, curve, min_trials, warmup, stop):
    folder = tmp_path / "median"
    for i, reference in enumerate(REFERENCES):
        finished = MedianStopping(mode="min", directory=str(folder))
        finished.run_key = f"ref-{i}"
        assert _run(finished, reference) == len(reference)
        saved = json.loads((folder / f"ref-{i}.json").read_text())
        assert saved == {
            "monitor": "val_loss",
            "epochs": list(range(len(reference))),
            "values": reference,
        }
    callback = MedianStopping(
        min_trials=min_trials, warmup_epochs=warmup, mode="min", directory=str(folder)
    )
    epochs = _run(callback, curve)
    if stop is None:
        assert epochs == len(curve) and not callback.stopped
        assert len(list(folder.glob("*.json"))) == 4  # a finished run becomes a reference
    else:
        assert epochs == stop + 1 and callback.stopped and callback.stopped_epoch == stop
        assert "median stopping" in callback.stop_message
        assert len(list(folder.glob("*.json"))) == 3  # a stopped run is not a reference


def test_non_finite_runs_are_not_references_and_other_monitors_are_ignored(tmp_path):
    folder = str(tmp_path / "median")
    _run(MedianStopping(mode="min", directory=folder), [1.0, float("nan")])
    _run(MedianStopping("val_mae", mode="min", directory=folder), [5.0, 5.0], monitor="val_mae")
    callback = MedianStopping(min_trials=1, warmup_epochs=0, mode="min", directory=folder)
    assert _run(callback, [9.0, 9.0]) == 2  # the only val_loss file would be the NaN run
    assert len(list((tmp_path / "median").glob("*.json"))) == 2


def test_state_round_trip_and_deep_copy(tmp_path):
    callback = MedianStopping(mode="min", directory=str(tmp_path))
    _run(callback, [1.0, 0.9])
    state = callback.get_state()
    assert state == {
        "epochs": [0, 1],
        "values": [1.0, 0.9],
        "stopped": False,
        "stopped_epoch": None,
        "stop_message": "",
    }
    other = MedianStopping(mode="min", directory=str(tmp_path))
    other.set_state(json.loads(json.dumps(state)))
    assert other.get_state() == state
    copied = copy.deepcopy(callback)
    assert copied._model is None and copied.get_config() == callback.get_config()
    with pytest.raises(ValueError, match="lacks"):
        other.set_state({"epochs": []})


def test_in_a_real_fit_a_worse_run_is_stopped(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.linspace(-1, 1, 32).reshape(-1, 1).astype("float32")
    y = 2 * x

    def train(y_val):
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.1), loss="mse")
        callback = MedianStopping(min_trials=1, warmup_epochs=1, directory=str(tmp_path))
        history = model.fit(
            x,
            y,
            validation_data=(x, y_val),
            epochs=4,
            batch_size=8,
            callbacks=[callback],
            verbose=0,
        )
        return len(history.epoch), callback

    epochs, good = train(y)
    assert epochs == 4 and not good.stopped and good.direction == "min"  # mode="auto"
    epochs, bad = train(y + 10.0)  # validation targets far off: val_loss ~ 100
    assert bad.stopped and bad.stopped_epoch == 1 and epochs == 2


def test_config_round_trip_and_validation():
    assert_round_trip(MedianStopping("val_accuracy", 3, 1, mode="max", directory="d", verbose=1))
    with pytest.raises(ValueError, match="min_trials=0"):
        MedianStopping(min_trials=0)
    with pytest.raises(ValueError, match="mode='up'"):
        MedianStopping(mode="up")
    callback = MedianStopping()
    callback.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    callback.set_params({})
    with pytest.raises(ValueError, match="directory=None"):
        callback.on_train_begin()
