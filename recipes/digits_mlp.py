"""Train an MLP on scikit-learn's digits with nnkit's model builder, schedule and callbacks.

The recipe shows the parts of nnkit that a plain Keras training script needs:

* the model from ``nnkit.models.mlp``: ``--widths`` hidden blocks (dense, or
  residual with ``--residual``), each with optional ``--normalization``,
  ``--activation`` and ``--dropout``, and an optional ``--weight-decay``
  (``nnkit.regularizers.WeightDecay`` on every kernel);
* ``CosineAnnealing`` with a linear warmup (``--schedule cosine``, the default),
  or ``StepDecay`` counted in epochs through ``EpochSchedule``
  (``--schedule step``), with the schedule's length in steps computed as
  ``epochs × steps_per_epoch``;
* ``EarlyStopping(restore_best_weights=True)``, whose stop reason is recorded;
* ``LearningRateMonitor``, which puts ``lr`` in the epoch logs, so
  ``history.csv`` has the rate of every epoch;
* with ``--monitor-gradients``, ``GradientNormMonitor``, which measures every
  layer's gradient norm inside the compiled train step (every
  ``--monitor-every`` steps) and diagnoses vanishing/exploding gradients at
  the end of training.

It writes a run directory (``--out``, default ``runs/digits``)::

    metrics.json        test accuracy/loss, epochs run, best epoch, stop reason,
                        wall time, the arguments
    model.keras         the trained model (reload with safe_mode=True after
                        ``import nnkit``, which makes nnkit's classes loadable)
    history.csv         one row per epoch: loss, accuracy, val_*, lr
    curves.png          loss and accuracy per epoch
    learning_rate.png   the learning rate at every step

and, with ``--monitor-gradients`` (``metrics.json`` then also lists the flags
raised, and ``history.csv`` the monitor's summary columns ``grad_norm``,
``grad_norm_min``, ``grad_norm_max`` and ``nonfinite_grads``)::

    gradient_norms.csv    one row per sample: step, global norm, each layer's norm
    gradient_report.txt   the per-layer table, flags and suggestions (str of the report)
    gradient_report.json  the same as JSON (``GradientReport.to_dict()``)
    gradient_heatmap.png  log10 gradient norm per layer (rows) over the steps (columns)

Run ``python recipes/digits_mlp.py --help`` for the options.
"""

import argparse
import csv
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
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from nnkit.callbacks import EarlyStopping, GradientNormMonitor, LearningRateMonitor  # noqa: E402
from nnkit.initializers import for_activation  # noqa: E402
from nnkit.models import mlp  # noqa: E402
from nnkit.regularizers import WeightDecay  # noqa: E402
from nnkit.schedules import CosineAnnealing, EpochSchedule, StepDecay, Warmup  # noqa: E402

NUM_CLASSES = 10
NORMALIZATIONS = {"none": None, "batch": "batch", "layer": "layer"}


def _widths(text):
    """``"256,128"`` -> ``[256, 128]`` (an argparse ``type``)."""
    try:
        widths = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 256,128, got {text!r}"
        ) from None
    if any(width < 1 for width in widths):
        raise argparse.ArgumentTypeError(f"every width must be >= 1, got {text!r}")
    return widths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="digits_mlp.py",
        description=(
            "Train an MLP classifier on scikit-learn's digits data with an nnkit "
            "learning-rate schedule, EarlyStopping and LearningRateMonitor, and "
            "write metrics, the model, the history and plots to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--epochs", type=int, default=60, help="maximum number of epochs (the schedule's length)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step")
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=3e-3,
        help="peak learning rate (reached after warmup)",
    )
    parser.add_argument(
        "--min-learning-rate",
        type=float,
        default=0.0,
        help="final learning rate of the cosine schedule",
    )
    parser.add_argument(
        "--schedule",
        choices=("cosine", "step"),
        default="cosine",
        help="cosine: CosineAnnealing over all epochs; "
        "step: StepDecay counted in epochs (EpochSchedule)",
    )
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=3,
        help="epochs of linear warmup from 0 to --learning-rate",
    )
    parser.add_argument(
        "--step-epochs",
        type=int,
        default=20,
        help="step schedule: multiply the rate by --step-factor every "
        "this many epochs (counted after warmup)",
    )
    parser.add_argument(
        "--step-factor",
        type=float,
        default=0.1,
        help="step schedule: the factor applied every --step-epochs",
    )
    parser.add_argument(
        "--widths",
        type=_widths,
        default=[256, 128],
        help="hidden widths, comma-separated (e.g. 256,128): one block each",
    )
    parser.add_argument(
        "--activation",
        default="relu",
        help="hidden activation, a Keras name with a standard initializer (relu, gelu, tanh, "
        "selu, ...): kernels are initialized for it",
    )
    parser.add_argument(
        "--normalization",
        choices=tuple(NORMALIZATIONS),
        default="none",
        help="normalization inside every block: BatchNormalization or LayerNormalization",
    )
    parser.add_argument(
        "--dropout", type=float, default=0.2, help="dropout rate inside every block"
    )
    parser.add_argument(
        "--residual",
        action="store_true",
        help="residual blocks (x + F(x), projection shortcut where widths change) "
        "instead of dense blocks",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="λ of nnkit.regularizers.WeightDecay on every kernel: adds λ/2·ΣW² to the "
        "loss (gradient λ·W); 0 turns it off",
    )
    parser.add_argument(
        "--label-smoothing",
        type=float,
        default=0.1,
        help="label smoothing of the cross-entropy loss (keeps val_loss "
        "meaningful for EarlyStopping as the model grows confident)",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=15,
        help="EarlyStopping: epochs without val_loss improvement before stopping",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for weights, dropout and shuffling (keras.utils.set_random_seed)",
    )
    parser.add_argument(
        "--split-seed", type=int, default=0, help="seed of the train/validation/test split"
    )
    parser.add_argument(
        "--monitor-gradients",
        action="store_true",
        help="attach nnkit.callbacks.GradientNormMonitor and write gradient_report.txt/.json "
        "and gradient_heatmap.png to --out",
    )
    parser.add_argument(
        "--monitor-every",
        type=int,
        default=None,
        help="with --monitor-gradients: sample the norms every this many steps "
        "(default: the monitor's own default)",
    )
    parser.add_argument("--out", default="runs/digits", help="output (run) directory")
    parser.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch",
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "step_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.warmup_epochs < args.epochs:
        parser.error(f"--warmup-epochs must be in [0, --epochs), got {args.warmup_epochs}")
    for name in ("dropout", "label_smoothing"):
        if not 0 <= getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        parser.error(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    try:  # the mlp initializes kernels for the activation: it must have a rule
        for_activation(args.activation)
    except ValueError as error:
        parser.error(f"--activation: {error}")
    if args.patience < 0:
        parser.error(f"--patience must be >= 0, got {args.patience}")
    if args.monitor_every is not None:
        if not args.monitor_gradients:
            parser.error("--monitor-every needs --monitor-gradients")
        if args.monitor_every < 1:
            parser.error(f"--monitor-every must be >= 1, got {args.monitor_every}")
    return args


def load_data(split_seed, test_fraction=0.2, validation_fraction=0.15):
    """Digits split into train/validation/test, standardized with train statistics.

    ``validation_fraction`` is a fraction of what remains after the test split.
    The splits are stratified, so every class appears in each in proportion.
    Labels are one-hot (``CategoricalCrossentropy`` takes ``label_smoothing``).
    """
    x, y = load_digits(return_X_y=True)
    x = x.astype("float32")
    y = y.astype("int32")
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=split_seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=validation_fraction, stratify=y_rest, random_state=split_seed
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # constant pixels (the digits' borders) stay at 0

    def prepare(features, labels):
        features = ((features - mean) / std).astype("float32")
        return features, keras.utils.to_categorical(labels, NUM_CLASSES).astype("float32")

    return {
        "train": prepare(x_train, y_train),
        "val": prepare(x_val, y_val),
        "test": prepare(x_test, y_test),
    }


def build_model(num_features, args):
    """``nnkit.models.mlp`` with the flags' blocks and a softmax output.

    The weight decay is passed as the builder's ``kernel_regularizer``: the
    model is built here, so this is the direct way, and every kernel (the
    output layer's too) carries it in its config, so it is saved with the
    model. ``nnkit.regularizers.apply_regularization`` does the same for a
    model whose building code you cannot change. The penalty is coupled (in
    the loss), so Adam rescales its gradient; ``keras.optimizers.AdamW`` is
    the decoupled alternative (docs/regularization.md).
    """
    return mlp(
        num_features,
        args.widths,
        activation=args.activation,
        normalization=NORMALIZATIONS[args.normalization],
        dropout=args.dropout,
        residual=args.residual,
        output_units=NUM_CLASSES,
        output_activation="softmax",
        kernel_regularizer=WeightDecay(args.weight_decay) if args.weight_decay > 0 else None,
        name="digits_mlp",
    )


def build_schedule(args, steps_per_epoch):
    """The learning-rate schedule chosen by ``--schedule``, in optimizer steps."""
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = args.warmup_epochs * steps_per_epoch
    if args.schedule == "cosine":
        # total_steps includes the warmup: the cosine part lasts the remaining steps.
        return CosineAnnealing(
            args.learning_rate,
            total_steps,
            args.min_learning_rate,
            warmup_steps=warmup_steps,
        )
    # "×step_factor every step_epochs epochs": StepDecay counts epochs, EpochSchedule
    # turns the optimizer step into an epoch; granularity="epoch" keeps the rate
    # constant within an epoch.
    schedule = EpochSchedule(
        StepDecay(args.learning_rate, step_size=args.step_epochs, factor=args.step_factor),
        steps_per_epoch,
        granularity="epoch",
    )
    if warmup_steps:
        schedule = Warmup(schedule, warmup_steps)
    return schedule


def schedule_values(schedule, total_steps):
    """The learning rate at steps ``0 .. total_steps - 1``.

    nnkit schedules are elementwise ``keras.ops`` functions of the step, so one
    call on the vector of steps evaluates them all.
    """
    steps = np.arange(total_steps, dtype="float32")
    values = np.asarray(schedule(steps))
    return np.broadcast_to(values, steps.shape).astype("float64")


def _save(figure, path):
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)


def plot_curves(history, best_epoch, path):
    epochs = np.arange(len(history["loss"]))  # 0-based, as in history.csv
    figure = Figure(figsize=(10, 4), layout="constrained")
    for axes, metric in zip(figure.subplots(1, 2), ("loss", "accuracy"), strict=True):
        axes.plot(epochs, history[metric], label="train")
        axes.plot(epochs, history[f"val_{metric}"], label="validation")
        axes.axvline(best_epoch, color="tab:gray", linestyle=":", label="best epoch (restored)")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend()
    _save(figure, path)


def plot_learning_rate(values, steps_run, steps_per_epoch, title, path):
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    axes.plot(np.arange(len(values)), values, label="schedule")
    if steps_run < len(values):
        axes.axvline(
            steps_run, color="tab:red", linestyle="--", label=f"early stop (step {steps_run})"
        )
        axes.legend()
    axes.set_xlabel(f"step (optimizer iteration; {steps_per_epoch} steps per epoch)")
    axes.set_ylabel("learning rate")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    _save(figure, path)


def gradient_monitor(args):
    """The ``GradientNormMonitor`` of ``--monitor-gradients``, or ``None``."""
    if not args.monitor_gradients:
        return None
    # The monitor's quiet default: a few summary figures in the epoch logs (and
    # the progress bar); the per-layer figures go to gradient_norms.csv.
    if args.monitor_every is None:
        return GradientNormMonitor()
    return GradientNormMonitor(sample_every=args.monitor_every)


def write_gradient_report(report, out):
    """Write the report as text, JSON, a PNG heatmap and a CSV per sample; return its dict."""
    data = report.to_dict()
    with open(os.path.join(out, "gradient_norms.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "grad_norm", *(f"grad_norm/{name}" for name in report.layers)])
        for step, total, norms in zip(
            report.steps, report.global_norms, report.grad_norms, strict=True
        ):
            writer.writerow([int(step), float(total), *(float(n) for n in norms)])
    with open(os.path.join(out, "gradient_report.txt"), "w") as f:
        f.write(f"{report}\n")
    with open(os.path.join(out, "gradient_report.json"), "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    report.plot(os.path.join(out, "gradient_heatmap.png"))
    return data


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
    keras.utils.set_random_seed(args.seed)

    data = load_data(args.split_seed)
    x_train, y_train = data["train"]
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch

    schedule = build_schedule(args, steps_per_epoch)
    model = build_model(x_train.shape[1], args)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
        metrics=["accuracy"],
    )
    early_stopping = EarlyStopping(
        monitor="val_loss",
        patience=args.patience,
        restore_best_weights=True,
        verbose=min(args.verbose, 1),
    )
    callbacks = [
        early_stopping,
        LearningRateMonitor(),  # before CSVLogger, so the row has lr
        keras.callbacks.CSVLogger(os.path.join(args.out, "history.csv")),
    ]
    monitor = gradient_monitor(args)
    if monitor is not None:  # before CSVLogger, so the row has its grad_norm columns
        callbacks.insert(1, monitor)
    train_start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        validation_data=data["val"],
        epochs=args.epochs,
        batch_size=args.batch_size,
        callbacks=callbacks,
        verbose=args.verbose,
    )
    train_seconds = time.perf_counter() - train_start

    test_loss, test_accuracy = model.evaluate(*data["test"], verbose=0)
    model_path = os.path.join(args.out, "model.keras")
    model.save(model_path)

    epochs_run = len(history.epoch)
    steps_run = int(np.asarray(model.optimizer.iterations))
    plot_curves(history.history, early_stopping.best_epoch, os.path.join(args.out, "curves.png"))
    plot_learning_rate(
        schedule_values(schedule, total_steps),
        steps_run,
        steps_per_epoch,
        f"{type(schedule).__name__} ({args.schedule})",
        os.path.join(args.out, "learning_rate.png"),
    )

    metrics = {
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "epochs_run": epochs_run,
        "best_epoch": _plain(early_stopping.best_epoch),  # 0-based, as in history.csv
        "best_val_loss": _plain(early_stopping.best),
        "stop_reason": _plain(early_stopping.stop_reason),
        "stop_message": _plain(early_stopping.stop_message),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "steps_run": steps_run,
        "examples": {split: len(xy[1]) for split, xy in data.items()},
        "train_seconds": round(train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - start, 3),
        "versions": {"keras": keras.__version__, "backend": keras.backend.backend()},
        "args": vars(args),
    }
    if monitor is not None:
        report = monitor.last_report  # diagnosed at the end of fit, over every sample
        gradients = write_gradient_report(report, args.out)
        metrics["gradient_flags"] = [
            {key: flag[key] for key in ("layer", "kind", "first_step")}
            for flag in gradients["flags"]
        ]
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")

    print(
        f"test accuracy: {test_accuracy:.4f}  (test loss {test_loss:.4f}; "
        f"{epochs_run} epochs, best epoch {metrics['best_epoch'] + 1} of {epochs_run}, "
        f"stop reason: {metrics['stop_reason']}; {metrics['wall_seconds']:.1f} s)"
    )
    if monitor is not None:
        print(f"gradient report ({len(report.steps)} samples, every {monitor.sample_every} steps):")
        print(report)
    print(f"wrote {', '.join(sorted(os.listdir(args.out)))} to {os.path.abspath(args.out)}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
