"""End-to-end checks of the recipes: a short run of each writes every output.

recipes/digits_mlp.py, recipes/diabetes_regression.py and
recipes/vanishing_gradients.py are run in-process with a few epochs into
``tmp_path``; their saved models are reloaded with ``safe_mode=True``
(nnkit's classes registered by the imports below).
"""

import csv
import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import keras
import keras_tuner
import matplotlib.image
import numpy as np
import pytest

# Register nnkit's classes for load_model (import nnkit alone is lazy).
import nnkit.layers
import nnkit.losses
import nnkit.regularizers
import nnkit.schedules  # noqa: F401
from nnkit.callbacks import GradientNormMonitor

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
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


def _load_recipe(name):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    return _load_recipe("digits_mlp")


@pytest.fixture(scope="module")
def diabetes():
    return _load_recipe("diabetes_regression")


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
            "--widths",
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
    rates = [float(row["lr"]) for row in rows]
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


# -- digits: the model flags ---------------------------------------------------------


def test_model_flags_end_to_end(recipe, tmp_path):
    """Residual blocks, batch norm, dropout and weight decay reach the saved model."""
    keras.utils.set_random_seed(0)
    out = tmp_path / "run"
    weight_decay = 1e-4
    metrics = recipe.main(
        ["--epochs", "2", "--warmup-epochs", "1", "--batch-size", "128", "--widths", "32,16",
         "--residual", "--normalization", "batch", "--dropout", "0.1",
         "--weight-decay", str(weight_decay), "--seed", "2", "--verbose", "0", "--out", str(out)]
    )  # fmt: skip
    written = json.loads((out / "metrics.json").read_text())
    assert written["args"]["widths"] == [32, 16]
    assert written["args"]["residual"] is True
    assert written["args"]["normalization"] == "batch"
    assert written["args"]["dropout"] == 0.1
    assert written["args"]["weight_decay"] == weight_decay
    assert written["args"]["activation"] == "relu"

    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer", "ResidualBlock", "ResidualBlock", "Dense"
    ]  # fmt: skip
    for layer in model.layers[1:]:
        config = layer.get_config()
        regularizer = config["kernel_regularizer"]
        assert regularizer["registered_name"] == "nnkit>WeightDecay"
        assert regularizer["config"] == {"weight_decay": weight_decay}
        if layer is not model.layers[-1]:
            assert config["normalization"] == "batch" and config["dropout"] == 0.1

    # The test loss is the label-smoothed cross-entropy plus λ/2 · Σ‖W‖² over
    # every kernel, computed here from the reloaded model with numpy.
    x_test, y_test = recipe.load_data(written["args"]["split_seed"])["test"]
    probabilities = model.predict(x_test, verbose=0).astype("float64")
    smoothing = written["args"]["label_smoothing"]
    targets = y_test * (1 - smoothing) + smoothing / 10
    cross_entropy = np.mean(-np.sum(targets * np.log(probabilities), axis=1))
    kernels = [w.numpy() for w in model.weights if w.path.endswith("kernel")]
    # W1 and W2 per block, a projection per block (64 → 32 → 16 all change width), the output.
    assert len(kernels) == 2 * 2 + 2 + 1
    penalty = sum(0.5 * weight_decay * np.sum(np.square(k, dtype="float64")) for k in kernels)
    assert metrics["test_loss"] == pytest.approx(cross_entropy + penalty, rel=1e-4)


def test_model_flag_parsing(recipe, capsys):
    args = recipe.parse_args([])
    assert args.widths == [256, 128] and args.activation == "relu"
    assert args.normalization == "none" and args.residual is False
    assert args.dropout == 0.2 and args.weight_decay == 0.0
    model = recipe.build_model(64, args)
    assert [type(layer).__name__ for layer in model.layers[1:]] == [
        "DenseBlock", "DenseBlock", "Dense"
    ]  # fmt: skip
    assert model.losses == []  # weight decay 0 is off: no regularizer at all
    args = recipe.parse_args(["--widths", "64", "--activation", "gelu", "--normalization", "layer"])
    assert args.widths == [64]
    model = recipe.build_model(64, args)
    assert model.layers[1].get_config()["normalization"] == "layer"
    assert model.layers[1].get_config()["activation"] == "gelu"

    for bad, flag in [
        (["--widths", "256,x"], "--widths"),
        (["--widths", "256,0"], "--widths"),
        (["--weight-decay", "-1e-4"], "--weight-decay"),
        (["--weight-decay", "nan"], "--weight-decay"),
        (["--activation", "no_such_activation"], "--activation"),
        (["--activation", "softplus"], "--activation"),  # no standard initializer
        (["--normalization", "group"], "--normalization"),
        (["--dropout", "1.0"], "--dropout"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            recipe.parse_args(bad)
        assert exit_info.value.code == 2
        assert flag in capsys.readouterr().err


# -- diabetes: MSE versus SmoothL1 ---------------------------------------------------

DIABETES_OUTPUTS = (
    "metrics.json",
    "model_mse.keras",
    "model_smooth_l1.keras",
    "history_mse.csv",
    "history_smooth_l1.csv",
    "validation.png",
)


def _mae_rmse(target, prediction):
    error = np.ravel(prediction).astype("float64") - np.ravel(target).astype("float64")
    return np.mean(np.abs(error)), math.sqrt(np.mean(error**2))


def test_diabetes_short_run_writes_every_output(diabetes, tmp_path, capsys):
    out = tmp_path / "diabetes"
    epochs, beta = 3, 0.5
    metrics = diabetes.main(
        ["--epochs", str(epochs), "--batch-size", "64", "--beta", str(beta), "--seed", "1",
         "--verbose", "0", "--out", str(out)]
    )  # fmt: skip
    for name in DIABETES_OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "original units" in printed and "LinearRegression" in printed
    assert "MSE" in printed and "SmoothL1(beta=0.5)" in printed

    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["args"]["beta"] == beta and written["args"]["epochs"] == epochs
    assert written["examples"] == {"train": 282, "val": 71, "test": 89}
    for run in ("mse", "smooth_l1", "linear_regression"):
        for key in ("test_mae", "test_rmse"):
            assert np.isfinite(written[run][key]) and written[run][key] > 0, (run, key)
        assert written[run]["test_mae"] <= written[run]["test_rmse"]
    for run in ("mse", "smooth_l1"):
        assert 1 <= written[run]["epochs_run"] <= epochs
        assert 0 <= written[run]["best_epoch"] < written[run]["epochs_run"]
        with open(out / f"history_{run}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == written[run]["epochs_run"]
        assert {"loss", "val_loss", "val_mae", "val_rmse", "lr"} <= set(rows[0])
        assert all(np.isfinite(float(row["lr"])) for row in rows)

    # Reloaded models reproduce the reported errors, converted to original units.
    data, _, _ = diabetes.load_data()
    x_test, _, y_test = data["test"]
    mean, std = written["target_mean"], written["target_std"]
    losses = {"mse": "MeanSquaredError", "smooth_l1": "SmoothL1"}
    for run, loss_class in losses.items():
        model = keras.saving.load_model(out / f"model_{run}.keras", safe_mode=True)
        assert type(model.loss).__name__ == loss_class
        prediction = model.predict(x_test, verbose=0) * std + mean
        mae, rmse = _mae_rmse(y_test, prediction)
        assert written[run]["test_mae"] == pytest.approx(mae, rel=1e-5)
        assert written[run]["test_rmse"] == pytest.approx(rmse, rel=1e-5)
    assert model.loss.beta == beta

    # The baseline: ordinary least squares with an intercept, solved by numpy.
    x_train, _, y_train = data["train"]
    design = np.hstack([x_train, np.ones((len(x_train), 1))]).astype("float64")
    coefficients = np.linalg.lstsq(design, y_train.astype("float64"), rcond=None)[0]
    prediction = np.hstack([x_test, np.ones((len(x_test), 1))]) @ coefficients
    mae, rmse = _mae_rmse(y_test, prediction)
    assert written["linear_regression"]["test_mae"] == pytest.approx(mae, rel=1e-4)
    assert written["linear_regression"]["test_rmse"] == pytest.approx(rmse, rel=1e-4)


def test_diabetes_runs_start_from_the_same_weights(diabetes, tmp_path):
    """With a negligible learning rate both models stay at the shared initial weights."""
    metrics = diabetes.main(
        ["--epochs", "1", "--learning-rate", "1e-12", "--verbose", "0", "--out", str(tmp_path)]
    )
    assert metrics["mse"]["test_mae"] == pytest.approx(metrics["smooth_l1"]["test_mae"], rel=1e-6)
    assert metrics["mse"]["test_rmse"] == pytest.approx(metrics["smooth_l1"]["test_rmse"], rel=1e-6)


def test_diabetes_split_and_standardization(diabetes):
    data, mean, std = diabetes.load_data()
    assert {split: len(arrays[0]) for split, arrays in data.items()} == {
        "train": 282, "val": 71, "test": 89
    }  # fmt: skip
    x_train, z_train, y_train = data["train"]
    assert x_train.shape == (282, 10) and z_train.shape == y_train.shape == (282, 1)
    np.testing.assert_allclose(x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_train.std(axis=0), 1.0, rtol=1e-5)
    assert mean == pytest.approx(float(np.mean(y_train)), rel=1e-6)
    assert std == pytest.approx(float(np.std(y_train)), rel=1e-6)
    for _, z, y in data.values():
        np.testing.assert_allclose(z, (y - mean) / std, rtol=1e-5, atol=1e-6)
        assert 25 <= y.min() and y.max() <= 346  # the target's original range
    again, _, _ = diabetes.load_data()  # the split is fixed
    np.testing.assert_array_equal(again["test"][2], data["test"][2])


def test_diabetes_help_and_bad_arguments(diabetes, capsys):
    with pytest.raises(SystemExit) as exit_info:
        diabetes.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--beta" in capsys.readouterr().out
    args = diabetes.parse_args([])
    assert args.beta == 1.0 and args.out == "runs/diabetes"
    for bad, flag in [
        (["--beta", "-1"], "--beta"),
        (["--beta", "inf"], "--beta"),
        (["--epochs", "0"], "--epochs"),
        (["--learning-rate", "0"], "--learning-rate"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            diabetes.parse_args(bad)
        assert exit_info.value.code == 2
        assert flag in capsys.readouterr().err


# -- digits: --monitor-gradients -----------------------------------------------------

GRADIENT_OUTPUTS = (
    "gradient_report.txt",
    "gradient_report.json",
    "gradient_heatmap.png",
    "gradient_norms.csv",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _dense_layers(model):
    """Every ``Dense`` layer of a model built by ``mlp``, the blocks' own included."""
    for layer in model.layers:
        if isinstance(layer, nnkit.layers.DenseBlock):
            yield layer.dense_layer
        elif isinstance(layer, keras.layers.Dense):
            yield layer


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100, image.shape


def test_monitor_gradients_writes_the_report(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    every, batch_size = 4, 128
    metrics = recipe.main(
        ["--epochs", "2", "--warmup-epochs", "1", "--batch-size", str(batch_size),
         "--widths", "32,16", "--monitor-gradients", "--monitor-every", str(every),
         "--seed", "1", "--verbose", "0", "--out", str(out)]
    )  # fmt: skip
    for name in (*OUTPUTS, *GRADIENT_OUTPUTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    _assert_png(out / "gradient_heatmap.png")

    report = json.loads((out / "gradient_report.json").read_text())
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    # A layer's group is its kernel's path minus the variable name.
    dense = [layer.kernel.path.rpartition("/")[0] for layer in _dense_layers(model)]
    assert dense == ["dense_block_0/dense", "dense_block_1/dense", "output"]
    assert [row["layer"] for row in report["layers"]] == dense
    for row in report["layers"]:
        assert 0 < row["median_grad_norm"] <= row["max_grad_norm"], row
        assert row["nonfinite"] == 0
    # Sampled at steps 0, N, 2N, ... below the number of steps run.
    steps_run = metrics["steps_run"]
    assert steps_run == 2 * math.ceil(metrics["examples"]["train"] / batch_size)
    assert report["samples"] == math.ceil(steps_run / every)
    assert report["first_step"] == 0
    assert report["last_step"] == (steps_run - 1) // every * every

    text = (out / "gradient_report.txt").read_text()
    assert text.splitlines()[0].split()[:2] == ["layer", "median"]
    assert all(name in text for name in dense)
    assert "flags:" in text and text in capsys.readouterr().out

    written = json.loads((out / "metrics.json").read_text())
    raised = [{k: flag[k] for k in ("layer", "kind", "first_step")} for flag in report["flags"]]
    assert written["gradient_flags"] == raised
    assert written["args"]["monitor_gradients"] is True
    assert written["args"]["monitor_every"] == every

    # The quiet default logs (issue 15 #5): summary figures per epoch, the
    # per-layer figures per sample in gradient_norms.csv.
    with open(out / "history.csv", newline="") as f:
        columns = set(next(csv.DictReader(f)))
    assert {"grad_norm", "grad_norm_min", "grad_norm_max", "nonfinite_grads"} <= columns
    assert not [c for c in columns if "/" in c], columns
    with open(out / "gradient_norms.csv", newline="") as f:
        samples = list(csv.DictReader(f))
    assert list(samples[0]) == ["step", "grad_norm", *(f"grad_norm/{name}" for name in dense)]
    assert [int(row["step"]) for row in samples] == list(range(0, steps_run, every))
    first = [float(samples[0][f"grad_norm/{name}"]) for name in dense]
    assert float(samples[0]["grad_norm"]) == pytest.approx(math.hypot(*first), rel=1e-5)


def _epoch_keys(line):
    return [item.split(": ")[0] for item in line.split(" - ") if ": " in item]


def _progress_bar_keys(recipe, out, capsys, *flags):
    recipe.main(
        ["--epochs", "2", "--warmup-epochs", "1", "--batch-size", "256", "--widths", "8",
         "--verbose", "2", "--out", str(out), *flags]
    )  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if " - loss: " in line]
    assert len(lines) == 2, lines
    return _epoch_keys(lines[-1])


def test_the_progress_bar_shows_loss_and_rate_not_codes(recipe, tmp_path, capsys):
    """What one look at `make demo`'s progress bar shows (the README quotes it)."""
    readme = (ROOT / "README.md").read_text()
    quoted = re.search(r"```text\nEpoch \d+/\d+\n([^\n]+)\n```", readme).group(1)
    demo = _progress_bar_keys(recipe, tmp_path / "demo", capsys)
    assert demo == _epoch_keys(quoted) == ["accuracy", "loss", "val_accuracy", "val_loss", "lr"]
    monitored = _progress_bar_keys(recipe, tmp_path / "monitored", capsys, "--monitor-gradients")
    summary = {"grad_norm", "grad_norm_min", "grad_norm_max", "nonfinite_grads"}
    assert set(monitored) == set(demo) | summary, monitored
    assert all(key in readme for key in summary)


def test_monitor_gradients_is_off_by_default(recipe, tmp_path):
    out = tmp_path / "run"
    metrics = recipe.main(
        ["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "256", "--widths", "8",
         "--verbose", "0", "--out", str(out)]
    )  # fmt: skip
    assert sorted(path.name for path in out.iterdir()) == sorted(OUTPUTS)
    assert "gradient_flags" not in metrics
    with open(out / "history.csv", newline="") as f:
        assert not any(column.startswith("grad_norm") for column in next(csv.DictReader(f)))


def test_monitor_flags(recipe, capsys):
    args = recipe.parse_args(["--monitor-gradients"])
    assert recipe.gradient_monitor(args).sample_every == GradientNormMonitor().sample_every
    args = recipe.parse_args(["--monitor-gradients", "--monitor-every", "3"])
    assert recipe.gradient_monitor(args).sample_every == 3
    assert recipe.gradient_monitor(recipe.parse_args([])) is None
    for bad in (["--monitor-every", "3"], ["--monitor-gradients", "--monitor-every", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            recipe.parse_args(bad)
        assert exit_info.value.code == 2
        assert "--monitor-every" in capsys.readouterr().err


# -- vanishing gradients: deep sigmoid versus ReLU + He + BN -------------------------

VANISHING_MODELS = ("sigmoid", "relu_he_bn")


@pytest.fixture(scope="module")
def vanishing():
    return _load_recipe("vanishing_gradients")


@pytest.mark.slow
def test_vanishing_short_run_flags_only_the_sigmoid_model(vanishing, tmp_path, capsys):
    out = tmp_path / "vanishing"
    depth, width, epochs = 10, 32, 3
    summary = vanishing.main(
        ["--depth", str(depth), "--width", str(width), "--epochs", str(epochs), "--seed", "0",
         "--out", str(out)]
    )  # fmt: skip
    written = json.loads((out / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    for model in VANISHING_MODELS:
        for name in (f"gradient_report_{model}.txt", f"gradient_report_{model}.json"):
            assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        _assert_png(out / f"gradient_heatmap_{model}.png")
        assert 0.0 <= written[model]["test_accuracy"] <= 1.0
        assert written[model]["train_seconds"] > 0
    assert written["wall_seconds"] > 0
    assert written["args"]["depth"] == depth and written["args"]["epochs"] == epochs

    hidden = [f"dense_block_{i}/dense" for i in range(depth)]
    sigmoid = json.loads((out / "gradient_report_sigmoid.json").read_text())
    assert [row["layer"] for row in sigmoid["layers"]] == [*hidden, "output"]
    vanishing_layers = [f["layer"] for f in sigmoid["flags"] if f["kind"] == "vanishing"]
    assert hidden[: depth // 2] == vanishing_layers[: depth // 2]  # the early layers
    assert "output" not in vanishing_layers
    assert written["sigmoid"]["vanishing_layers"] == vanishing_layers
    assert written["sigmoid"]["healthy"] is False
    # Each layer's median gradient norm is smaller than the next one's: it shrinks
    # on the way back to the input.
    medians = [row["median_grad_norm"] for row in sigmoid["layers"]]
    assert all(a < b for a, b in zip(medians, medians[1:], strict=False)), medians
    advice = sigmoid["suggestions"][0]
    for phrase in ("sigmoid", "He initialization", "batch normalization", "residual"):
        assert phrase in advice

    relu = json.loads((out / "gradient_report_relu_he_bn.json").read_text())
    assert relu["flags"] == [] and relu["suggestions"] == []
    assert written["relu_he_bn"]["healthy"] is True and written["relu_he_bn"]["flags"] == []
    assert [row["layer"] for row in relu["layers"]] == [
        *(f"dense_block_{i}/{part}" for i in range(depth) for part in ("dense", "norm")),
        "output",
    ]

    # A network whose early layers do not learn predicts about one class: chance
    # level is at most the largest class's share of the (stratified) test set.
    _, y_test = vanishing.load_data()["test"]
    chance = np.bincount(np.argmax(y_test, axis=1)).max() / len(y_test)
    assert written["sigmoid"]["test_accuracy"] <= chance + 0.05
    assert written["relu_he_bn"]["test_accuracy"] > 3 * chance  # it learns

    printed = capsys.readouterr().out
    assert printed.count("== ") == 2 and "[vanishing] dense_block_0/dense" in printed
    assert "flags: none" in printed and str(out) in printed.splitlines()[-1]


def test_vanishing_models_and_data(vanishing):
    data = vanishing.load_data()
    assert {split: xy[0].shape for split, xy in data.items()} == {
        "train": (1437, 64), "test": (360, 64)
    }  # fmt: skip
    x_train, y_train = data["train"]
    np.testing.assert_allclose(y_train.sum(axis=1), 1.0)
    varying = x_train.std(axis=0) > 0
    np.testing.assert_allclose(x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_train.std(axis=0)[varying], 1.0, rtol=1e-4)

    depth, width = 10, 64
    keras.utils.set_random_seed(0)
    sigmoid = vanishing.build_model("sigmoid", 64, depth, width)
    relu = vanishing.build_model("relu_he_bn", 64, depth, width)
    for model in (sigmoid, relu):
        assert model.output_shape == (None, 10)
        blocks = model.layers[1:-1]
        assert len(blocks) == depth
        assert all(isinstance(block, nnkit.layers.DenseBlock) for block in blocks)
    assert {(b.activation, b.normalization) for b in sigmoid.layers[1:-1]} == {("sigmoid", None)}
    assert {(b.activation, b.normalization) for b in relu.layers[1:-1]} == {("relu", "batch")}
    # Kernels: N(0, 0.05²) for the sigmoid stack, He normal for ReLU: standard
    # deviation √(2 / fan_in) (Keras rescales its truncated normal to keep it).
    kernels = np.concatenate([b.dense_layer.kernel.numpy().ravel() for b in sigmoid.layers[2:-1]])
    assert np.std(kernels) == pytest.approx(0.05, rel=0.03)
    kernels = np.concatenate([b.dense_layer.kernel.numpy().ravel() for b in relu.layers[2:-1]])
    assert np.std(kernels) == pytest.approx(math.sqrt(2 / width), rel=0.03)
    # Each sigmoid layer draws its own weights.
    first, second = (sigmoid.layers[k].dense_layer.kernel.numpy() for k in (2, 3))
    assert not np.allclose(first, second)


def test_vanishing_help_and_bad_arguments(vanishing, capsys):
    with pytest.raises(SystemExit) as exit_info:
        vanishing.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--depth" in capsys.readouterr().out
    args = vanishing.parse_args([])
    assert (args.depth, args.width, args.epochs, args.seed) == (10, 64, 20, 0)
    assert args.out == "runs/vanishing"
    for bad, flag in [
        (["--depth", "0"], "--depth"),
        (["--width", "0"], "--width"),
        (["--epochs", "0"], "--epochs"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            vanishing.parse_args(bad)
        assert exit_info.value.code == 2
        assert flag in capsys.readouterr().err


# -- recipes/second_order.py ------------------------------------------------------


@pytest.fixture(scope="module")
def second_order():
    return _load_recipe("second_order")


@pytest.mark.slow
def test_second_order_quick_run_writes_every_output(second_order, tmp_path, capsys):
    out = tmp_path / "second_order"
    summary = second_order.main(
        ["--quick", "--problems", "autoencoder", "--optimizers", "adam,shampoo", "--out", str(out)]
    )
    written = json.loads((out / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    outcome = written["problems"]["autoencoder"]
    results = outcome["optimizers"]
    assert list(results) == ["adam", "shampoo"]
    adam = results["adam"]
    # The target is tuned Adam's final loss, so Adam reaches it (at the last epoch at latest).
    assert outcome["target_loss"] == pytest.approx(1.05 * adam["final_loss"][0])
    assert adam["seeds_reaching_target"] >= 1
    assert adam["steps_to_target"][0] <= 3 * adam["runs"][0]["steps_per_epoch"]
    for name, result in results.items():
        # The sweep ran through nnkit.tuning: a grid study of two rates, rerun with 3 seeds.
        study = pathlib.Path(result["study"])
        assert json.loads((study / "study.json").read_text())["tuner"] == "grid"
        assert len((study / "seeds.csv").read_text().splitlines()) == 1 + 3
        assert (study / "report" / "report.md").exists()
        assert len(result["sweep"]) == 2, name  # --quick: two rates
        best = min(result["sweep"].values())
        assert result["sweep"][repr(result["best_learning_rate"])] == best
        # Two trials: the report gives no robust range; the 10 % width is 0 or one step.
        assert result["robust_range"] is None and result["robust_decades"] is None
        assert result["within_10pct_decades"] in (0.0, pytest.approx(1 / 6, abs=5e-3))
        found = result["lr_find"]  # --quick: 20 steps, from the sweep's seed-0 model
        assert found["steps"] <= 20 and found["rule"] == "minimum", name
        assert found["decades_from_best"] == pytest.approx(
            math.log10(found["suggestion"] / result["best_learning_rate"])
        )
        assert (
            found["loss_in_sweep"]["score"] == result["sweep"][repr(found["loss_in_sweep"]["rate"])]
        )
        assert len(result["runs"]) == 3
        for run in result["runs"]:
            assert len(run["loss"]) == len(run["seconds"]) == 3
            assert all(math.isfinite(v) and v > 0 for v in run["loss"]), name
            assert run["loss"][-1] < run["loss"][0], name  # it learns
    _assert_png(out / "autoencoder_loss.png")
    printed = capsys.readouterr().out
    assert "== autoencoder" in printed and "fewest steps to target" in printed
    assert "adam: lr_find suggests" in printed


def test_second_order_models_and_measures(second_order):
    data = second_order.load_data()
    assert data["x"].shape == (1797, 64) and 0.0 <= data["x"].min() <= data["x"].max() <= 1.0
    autoencoder = second_order.build_model("autoencoder", 0)
    widths = [layer.units for layer in autoencoder.layers]
    assert widths == [48, 32, 16, 8, 16, 32, 48, 64]  # 64-…-8 and the mirrored decoder
    assert second_order.build_model("classifier", 0).output_shape == (None, 10)
    # Every row's factory makes its optimizer; KFAC registers every Dense layer of the model.
    for name, (factory, grid) in second_order.OPTIMIZERS.items():
        model = second_order.build_model("autoencoder", 0)  # one KFAC per model
        assert isinstance(factory(grid[0], model), keras.optimizers.Optimizer), name
    kfac = second_order.OPTIMIZERS["kfac"][0](0.5, second_order.build_model("autoencoder", 0))
    assert len(kfac.registered_layers) == 8 and kfac.output_fisher == "binary_crossentropy"
    assert kfac.adaptive and kfac.fisher == "sampled" and float(kfac.learning_rate) == 0.5
    fixed = second_order.OPTIMIZERS["kfac_fixed"][0](1e-2, second_order.build_model("autoencoder"))
    assert not fixed.adaptive and fixed.kl_clip == 1e-4
    for name, (_, grid) in second_order.OPTIMIZERS.items():
        ratios = np.array(grid[1:]) / np.array(grid[:-1])
        assert len(grid) == 15 and np.allclose(ratios, 10 ** (1 / 6), rtol=1e-2), name
    # The sweep's hypermodel: one knob, and fit at the recipe's batch size (15 steps an epoch).
    hypermodel = second_order.RateHyperModel("autoencoder", "adam", (1e-3, 1e-2))
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert list(hp.values) == ["learning_rate"] and hp["learning_rate"] == 1e-3
    batches = []
    counter = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batches.append(batch)
    )
    hypermodel.fit(hp, model, data["x"], data["x"], epochs=1, verbose=0, callbacks=[counter])
    assert len(batches) == 15
    run = {"loss": [3.0, 2.0, 1.0], "seconds": [0.5, 1.0, 1.5], "steps_per_epoch": 10}
    assert second_order.to_target(run, 2.0) == (20, 1.0)
    assert second_order.to_target(run, 0.5) == (None, None)
    sweep = {1e-3: 1.0, 1e-2: 1.05, 1e-1: 2.0, 1.0: float("inf")}
    assert second_order.within_best(sweep) == [1e-3, 1e-2]  # 1.05 <= 1.1 × the best
    assert second_order.decades([1e-3, 1e-2]) == pytest.approx(1.0)
    assert second_order.decades(None) is None and second_order.within_best({}) == []


def test_second_order_help_and_bad_arguments(second_order, capsys):
    with pytest.raises(SystemExit) as exit_info:
        second_order.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out
    for bad, flag in (
        (["--optimizers", "adam,lbfgs"], "--optimizers"),
        (["--optimizers", "soap"], "baseline"),
        (["--seeds", "2"], "--seeds"),
        (["--target-factor", "nan"], "--target-factor"),
        (["--problems", "gan"], "--problems"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            second_order.parse_args(bad)
        assert exit_info.value.code == 2
        assert flag in capsys.readouterr().err


# -- recipes/large_model.py -------------------------------------------------------


@pytest.fixture(scope="module")
def large_model():
    return _load_recipe("large_model")


@pytest.mark.slow
def test_large_model_quick_run_trains_every_strategy_alike():
    # A subprocess: the JAX backend and 8 logical CPU devices must be set before JAX starts.
    # KERAS_BACKEND=tensorflow here: the script sets the JAX backend itself.
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    completed = subprocess.run(
        [sys.executable, str(RECIPES / "large_model.py"), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    printed = completed.stdout
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["backend"] == "jax" and summary["devices"] == 8
    results = summary["strategies"]
    assert list(results) == ["dp", "fsdp", "tp", "fsdp_tp"]
    assert [results[name]["mesh"] for name in results] == ["8x1", "8x1", "1x8", "2x4"]
    # The printed loss table: every row (steps, then the validation loss) equal across strategies.
    table = printed.split("training loss")[1].split("per-device memory")[0]
    rows = [line.split() for line in table.splitlines() if line.strip()[:1].isdigit()]
    rows.append(next(line.split() for line in table.splitlines() if line.startswith(" valid")))
    assert len(rows) == 5  # steps 1, 3, 5, 6 (--log-every 2 of 6) and validation
    for row in rows:
        values = [float(value) for value in row[1:]]
        assert len(values) == 4 and values == pytest.approx([values[0]] * 4, rel=1e-5), row
    dp = results["dp"]
    for name, result in results.items():
        assert result["loss"] == pytest.approx(dp["loss"], rel=1e-5), name
        assert len(result["loss"]) == 6 and all(math.isfinite(v) for v in result["loss"])
        assert result["valid_bits_per_byte"] == pytest.approx(result["valid_loss"] / math.log(2))
        assert result["check_layout"].startswith("ok"), result["check_layout"]
    assert dp["loss"][-1] < dp["loss"][0]  # it learns
    assert summary["max_relative_loss_difference"] <= 1e-5
    # The memory table: FSDP holds less per device than DP (state about 1/8, peak below).
    fsdp = results["fsdp"]["memory"]
    for key in ("parameter_bytes", "optimizer_bytes", "peak_bytes"):
        assert fsdp[key] < dp["memory"][key], key
    assert fsdp["parameter_bytes"] < 0.2 * dp["memory"]["parameter_bytes"]
    memory = printed.split("per-device memory")[1].split("plan and guard")[0]
    fsdp_row = next(line for line in memory.splitlines() if line.startswith("fsdp "))
    dp_row = next(line for line in memory.splitlines() if line.startswith("dp "))
    assert f"{fsdp['parameter_bytes']:,}" in fsdp_row and "(1.000)" in dp_row
    assert "check_layout: ok" in printed.split("plan and guard")[1]
    assert "largest relative loss difference from DP" in printed
    # The planner's choice under 0.9 x DP's peak: a layout that fits, never DP itself.
    choice = summary["choice"]
    assert choice["memory_budget_bytes"] == pytest.approx(0.9 * dp["memory"]["peak_bytes"])
    assert choice["strategy"] != "dp" and math.prod(choice["mesh_shape"]) == 8
    assert "choose_layout under 0.9 x DP's peak" in printed


def test_large_model_reruns_itself_under_jax(large_model, monkeypatch, capsys):
    # This process runs the TensorFlow backend: main() runs the file again with JAX and 8 devices.
    assert keras.backend.backend() != "jax"
    calls = []

    def run(command, env, check):
        calls.append((command, env))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(large_model.subprocess, "run", run)
    assert large_model.main(["--quick", "--seed", "3"]) is None
    [(command, env)] = calls
    assert command[0] == sys.executable and command[2:] == ["--quick", "--seed", "3"]
    assert command[1] == str(RECIPES / "large_model.py")
    assert env["KERAS_BACKEND"] == "jax"
    assert "--xla_force_host_platform_device_count=8" in env["XLA_FLAGS"]
    assert "running again with KERAS_BACKEND=jax" in capsys.readouterr().out
    monkeypatch.setattr(
        large_model.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 3)
    )
    with pytest.raises(SystemExit) as exit_info:
        large_model.main(["--quick"])
    assert exit_info.value.code == 3


def test_large_model_corpus_data_and_arguments(large_model, capsys):
    corpus = large_model.docstring_corpus(4096)
    assert corpus.shape == (4096,) and corpus.min() >= 0 and corpus.max() < 256
    assert np.array_equal(corpus, large_model.docstring_corpus(4096))  # deterministic
    text = bytes(corpus.astype("uint8")).decode("utf-8", errors="ignore")
    assert "\n\n" in text and sum(c.isalpha() for c in text) > 0.5 * len(text)  # prose
    args = large_model.parse_args(["--quick"])
    data = large_model.load_data(args)
    x, y = data["train"]
    assert x.shape == y.shape == (args.steps, args.batch_size, args.seq)
    assert np.array_equal(x[:, :, 1:], y[:, :, :-1])  # the next byte is the target
    assert data["train_bytes"] + data["valid_bytes"] == args.corpus_bytes
    x_valid, y_valid = data["valid"]
    assert x_valid.shape == (args.val_batches * args.batch_size, args.seq)
    assert np.array_equal(
        x_valid[0],
        large_model.docstring_corpus(args.corpus_bytes)[
            data["train_bytes"] : data["train_bytes"] + args.seq
        ],
    )  # validation windows come from the last tenth
    env = large_model.jax_environment({"XLA_FLAGS": "--xla_cpu_foo=1"})
    assert env["KERAS_BACKEND"] == "jax"
    assert env["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8"
    with pytest.raises(SystemExit) as exit_info:
        large_model.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out
    for bad, flag in (
        (["--width", "30"], "--heads"),
        (["--batch-size", "12"], "--batch-size"),
        (["--steps", "0"], "--steps"),
        (["--learning-rate", "nan"], "--learning-rate"),
        (["--corpus-bytes", "100"], "--corpus-bytes"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            large_model.parse_args(bad)
        assert exit_info.value.code == 2
        assert flag in capsys.readouterr().err
