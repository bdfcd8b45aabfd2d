"""rerun_best: the best configuration re-run with several seeds, written to seeds.csv."""

import keras
import keras_tuner
import numpy as np
import pytest

from nnkit.tuning import rerun_best, sensitivity_report
from nnkit.tuning._study import study_header, write_study
from nnkit.tuning._study_read import read_study

SPECS = [
    {"name": "units", "type": "int", "min": 2, "max": 8},
    {"name": "act", "type": "choice", "values": ["relu", "tanh"]},
]


def _study(tmp_path, direction="min", objective="val_loss"):
    header = study_header(SPECS, objective=objective, direction=direction)
    values = [(2, "relu", 0.5), (4, "tanh", 0.2), (8, "relu", 0.9)]
    trials = [
        {"trial_id": str(i), "status": "completed", "hyperparameters": {"units": u, "act": a},
         "executions": [], "objective": y}
        for i, (u, a, y) in enumerate(values)
    ]  # fmt: skip
    trials.append(dict(trials[0], trial_id="3", status="failed", objective=None))
    write_study(tmp_path, header, trials)
    return tmp_path


class _Scripted(keras_tuner.HyperModel):
    """No training: the 'objective' is a seeded draw, so seeding is checked exactly."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def build(self, hp):
        self.seen.append(dict(hp.values))
        return None

    def fit(self, hp, model, *args, **kwargs):
        return {"val_loss": float(np.random.rand()) + hp["units"], "loss": 1.0}


def test_hypermodel_gets_the_best_values_and_each_seed(tmp_path):
    _study(tmp_path)
    hypermodel = _Scripted()
    rows = rerun_best(tmp_path, hypermodel, seeds=(5, 6, 7))
    assert hypermodel.seen == [{"units": 4, "act": "tanh"}] * 3
    expected = []
    for seed in (5, 6, 7):
        np.random.seed(seed)
        expected.append(float(np.random.rand()) + 4)
    assert [r["seed"] for r in rows] == [5, 6, 7]
    assert [r["objective"] for r in rows] == pytest.approx(expected)
    seeds = read_study(tmp_path).seeds
    np.testing.assert_array_equal(seeds["seed"], [5, 6, 7])
    np.testing.assert_allclose(seeds["objective"], expected)
    np.testing.assert_allclose(seeds["loss"], [1.0, 1.0, 1.0])
    report = sensitivity_report(tmp_path, n_bootstrap=0)
    assert report.noise == pytest.approx(np.std(expected, ddof=1))


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_begin(self, logs=None):
        self.logs.append([])

    def on_epoch_end(self, epoch, logs=None):
        self.logs[-1].append(dict(logs))


def test_build_function_with_real_training_takes_the_best_epoch(tmp_path):
    _study(tmp_path)

    def build(hp):
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(hp["units"], hp["act"]), keras.layers.Dense(1)]
        )
        model.compile(keras.optimizers.SGD(0.5), "mse")
        return model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    recorder = _Recorder()
    rows = rerun_best(
        tmp_path, build, x, y, validation_data=(x[:8], y[:8]), epochs=4, verbose=0,
        callbacks=[recorder],
    )  # fmt: skip
    assert len(recorder.logs) == 3
    for row, logs in zip(rows, recorder.logs, strict=True):
        val = [epoch["val_loss"] for epoch in logs]
        best = int(np.nanargmin(val))
        assert row["objective"] == pytest.approx(val[best])
        assert row["loss"] == pytest.approx(logs[best]["loss"])


def test_maximised_objective_takes_the_highest_epoch(tmp_path):
    _study(tmp_path, direction="max", objective="val_accuracy")

    class Curve(_Scripted):
        def fit(self, hp, model, *args, **kwargs):
            history = keras.callbacks.History()
            history.history = {"val_accuracy": [0.1, 0.7, 0.4], "loss": [3.0, 2.0, 1.0]}
            return history

    rows = rerun_best(tmp_path, Curve())
    assert [r["objective"] for r in rows] == [0.7, 0.7, 0.7]
    assert [r["loss"] for r in rows] == [2.0, 2.0, 2.0]
    # the best trial of a maximised study is the highest objective (units=8)
    hypermodel = Curve()
    rerun_best(tmp_path, hypermodel)
    assert hypermodel.seen[0]["units"] == 8


def test_errors(tmp_path):
    _study(tmp_path)
    with pytest.raises(ValueError, match="at least three seeds"):
        rerun_best(tmp_path, _Scripted(), seeds=(0, 1))

    class WrongMetric(_Scripted):
        def fit(self, hp, model, *args, **kwargs):
            return {"loss": 1.0}

    with pytest.raises(ValueError, match="logged=\\['loss'\\]"):
        rerun_best(tmp_path, WrongMetric())
    empty = tmp_path / "empty"
    write_study(empty, study_header(SPECS), [])
    with pytest.raises(ValueError, match="no trial with an objective"):
        rerun_best(empty, _Scripted())
