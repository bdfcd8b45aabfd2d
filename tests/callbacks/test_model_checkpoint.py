"""nnkit.callbacks.ModelCheckpoint: Keras's checkpoint whose best survives a resume, saved atomically."""

import json
import os
import sys

import keras
import numpy as np
import pytest

from nnkit import _io
from nnkit._arrays import to_numpy
from nnkit.callbacks import BackupAndRestore, ModelCheckpoint, Reason
from nnkit.callbacks import _checkpoint_files as files
from tests.conftest import KERAS_NUMPY2

#: The monitored "score" of each epoch (min is best): the best is epoch 1, and
#: epoch 3, the first one a resume runs again, is worse than it.
SCORES = [3.0, 1.0, 2.0, 2.5, 2.2]


class Score(keras.callbacks.Callback):
    """Writes a scripted ``score`` into the epoch logs (placed first in the list)."""

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = SCORES[epoch]


class Interrupted(Exception):
    pass


class Interrupt(keras.callbacks.Callback):
    """Raise at the end of epoch ``epoch`` (as tests/callbacks/test_backup_and_restore.py)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupted(f"end of epoch {epoch}")


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.05), loss="mse")
    return model


def _fit(callbacks, epochs=5, initial_epoch=0, model=None):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = model or _model()
    model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch,
              callbacks=[Score(), *callbacks], verbose=0)  # fmt: skip
    return model


def _weights(path):
    model = _model()
    model.load_weights(path)
    return [to_numpy(w) for w in model.weights]


def _names(folder):
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


# -- the pure parts ----------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, values, threshold, saved, best_epoch",
    [
        ("min", [3.0, 1.0, 2.0, 0.5], None, [0, 1, 3], 3),
        ("max", [3.0, 1.0, 4.0, 0.5], None, [0, 2], 2),
        ("min", [3.0, 1.0, 2.0], 1.5, [1], 1),  # initial_value_threshold must be beaten
        ("min", [float("nan"), 2.0, float("inf"), 1.0], None, [1, 3], 3),  # NaN is never best
    ],
)
def test_decide_saves_the_improvements_only(mode, values, threshold, saved, best_epoch):
    checkpoint = ModelCheckpoint(
        "m.keras", "score", save_best_only=True, mode=mode, initial_value_threshold=threshold
    )
    acted = []
    for epoch, value in enumerate(values):
        decision = checkpoint.decide(epoch, value)
        if decision.act:
            acted.append(epoch)
        if decision.improved:
            checkpoint.best, checkpoint.best_epoch = decision.best, decision.best_epoch
    assert acted == saved and checkpoint.best_epoch == best_epoch


def test_without_save_best_only_every_point_is_saved_and_the_best_still_followed():
    checkpoint = ModelCheckpoint("m-{epoch}.keras", "score", mode="min")
    reasons = [checkpoint.decide(0, 2.0), checkpoint.decide(1, float("nan"))]
    assert [d.act for d in reasons] == [True, True]
    assert [d.reason for d in reasons] == [Reason.IMPROVED, Reason.NON_FINITE]


def test_retention_keeps_last_best_and_never_the_current_best():
    records = [
        {"path": f"p{e}", "epoch": e, "batch": None, "value": v}
        for e, v in enumerate([5.0, 1.0, 4.0, 3.0, 2.0])
    ]
    kw = dict(best_path="p1", direction="min")
    assert files.to_delete(records, keep_last=None, keep_best=None, **kw) == []
    assert files.to_delete(records, keep_last=2, keep_best=None, **kw) == ["p0", "p2"]
    assert files.to_delete(records, keep_last=None, keep_best=2, **kw) == ["p0", "p2", "p3"]
    assert files.to_delete(records, keep_last=1, keep_best=2, **kw) == ["p0", "p2", "p3"]
    kw = dict(best_path="p0", direction="max")
    assert files.to_delete(records, keep_last=1, keep_best=1, **kw) == ["p1", "p2", "p3"]


def test_format_path_is_keras_naming():
    assert files.format_path("a-{epoch:02d}-{loss:.1f}.keras", 2, None, {"loss": 0.25}) == (
        "a-03-0.2.keras"
    )
    assert files.format_path("e{epoch}b{batch}.keras", 0, 4, {}) == "e1b5.keras"
    with pytest.raises(KeyError, match="val_acc"):
        files.format_path("{val_acc}.keras", 0, None, {"loss": 1.0})


# -- fit: retention, messages, resume ------------------------------------------------


def test_keep_last_and_keep_best_in_a_fit(tmp_path):
    path = str(tmp_path / "m-{epoch}.weights.h5")
    checkpoint = ModelCheckpoint(
        path, "score", mode="min", save_weights_only=True, keep_last=1, keep_best=1
    )
    _fit([checkpoint])
    # epoch 1 (1.0) is the best, epoch 4 the last: the others were deleted.
    assert _names(tmp_path) == ["m-2.weights.h5", "m-5.weights.h5"]
    assert [r["epoch"] for r in checkpoint.saved] == [1, 4]
    assert checkpoint.best_path == path.format(epoch=2) and checkpoint.best_epoch == 1
    assert checkpoint.reason is Reason.NO_IMPROVEMENT
    assert checkpoint.message == (
        f"Epoch 5 (epoch=4): `score` = 2.2 did not improve on the best 1 at epoch 2 "
        f"(best_epoch=1) (no_improvement); saved to {path.format(epoch=5)}."
    )
    assert _io.leftovers(tmp_path) == []


def test_save_best_only_keeps_the_best_model_loadable(tmp_path):
    path = str(tmp_path / "best.keras")
    checkpoint = ModelCheckpoint(path, "score", mode="min", save_best_only=True, verbose=0)
    _fit([checkpoint])
    assert checkpoint.best == 1.0 and checkpoint.best_epoch == 1
    assert "not saved" in checkpoint.message
    loaded = keras.saving.load_model(path)
    assert loaded.count_params() == _model().count_params()


def _resume_run(tmp_path, checkpoint_class, *, backup=True):
    """Interrupt at the end of epoch 3, then resume; return the saved best weights."""
    path = str(tmp_path / "ckpt" / "best.weights.h5")

    def callbacks():
        checkpoint = checkpoint_class(
            path, "score", mode="min", save_best_only=True, save_weights_only=True
        )
        extra = [BackupAndRestore(str(tmp_path / "backup"))] if backup else []
        return [*extra, checkpoint]

    with pytest.raises(Interrupted):
        _fit([*callbacks(), Interrupt(3)])
    if backup:
        _fit(callbacks())
    else:  # no backup: the caller resumes from the last good epoch itself
        model = _model()
        _fit(callbacks(), initial_epoch=3, model=model)
    return _weights(path)


def _uninterrupted_best(tmp_path):
    path = str(tmp_path / "whole" / "best.weights.h5")
    _fit([ModelCheckpoint(path, "score", mode="min", save_best_only=True, save_weights_only=True)])
    return _weights(path)


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_resume_with_backup_keeps_the_true_best(tmp_path):
    """keras#17012: the first resumed epoch (3, worse) must not overwrite the best (epoch 1)."""
    best = _uninterrupted_best(tmp_path)
    assert _equal(_resume_run(tmp_path, ModelCheckpoint), best)


@pytest.mark.filterwarnings(KERAS_NUMPY2)  # Keras's own ModelCheckpoint saves
def test_keras_checkpoint_loses_the_best_on_resume(tmp_path):
    """The bug this class fixes, shown on Keras's class under the same harness."""
    best = _uninterrupted_best(tmp_path)
    assert not _equal(_resume_run(tmp_path, keras.callbacks.ModelCheckpoint), best)


def test_resume_without_backup_reads_the_sidecar(tmp_path):
    best = _uninterrupted_best(tmp_path)
    # With a fresh model the resumed epochs differ, but epoch 3 (2.5) and 4
    # (2.2) are worse than the sidecar's best (1.0): the file is not replaced.
    assert _equal(_resume_run(tmp_path, ModelCheckpoint, backup=False), best)
    sidecar = json.loads((tmp_path / "ckpt" / ".best.weights.h5.nnkit-checkpoint.json").read_text())
    assert sidecar["state"]["best_epoch"] == 1 and sidecar["monitor"] == "score"


def test_a_run_from_epoch_zero_ignores_the_sidecar(tmp_path):
    path = str(tmp_path / "best.weights.h5")

    def make():
        return ModelCheckpoint(
            path, "score", mode="min", save_best_only=True, save_weights_only=True
        )

    _fit([make()])
    again = make()
    _fit([again], epochs=1)  # a new run: epoch 0 (3.0) is its first best
    assert again.best == 3.0 and again.best_epoch == 0


def test_state_round_trip_and_bad_state():
    checkpoint = ModelCheckpoint("m-{epoch}.keras", "score", mode="min", keep_last=2)
    state = {
        "best": 1.5, "best_epoch": 2, "best_path": "m-3.keras", "pending_delete": ["m-1.keras"],
        "saved": [{"path": "m-3.keras", "epoch": 2, "batch": None, "value": 1.5}],
        "since_save": 0, "direction": "min",
    }  # fmt: skip
    checkpoint.set_state(json.loads(json.dumps(state)))
    assert checkpoint.get_state() == state
    with pytest.raises(ValueError, match="Received: state="):
        checkpoint.set_state({"best": 1.0})
    with pytest.raises(TypeError, match="state"):
        checkpoint.set_state([1])


# -- atomicity ------------------------------------------------------------------------


def test_a_failure_mid_save_leaves_the_previous_best_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "best.weights.h5")
    checkpoint = ModelCheckpoint(
        path, "score", mode="min", save_best_only=True, save_weights_only=True
    )
    _fit([checkpoint], epochs=2)  # best: epoch 1
    before = _io.sha256(path)
    real = keras.Model.save_weights

    def crashing(self, filepath, overwrite=True, **kwargs):
        real(self, filepath, overwrite=overwrite, **kwargs)
        with open(filepath, "r+b") as f:  # a half-written file, then the crash
            f.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(sys.modules[__name__], "SCORES", [3.0, 1.0, 0.5])
    monkeypatch.setattr(keras.Model, "save_weights", crashing)
    resumed = ModelCheckpoint(
        path, "score", mode="min", save_best_only=True, save_weights_only=True
    )
    with pytest.raises(OSError, match="disk full"):
        _fit([resumed], epochs=3, initial_epoch=2)  # epoch 2 (0.5) improves: its save fails
    assert _io.sha256(path) == before and _io.leftovers(tmp_path) == []


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(filepath="m.txt"), ValueError, "must end in `.keras`"),
        (dict(filepath="m.keras", save_weights_only=True), ValueError, "`.weights.h5`"),
        (dict(filepath=None), TypeError, "filepath=None"),
        (dict(filepath="m.keras", monitor=3), TypeError, "monitor=3"),
        (dict(filepath="m.keras", verbose=-1), ValueError, "verbose=-1"),
        (dict(filepath="m.keras", save_best_only=1), TypeError, "save_best_only=1"),
        (dict(filepath="m.keras", save_weights_only="no"), TypeError, "save_weights_only="),
        (dict(filepath="m.keras", mode="unknown"), ValueError, "mode='unknown'"),
        (dict(filepath="m.keras", save_freq="batch"), ValueError, "save_freq='batch'"),
        (dict(filepath="m.keras", save_freq=0), ValueError, "save_freq=0"),
        (dict(filepath="m.keras", save_freq=True), TypeError, "save_freq=True"),
        (dict(filepath="m.keras", initial_value_threshold="1"), TypeError, "threshold='1'"),
        (dict(filepath="m.keras", initial_value_threshold=float("nan")), ValueError, "nan"),
        (dict(filepath="m-{epoch}.keras", keep_last=0), ValueError, "keep_last=0"),
        (dict(filepath="m-{epoch}.keras", keep_best=1.5), ValueError, "keep_best=1.5"),
        (dict(filepath="m.keras", keep_last=2), ValueError, "formatting field"),
        (dict(filepath="m.keras", on_missing="ignore"), ValueError, "on_missing='ignore'"),
        (dict(filepath="m.keras", save_freq=3, save_best_only=True), ValueError, "batch ends"),
    ],
)
def test_every_argument_is_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        ModelCheckpoint(**kwargs)


def test_a_missing_monitor_raises_only_when_it_matters(tmp_path):
    path = str(tmp_path / "m-{epoch}.keras")
    _fit([ModelCheckpoint(path)], epochs=1)  # val_loss never logged: not needed
    with pytest.raises(ValueError, match="`nope`"):
        _fit([ModelCheckpoint(path, "nope", save_best_only=True)], epochs=1)
    with pytest.warns(UserWarning, match="`nope`"):  # Keras's behaviour: warn and save
        _fit([ModelCheckpoint(str(tmp_path / "w.keras"), "nope", save_best_only=True,
                              on_missing="warn")], epochs=1)  # fmt: skip
    assert (tmp_path / "w.keras").exists()


def test_best_path_is_cleared_when_a_later_save_overwrites_it(tmp_path):
    path = str(tmp_path / "last.weights.h5")
    checkpoint = ModelCheckpoint(path, "score", mode="min", save_weights_only=True)
    assert checkpoint.reason is None
    _fit([checkpoint])  # every epoch saved to one file: it holds epoch 4, not the best (1)
    assert checkpoint.best_epoch == 1 and checkpoint.best_path is None
    assert [r["epoch"] for r in checkpoint.saved] == [4]
