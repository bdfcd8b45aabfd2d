"""Regression on scikit-learn's diabetes data: MSE versus nnkit's ``SmoothL1``.

The recipe trains the same ``nnkit.models.mlp`` twice, from identical initial
weights with identical seeds (so the same shuffling), once with
``keras.losses.MeanSquaredError`` and once with
``nnkit.losses.SmoothL1(beta=--beta)``, and compares their test errors side by
side with a scikit-learn ``LinearRegression`` baseline. Both runs use nnkit's
``CosineAnnealing`` with a linear warmup, ``EarlyStopping(restore_best_weights=True)``
on the validation loss, and ``LearningRateMonitor``.

The data: 442 patients, 10 baseline features (age, sex, body-mass index,
blood pressure, six blood serum measurements), and the target, a measure of
disease progression one year later (25 to 346). They are split once, with a
fixed seed, into train / validation / test sets (20% test, then 20% of the
rest for validation). Features *and* target are standardized with the
training set's mean and standard deviation: the networks learn the
standardized target, so ``--beta`` is in standard deviations of the target.
Predictions are converted back, and every test MAE/RMSE this recipe reports is
in the target's **original units**.

It writes a run directory (``--out``, default ``runs/diabetes``)::

    metrics.json             test MAE/RMSE of both models and of the linear
                             baseline, epochs run, best epochs, stop reasons,
                             the standardization statistics, wall time, the arguments
    model_mse.keras          the MSE model (best weights restored)
    model_smooth_l1.keras    the SmoothL1 model; reload either with safe_mode=True
                             after ``import nnkit.layers, nnkit.losses, nnkit.schedules``
    history_mse.csv          one row per epoch: loss, mae, rmse, val_*, lr
    history_smooth_l1.csv    (mae/rmse there are in standardized units)
    validation.png           validation MAE and RMSE per epoch of both, original units

Run ``python recipes/diabetes_regression.py --help`` for the options.
"""

import argparse
import enum
import json
import math
import numbers
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from nnkit.callbacks import EarlyStopping, LearningRateMonitor  # noqa: E402
from nnkit.losses import SmoothL1  # noqa: E402
from nnkit.models import mlp  # noqa: E402
from nnkit.schedules import CosineAnnealing  # noqa: E402

#: The split is fixed (``--seed`` changes only the training randomness).
SPLIT_SEED = 0
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.2  # of what remains after the test split
WIDTHS = [32, 32]
DROPOUT = 0.2  # 282 training examples: without dropout the net overfits in ~20 epochs
WARMUP_EPOCHS = 5  # at most epochs - 1
PATIENCE = 30
#: The two losses compared, by the names used in file names and metrics.json.
RUNS = ("mse", "smooth_l1")
COLORS = ("tab:blue", "tab:orange")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="diabetes_regression.py",
        description=(
            "Train the same MLP on scikit-learn's diabetes data with MSE and with "
            "nnkit's SmoothL1, and compare their test MAE/RMSE (original target "
            "units) with a linear regression baseline."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--epochs", type=int, default=100, help="maximum number of epochs (the schedule's length)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step")
    parser.add_argument(
        "--learning-rate", type=float, default=3e-3, help="peak learning rate (after warmup)"
    )
    parser.add_argument(
        "--beta",
        type=float,
        default=1.0,
        help="SmoothL1's beta, in standard deviations of the target: quadratic below, "
        "linear (slope 1) above; 0 is the L1 loss",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for the initial weights, dropout and shuffling of both runs",
    )
    parser.add_argument("--out", default="runs/diabetes", help="output (run) directory")
    parser.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch",
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        parser.error(f"--learning-rate must be a finite number > 0, got {args.learning_rate}")
    if not (math.isfinite(args.beta) and args.beta >= 0):
        parser.error(f"--beta must be a finite number >= 0, got {args.beta}")
    return args


def load_data():
    """The diabetes data split into train/validation/test, standardized with train statistics.

    Returns ``(data, target_mean, target_std)``: ``data[split]`` is
    ``(features, standardized_target, target)``, float32, the target as a
    column ``(n, 1)`` and ``target`` in original units.
    """
    x, y = load_diabetes(return_X_y=True, scaled=False)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=VALIDATION_FRACTION, random_state=SPLIT_SEED
    )
    x_mean, x_std = x_train.mean(axis=0), x_train.std(axis=0)
    y_mean, y_std = float(y_train.mean()), float(y_train.std())

    def prepare(features, target):
        target = target.reshape(-1, 1)
        return (
            ((features - x_mean) / x_std).astype("float32"),
            ((target - y_mean) / y_std).astype("float32"),
            target.astype("float32"),
        )

    data = {
        "train": prepare(x_train, y_train),
        "val": prepare(x_val, y_val),
        "test": prepare(x_test, y_test),
    }
    return data, y_mean, y_std


def build_model(num_features, name):
    """``nnkit.models.mlp`` with one linear output: the standardized target."""
    return mlp(num_features, WIDTHS, activation="relu", dropout=DROPOUT, output_units=1, name=name)


def make_loss(run, beta):
    if run == "mse":
        return keras.losses.MeanSquaredError()
    return SmoothL1(beta=beta)


def errors(target, prediction):
    """``(MAE, RMSE)`` of two arrays of the same shape."""
    target, prediction = np.asarray(target, "float64"), np.asarray(prediction, "float64")
    if target.shape != prediction.shape:  # (n, 1) - (n,) would broadcast to (n, n)
        raise ValueError(f"shapes differ: target {target.shape}, prediction {prediction.shape}")
    difference = prediction - target
    return float(np.mean(np.abs(difference))), float(np.sqrt(np.mean(np.square(difference))))


def train(run, args, data, initial_weights):
    """Train one model from ``initial_weights``; returns ``(model, history, early_stopping)``."""
    x_train, z_train, _ = data["train"]
    x_val, z_val, _ = data["val"]
    # The same seed before each run: same dropout seeds, same shuffling order.
    keras.utils.set_random_seed(args.seed)
    model = build_model(x_train.shape[1], f"diabetes_{run}")
    model.set_weights(initial_weights)

    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    warmup_epochs = min(WARMUP_EPOCHS, args.epochs - 1)
    schedule = CosineAnnealing(
        args.learning_rate,
        args.epochs * steps_per_epoch,  # total_steps, warmup included
        warmup_steps=warmup_epochs * steps_per_epoch,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss=make_loss(run, args.beta),
        # Standardized units; × the target's std gives original units.
        metrics=[
            keras.metrics.MeanAbsoluteError(name="mae"),
            keras.metrics.RootMeanSquaredError(name="rmse"),
        ],
    )
    early_stopping = EarlyStopping(monitor="val_loss", patience=PATIENCE, restore_best_weights=True)
    callbacks = [
        early_stopping,
        LearningRateMonitor(),  # before CSVLogger, so the row has lr
        keras.callbacks.CSVLogger(os.path.join(args.out, f"history_{run}.csv")),
    ]
    history = model.fit(
        x_train,
        z_train,
        validation_data=(x_val, z_val),
        epochs=args.epochs,
        batch_size=args.batch_size,
        callbacks=callbacks,
        verbose=args.verbose,
    )
    return model, history, early_stopping


def plot_validation(histories, best_epochs, labels, target_std, baseline, path):
    """Validation MAE and RMSE per epoch of every run, in original units.

    ``baseline`` is ``{"mae": ..., "rmse": ...}`` of the linear regression on
    the validation set, drawn as a horizontal line.
    """
    figure = Figure(figsize=(10, 4), layout="constrained")
    for axes, metric in zip(figure.subplots(1, 2), ("mae", "rmse"), strict=True):
        for (run, history), color in zip(histories.items(), COLORS, strict=True):
            values = np.asarray(history[f"val_{metric}"]) * target_std
            axes.plot(np.arange(len(values)), values, color=color, label=labels[run])
            axes.axvline(best_epochs[run], color=color, linestyle=":")
        axes.axhline(baseline[metric], color="tab:gray", linestyle="--", label="LinearRegression")
        # The first epochs' errors are several times larger: show the end.
        axes.set_ylim(top=1.5 * baseline[metric])
        axes.set_xlabel("epoch (dotted: best epoch, restored)")
        axes.set_ylabel(f"validation {metric.upper()} (original units)")
        axes.grid(alpha=0.3)
        axes.legend()
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)


def _plain(value):
    """A JSON value: enums by their value, numpy numbers as Python numbers."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def main(argv=None):
    """Run the recipe; returns the metrics written to ``metrics.json``."""
    start = time.perf_counter()
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    data, y_mean, y_std = load_data()
    x_train, _, y_train = data["train"]
    x_test, _, y_test = data["test"]

    keras.utils.set_random_seed(args.seed)
    initial_weights = build_model(x_train.shape[1], "initial").get_weights()

    labels = {"mse": "MSE", "smooth_l1": f"SmoothL1(beta={args.beta:g})"}
    metrics = {"units": "test_mae and test_rmse are in the target's original units"}
    histories, best_epochs = {}, {}
    for run in RUNS:
        train_start = time.perf_counter()
        model, history, early_stopping = train(run, args, data, initial_weights)
        train_seconds = time.perf_counter() - train_start
        model.save(os.path.join(args.out, f"model_{run}.keras"))
        prediction = model.predict(x_test, verbose=0) * y_std + y_mean  # original units
        test_mae, test_rmse = errors(y_test, prediction)
        histories[run] = history.history
        best_epochs[run] = _plain(early_stopping.best_epoch)
        metrics[run] = {
            "loss": labels[run],
            "test_mae": test_mae,
            "test_rmse": test_rmse,
            "epochs_run": len(history.epoch),
            "best_epoch": best_epochs[run],  # 0-based, as in the history CSV
            "best_val_loss": _plain(early_stopping.best),  # standardized units
            "stop_reason": _plain(early_stopping.stop_reason),
            "train_seconds": round(train_seconds, 3),
        }

    # The baseline sees the same training examples (it needs no validation set).
    baseline = LinearRegression().fit(x_train, y_train)
    test_mae, test_rmse = errors(y_test, baseline.predict(x_test))
    metrics["linear_regression"] = {"test_mae": test_mae, "test_rmse": test_rmse}
    x_val, _, y_val = data["val"]
    val_errors = dict(zip(("mae", "rmse"), errors(y_val, baseline.predict(x_val)), strict=True))
    plot_validation(
        histories, best_epochs, labels, y_std, val_errors, os.path.join(args.out, "validation.png")
    )
    metrics.update(
        {
            "target_mean": y_mean,  # of the training set, used to standardize
            "target_std": y_std,
            "examples": {split: len(arrays[0]) for split, arrays in data.items()},
            "wall_seconds": round(time.perf_counter() - start, 3),
            "versions": {"keras": keras.__version__, "backend": keras.backend.backend()},
            "args": vars(args),
        }
    )
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")

    examples = metrics["examples"]
    print(
        f"diabetes: {examples['train']} train / {examples['val']} validation / "
        f"{examples['test']} test examples; test errors in the target's original units "
        f"(disease progression; training mean {y_mean:.1f}, std {y_std:.1f})"
    )
    print(f"{'model':<28}{'test MAE':>10}{'test RMSE':>11}{'epochs':>8}{'best epoch':>12}")
    for run in (*RUNS, "linear_regression"):
        row = metrics[run]
        name = "LinearRegression" if run == "linear_regression" else f"MLP, {labels[run]}"
        epochs = f"{row['epochs_run']:>8}{row['best_epoch'] + 1:>12}" if run in RUNS else ""
        print(f"{name:<28}{row['test_mae']:>10.2f}{row['test_rmse']:>11.2f}{epochs}")
    print(f"{metrics['wall_seconds']:.1f} s; wrote {', '.join(sorted(os.listdir(args.out)))} "
          f"to {os.path.abspath(args.out)}")  # fmt: skip
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
