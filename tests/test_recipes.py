"""End-to-end check of recipes/digits_mlp.py: a short run writes every output."""

import csv
import importlib.util
import json
import pathlib

import keras
import numpy as np
import pytest

import nnkit.schedules  # noqa: F401  (registers nnkit's classes for load_model)

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "digits_mlp.py"
OUTPUTS = ("metrics.json", "model.keras", "history.csv", "curves.png", "learning_rate.png")
METRIC_KEYS = {
    "test_accuracy",
    "test_loss",
    "epochs_run",
    "best_epoch",
    "stop_reason",
    "stop_message",
    "steps_per_epoch",
    "total_steps",
    "steps_run",
    "wall_seconds",
    "args",
}


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("digits_mlp", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_short_run_writes_every_output(recipe, tmp_path, capsys, schedule):
    out = tmp_path / "run"
    epochs, batch_size = 3, 64
    metrics = recipe.main(
        [
            "--epochs",
            str(epochs),
            "--warmup-epochs",
            "1",
            "--batch-size",
            str(batch_size),
            "--schedule",
            schedule,
            "--step-epochs",
            "1",
            "--hidden",
            "32",
            "--seed",
            "1",
            "--verbose",
            "0",
            "--out",
            str(out),
        ]
    )

    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and str(out) in printed

    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert METRIC_KEYS <= set(written)
    assert 0.0 <= written["test_accuracy"] <= 1.0 and np.isfinite(written["test_loss"])
    assert 1 <= written["epochs_run"] <= epochs
    assert 0 <= written["best_epoch"] < written["epochs_run"]
    assert written["stop_reason"] in {"not_stopped", "no_improvement"}
    assert written["steps_per_epoch"] == -(-written["examples"]["train"] // batch_size)
    assert written["total_steps"] == epochs * written["steps_per_epoch"]
    assert written["args"]["schedule"] == schedule

    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == written["epochs_run"]
    rates = [float(row["learning_rate"]) for row in rows]
    assert all(np.isfinite(rates)) and rates[0] > 0
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])

    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    expected = {"cosine": "CosineAnnealing", "step": "Warmup"}[schedule]
    learning_rate = model.optimizer.get_config()["learning_rate"]  # restored, no custom_objects
    assert learning_rate["registered_name"] == f"nnkit>{expected}"
    x_test = recipe.load_data(written["args"]["split_seed"])["test"][0]
    probabilities = model.predict(x_test[:5], verbose=0)
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_schedule_length_is_epochs_times_steps_per_epoch(recipe):
    args = recipe.parse_args(["--epochs", "10", "--warmup-epochs", "2"])
    schedule = recipe.build_schedule(args, steps_per_epoch=7)
    assert isinstance(schedule, nnkit.schedules.CosineAnnealing)
    assert schedule.total_steps == 70 and schedule.warmup_steps == 14
    values = recipe.schedule_values(schedule, 70)
    assert values.shape == (70,) and values[0] == 0.0
    assert values.max() == pytest.approx(args.learning_rate)


def test_help_and_bad_arguments(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--learning-rate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        recipe.parse_args(["--warmup-epochs", "5", "--epochs", "5"])
    assert exit_info.value.code == 2
    assert "--warmup-epochs" in capsys.readouterr().err
