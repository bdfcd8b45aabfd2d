"""tune(): the study directory it writes, with every tuner, resume, failures, median stopping."""

import csv
import json
import pathlib

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from nnkit.tuning import MedianStopping, SearchSpace, tune

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 3)).astype("float32")
Y = X @ np.array([[1.0], [-2.0], [0.5]], "float32")
X_VAL = RNG.normal(size=(32, 3)).astype("float32")
Y_VAL = X_VAL @ np.array([[1.0], [-2.0], [0.5]], "float32")
FIXED = ["trial_id", "status", "message", "wall_seconds", "best_epoch", "epochs_run", "executions"]


def _rows(directory):
    text = (pathlib.Path(directory) / "trials.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


def _curves(directory, trial_id):
    text = (pathlib.Path(directory) / "trials" / trial_id / "curves.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}


def _record(directory, trial_id):
    return json.loads((pathlib.Path(directory) / "trials" / trial_id / "trial.json").read_text())


def _build(hp):
    """A tiny bring-your-own model; run eagerly (no tracing per trial) to keep tests fast."""
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(hp.Int("units", 1, 4)), keras.layers.Dense(1)]
    )
    lr = hp.Float("lr", 1e-3, 1e-1, sampling="log")
    model.compile(keras.optimizers.SGD(lr), loss="mse", run_eagerly=True)
    return model


def _tune(build, directory, **kwargs):
    options = dict(validation_data=(X_VAL, Y_VAL), max_trials=3, epochs=2, seed=0)
    options.update(kwargs)
    return tune(build, X, Y, directory=str(directory), **options)


# -- the study written for a SearchSpace (MLPHyperModel) -----------------------------------

SPACE = SearchSpace().restrict(learning_rate=(1e-3, 3e-2)).fixed(depth=1, width=8)
SPACE = SPACE.drop("normalization", "residual", "batch_size")


@pytest.fixture(scope="module")
def mlp_study(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mlp") / "study"
    tuner = _tune(SPACE, directory, executions_per_trial=2)
    return directory, tuner


def test_study_json_describes_the_space(mlp_study):
    directory, tuner = mlp_study
    study = json.loads((directory / "study.json").read_text())
    assert study["format"] == 1
    assert study["objective"] == {"name": "val_loss", "direction": "min"}
    assert (study["tuner"], study["seed"]) == ("random", 0)
    specs = {spec["name"]: spec for spec in study["hyperparameters"]}
    assert list(specs) == SPACE.names
    assert specs["learning_rate"] | {"default": None} == {
        "name": "learning_rate",
        "type": "float",
        "min": 1e-3,
        "max": 3e-2,
        "sampling": "log",
        "values": None,
        "default": None,
        "conditions": [],
    }
    assert specs["momentum"]["conditions"] == [{"parent": "optimizer", "values": ["sgd"]}]
    assert specs["optimizer"]["type"] == "choice"
    assert specs["optimizer"]["values"] == ["adam", "adamw", "sgd"]
    assert specs["depth"]["type"] == "fixed" and specs["depth"]["default"] == 1
    assert isinstance(study["nnkit_version"], str) and study["created"][:2] == "20"


def test_trials_csv_has_a_row_per_trial_and_a_column_per_knob_and_metric(mlp_study):
    directory, tuner = mlp_study
    rows = _rows(directory)
    header = list(rows[0])
    hp_columns = [f"hp:{name}" for name in SPACE.names]
    assert header == FIXED + hp_columns + ["metric:loss", "metric:val_loss", "objective"]
    assert [row["trial_id"] for row in rows] == ["0", "1", "2"]
    for row in rows:
        assert row["status"] == "completed" and row["message"] == ""
        assert row["executions"] == "2" and row["epochs_run"] == "2"
        assert 1e-3 <= float(row["hp:learning_rate"]) <= 3e-2
        assert (row["hp:momentum"] != "") == (row["hp:optimizer"] == "sgd")
        assert (row["hp:warmup_fraction"] != "") == (row["hp:schedule"] == "cosine")
        assert row["hp:depth"] == "1" and row["hp:width"] == "8"
    best = tuner.oracle.get_best_trials(1)[0]
    assert min(float(r["objective"]) for r in rows) == pytest.approx(best.score)


def test_curves_executions_and_objective_agree(mlp_study):
    directory, _ = mlp_study
    for row in _rows(directory):
        curves = _curves(directory, row["trial_id"])
        assert list(curves)[:4] == ["execution", "epoch", "loss", "val_loss"]
        record = _record(directory, row["trial_id"])
        assert record["status"] == "completed" and len(record["executions"]) == 2
        best_values, best_losses = [], []
        for k, execution in enumerate(record["executions"]):
            mine = curves["execution"] == k
            np.testing.assert_array_equal(curves["epoch"][mine], [0, 1])
            val = curves["val_loss"][mine]
            epoch = int(np.argmin(val))
            assert execution["best_epoch"] == epoch
            assert execution["best"]["val_loss"] == pytest.approx(val[epoch])
            assert "early_stopping_reason" not in execution["best"]
            best_values.append(val[epoch])
            best_losses.append(curves["loss"][mine][epoch])
            seed = int(np.random.SeedSequence([0, int(row["trial_id"]), k]).generate_state(1)[0])
            assert execution["seed"] == seed and execution["wall_seconds"] > 0
        assert float(row["objective"]) == pytest.approx(np.mean(best_values))
        assert float(row["metric:loss"]) == pytest.approx(np.mean(best_losses))
        assert record["hyperparameters"]["learning_rate"] == pytest.approx(
            float(row["hp:learning_rate"])
        )


def test_a_seeded_sweep_repeats_exactly(mlp_study, tmp_path):
    directory, _ = mlp_study
    _tune(SPACE, tmp_path / "again", executions_per_trial=2, max_trials=1)  # its first trial

    def without_times(row):
        return {k: v for k, v in row.items() if k != "wall_seconds"}

    assert without_times(_rows(tmp_path / "again")[0]) == without_times(_rows(directory)[0])
    first, again = _curves(directory, "0"), _curves(tmp_path / "again", "0")
    np.testing.assert_array_equal(first["val_loss"], again["val_loss"])


# -- bring-your-own build, Bayesian and Hyperband -------------------------------------------


@pytest.mark.parametrize("kind, trials", [("bayesian", 3), ("hyperband", 4)])
def test_other_tuners_write_the_same_study(tmp_path, kind, trials):
    directory = tmp_path / kind
    tuner = _tune(_build, directory, tuner=kind, max_trials=trials, epochs=3)
    study = json.loads((directory / "study.json").read_text())
    assert study["tuner"] == kind
    assert [spec["name"] for spec in study["hyperparameters"]] == ["units", "lr"]
    rows = _rows(directory)
    assert [int(row["trial_id"]) for row in rows] == list(range(trials))
    assert list(rows[0]) == FIXED + [
        "hp:units",
        "hp:lr",
        "metric:loss",
        "metric:val_loss",
        "objective",
    ]
    for row in rows:
        assert row["status"] == "completed"
        record = _record(directory, row["trial_id"])
        assert set(record["hyperparameters"]) == {"units", "lr"}  # no tuner/epochs etc.
        curves = _curves(directory, row["trial_id"])
        assert "early_stopping_reason" not in curves  # the stop reason is not a log column
        assert float(row["objective"]) == pytest.approx(curves["val_loss"].min())
    if kind == "hyperband":
        # Trial 3 continues the best of the first three from its checkpoint (epoch 1 of 3):
        # it trains epochs 2 and 3 only, and its record starts there.
        continued = tuner.oracle.trials[rows[3]["trial_id"]].hyperparameters.values
        assert continued["tuner/initial_epoch"] == 1 and "tuner/trial_id" in continued
        assert rows[3]["epochs_run"] == "2"


def test_grid_tries_every_choice_in_order(tmp_path):
    def build(hp):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        lr = hp.Choice("lr", [0.3, 0.01, 0.1])
        model.compile(keras.optimizers.SGD(lr), loss="mse", run_eagerly=True)
        return model

    directory = tmp_path / "grid"
    tuner = _tune(build, directory, tuner="grid", max_trials=None, epochs=1)
    assert json.loads((directory / "study.json").read_text())["tuner"] == "grid"
    rows = _rows(directory)
    assert [float(row["hp:lr"]) for row in rows] == [0.3, 0.01, 0.1]
    assert all(row["status"] == "completed" for row in rows)
    assert len(tuner.oracle.trials) == 3  # the grid is exhausted: no fourth trial
    capped = _tune(build, tmp_path / "capped", tuner="grid", max_trials=2, epochs=1)
    assert len(capped.oracle.trials) == 2


# -- resume after a kill ----------------------------------------------------------------------


class Killed(BaseException):
    """Like KeyboardInterrupt: not an Exception, so keras-tuner does not catch it."""


class KillAtRun(keras.callbacks.Callback):
    """Counts training runs (class-wide: keras-tuner deep-copies callbacks) and kills one."""

    runs = 0
    kill_at = None

    def on_train_begin(self, logs=None):
        KillAtRun.runs += 1
        if KillAtRun.runs == KillAtRun.kill_at:
            raise Killed()


def test_a_killed_sweep_resumes_without_redoing_completed_trials(tmp_path):
    directory = tmp_path / "study"
    KillAtRun.runs, KillAtRun.kill_at = 0, 4
    with pytest.raises(Killed):
        _tune(_build, directory, max_trials=5, callbacks=[KillAtRun()])
    rows = _rows(directory)
    assert [(r["trial_id"], r["status"]) for r in rows] == [(str(i), "completed") for i in range(3)]
    before = {i: _record(directory, str(i)) for i in range(3)}
    interrupted = keras_tuner.engine.trial.Trial.load(
        str(directory / "tuner" / "trial_3" / "trial.json")
    ).hyperparameters.values

    KillAtRun.runs, KillAtRun.kill_at = 0, None
    _tune(_build, directory, max_trials=5, callbacks=[KillAtRun()])
    assert KillAtRun.runs == 2  # trial 3 again, then trial 4
    rows = _rows(directory)
    assert [(r["trial_id"], r["status"]) for r in rows] == [(str(i), "completed") for i in range(5)]
    assert {i: _record(directory, str(i)) for i in range(3)} == before  # untouched
    assert _record(directory, "3")["hyperparameters"] == interrupted
    assert len({(r["hp:units"], r["hp:lr"]) for r in rows}) == 5


@pytest.mark.parametrize("damaged", ["study.json", "trials/1/trial.json"])
@pytest.mark.parametrize("content", ["", '{"trial_id": "1", "stat'])
def test_resuming_a_damaged_study_is_a_clear_error_that_touches_nothing(tmp_path, damaged, content):
    directory = tmp_path / "study"
    _tune(_build, directory, max_trials=2, epochs=1)
    (directory / damaged).write_text(content)
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"truncated or damaged.*nnkit left it as it is") as info:
        _tune(_build, directory, max_trials=3, epochs=1)
    assert str(directory / damaged) in str(info.value)
    assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before


def test_resuming_with_another_tuner_is_refused_and_overwrite_starts_afresh(tmp_path):
    directory = tmp_path / "study"
    _tune(_build, directory, max_trials=1, epochs=1)
    with pytest.raises(ValueError, match="tuner='random'.*tuner='bayesian'"):
        _tune(_build, directory, tuner="bayesian", max_trials=1, epochs=1)
    _tune(_build, directory, tuner="bayesian", max_trials=1, epochs=1, overwrite=True)
    assert json.loads((directory / "study.json").read_text())["tuner"] == "bayesian"
    assert len(_rows(directory)) == 1


# -- failures, the failure limit, median stopping ------------------------------------------------


class PlannedHyperModel(keras_tuner.HyperModel):
    """Build fails for ``units == 3``; each fit follows the next entry of ``plan``."""

    def __init__(self, plan):
        super().__init__()
        self.plan = list(plan)

    def build(self, hp):
        units = hp.Choice("units", [1, 2, 3])
        if units == 3:
            raise ValueError("broken layer")
        return _build(hp)

    def fit(self, hp, model, x, y, validation_data=None, **kwargs):
        mode = self.plan.pop(0)
        if mode == "oom":
            message = "Graph execution error:\n\nOOM when allocating tensor"  # TF's are long
            raise tf.errors.ResourceExhaustedError(None, None, message)
        if mode == "nan":
            y = y * np.nan
        if isinstance(mode, float):  # a validation set that far off: a clearly worse trial
            validation_data = (validation_data[0], validation_data[1] + mode)
        return model.fit(x, y, validation_data=validation_data, **kwargs)


def test_failing_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    plan = ["ok", "oom", "ok", "nan", "ok", "ok", "ok", "ok"]
    hypermodel = PlannedHyperModel(plan)
    directory = tmp_path / "study"
    _tune(
        hypermodel,
        directory,
        max_trials=7,
        seed=3,
        max_consecutive_failed_trials=7,
        median_stopping=False,
    )
    rows = _rows(directory)
    assert len(rows) == 7
    assert any(r["hp:units"] == "3" for r in rows), "the seed should sample a broken build"
    plan = iter(["ok", "oom", "ok", "nan", "ok", "ok", "ok", "ok"])
    for row in rows:
        expected = "build" if row["hp:units"] == "3" else next(plan)
        if expected == "ok":
            assert (row["status"], row["message"]) == ("completed", ""), row
            assert row["objective"] != ""
            continue
        assert row["status"] == "failed" and row["objective"] == "", row
        message = {
            "build": "ValueError: broken layer",
            "oom": "ResourceExhaustedError: Graph execution error: OOM when allocating tensor",
            "nan": "Diverged: ",
        }[expected]
        assert row["message"].startswith(message), row
        assert _record(directory, row["trial_id"])["message"] == row["message"]


def test_too_many_failures_in_a_row_stop_with_a_clear_error(tmp_path):
    directory = tmp_path / "study"
    with pytest.raises(RuntimeError, match=r"2 trials in a row failed.*trial 1: Resource"):
        _tune(
            PlannedHyperModel(["oom"] * 5),
            directory,
            max_trials=5,
            seed=1,
            max_consecutive_failed_trials=2,
        )
    rows = _rows(directory)
    assert [(r["trial_id"], r["status"]) for r in rows] == [("0", "failed"), ("1", "failed")]


def test_an_uncompiled_build_stops_at_the_first_trial_with_one_clear_error(tmp_path, capsys):
    # Issue 15 #13: keras-tuner printed three tracebacks (three failed trials)
    # before nnkit's "3 trials in a row failed".
    def build(hp):
        return keras.Sequential([keras.Input((X.shape[1],)), keras.layers.Dense(hp.Int("u", 1, 4))])

    with pytest.raises(TypeError, match=r"must return a compiled model.*uncompiled Sequential"):
        _tune(build, tmp_path / "study")
    assert "Traceback" not in capsys.readouterr().out


def test_median_stopped_trials_are_recorded_as_stopped(tmp_path):
    directory = tmp_path / "study"
    hypermodel = PlannedHyperModel(["ok", "ok", 10.0])
    rule = MedianStopping(min_trials=2, warmup_epochs=0)
    _tune(hypermodel, directory, max_trials=3, seed=0, epochs=3, callbacks=[rule])
    rows = _rows(directory)
    statuses = [r["status"] for r in rows if r["hp:units"] != "3"]
    assert statuses == ["completed", "completed", "stopped"]
    stopped = [r for r in rows if r["status"] == "stopped"][0]
    assert stopped["epochs_run"] == "1" and float(stopped["objective"]) > 50
    assert len(list((directory / "tuner" / "median_stopping").glob("*.json"))) == 2


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tuner": "sobol"}, ValueError, "tuner='sobol'"),
        ({"max_trials": 0}, ValueError, "max_trials=0"),
        ({"seed": -1}, ValueError, "seed=-1"),
        ({"validation_data": None}, ValueError, "validation_data=None"),
        ({"objective": 3}, TypeError, "objective=3"),
        ({"median_stopping": 1}, TypeError, "median_stopping=1"),
        ({"callbacks": "early"}, TypeError, "'early'"),
        # Used to hang (int(1e308) executions); now rejected before anything runs.
        (
            {"executions_per_trial": 1e308},
            ValueError,
            r"`executions_per_trial` must be at most 2\*\*53.*executions_per_trial=1e\+308",
        ),
        ({"executions_per_trial": True}, TypeError, "executions_per_trial=True"),
        ({"executions_per_trial": 0}, ValueError, "executions_per_trial=0"),
    ],
)
def test_bad_arguments_raise_before_anything_is_written(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        _tune(_build, tmp_path / "study", **kwargs)
    assert not (tmp_path / "study").exists()


def test_build_or_space_must_be_a_space_hypermodel_or_function(tmp_path):
    with pytest.raises(TypeError, match="build_or_space=42"):
        _tune(42, tmp_path / "study")
    hypermodel = SearchSpace().fixed(depth=1)
    with pytest.raises(ValueError, match="epochs=3"):
        from nnkit.tuning import MLPHyperModel

        _tune(MLPHyperModel(3, space=hypermodel, train_size=64, epochs=2), tmp_path, epochs=3)


# -- fit arguments for a plain build(hp) (issue 25) ------------------------------------------


class _CountSteps(keras.callbacks.Callback):
    """Records the batches of every epoch; class-level, since tune deep-copies callbacks."""

    seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1

    def on_epoch_end(self, epoch, logs=None):
        _CountSteps.seen.append(self._batches)


@pytest.mark.parametrize(
    "kind, trials", [("random", 2), ("bayesian", 2), ("hyperband", 2), ("grid", 2)]
)
def test_a_plain_build_trains_at_the_given_batch_size(tmp_path, kind, trials):
    _CountSteps.seen = []
    _tune(_build, tmp_path / kind, tuner=kind, max_trials=trials, epochs=2, batch_size=8,
          callbacks=[_CountSteps()])  # fmt: skip
    assert _CountSteps.seen and set(_CountSteps.seen) == {len(X) // 8}  # 8 steps, not 2 at 32


def test_a_schedule_sized_from_the_batch_size_runs_to_its_end(tmp_path):
    """The documented pattern: steps per epoch computed outside build(hp)."""
    import math

    from nnkit.schedules import CosineAnnealing

    batch_size, epochs = 16, 2
    steps_per_epoch = math.ceil(len(X) / batch_size)
    iterations = []

    class LastRate(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            iterations.append(int(self.model.optimizer.iterations.numpy()))

    def build(hp):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        schedule = CosineAnnealing(hp.Float("lr", 1e-3, 1e-1), epochs * steps_per_epoch)
        model.compile(keras.optimizers.SGD(schedule), loss="mse", run_eagerly=True)
        return model

    _tune(build, tmp_path / "s", max_trials=1, epochs=epochs, batch_size=batch_size,
          callbacks=[LastRate()])  # fmt: skip
    assert iterations == [epochs * steps_per_epoch]  # the schedule's total_steps exactly


def test_batch_size_is_refused_for_a_search_space_whose_knob_it_is(tmp_path):
    with pytest.raises(ValueError, match=r"fixed\(batch_size=8\).*Received: batch_size=8"):
        _tune(SPACE, tmp_path / "space", batch_size=8)
    with pytest.raises(ValueError, match="batch_size"):
        _tune(_build, tmp_path / "zero", batch_size=0)
