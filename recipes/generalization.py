"""Generalization on digits: SAM, SWA, drop-path, MixUp and label smoothing against a baseline.

The recipe trains the same residual ``nnkit.models.mlp`` (SGD with momentum
and a cosine schedule, sparse integer labels) on scikit-learn's digits with
each technique and compares test accuracy over several seeds:

- ``baseline``: the plain model. Its learning rate is tuned first (a small
  grid, scored on a validation split of the training set, one seed), and
  every technique then reuses it: the techniques get no tuning of their own
  beyond the papers' usual settings below, so a win is not a tuning artefact;
- ``sam``: ``SharpnessAwareMinimization(model, rho=--rho)``;
- ``swa``: ``StochasticWeightAveraging`` from 75 % of the epochs, at a
  constant rate of ``0.2 ×`` the tuned rate;
- ``drop_path``: ``mlp(..., drop_path=--drop-path)`` (linear decay over depth);
- ``mixup``: ``MixUp(model, alpha=--alpha)`` on the rank-2 batches;
- ``label_smoothing``: ``nnkit.losses.SparseCategoricalCrossentropy(label_smoothing=--smoothing)``.

A second scenario flips 20 % of the *training* labels to another class
(``noisy``; the test labels stay clean), where SAM's robustness to label
noise can be tested; it compares ``baseline`` and ``sam`` only.

It prints mean ± standard deviation of the test accuracy per technique and
scenario, the difference to the baseline, and says plainly when the
baseline wins. It writes (``--out``, default ``runs/generalization``)::

    metrics.json        every run's test accuracy, the summary, the tuned rate, the arguments
    accuracy.png        mean ± std of the test accuracy, per technique and scenario

Run ``python recipes/generalization.py --help`` for the options; ``--quick``
is a seconds-long smoke run (tiny widths, 2 epochs, 1 seed).
"""

import argparse
import json
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

from nnkit.callbacks import StochasticWeightAveraging  # noqa: E402
from nnkit.losses import SparseCategoricalCrossentropy  # noqa: E402
from nnkit.models import MixUp, SharpnessAwareMinimization, mlp  # noqa: E402
from nnkit.schedules import Constant, CosineAnnealing  # noqa: E402

TECHNIQUES = ("baseline", "sam", "swa", "drop_path", "mixup", "label_smoothing")
NOISY_TECHNIQUES = ("baseline", "sam")
NOISE = 0.2
LEARNING_RATES = (0.01, 0.03, 0.1)  # the baseline's grid


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40, help="epochs per run (default 40)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per technique (default 3)")
    parser.add_argument("--width", type=int, default=128, help="units per block (default 128)")
    parser.add_argument("--depth", type=int, default=4, help="residual blocks (default 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument("--rho", type=float, default=0.05, help="SAM's rho (default 0.05)")
    parser.add_argument("--drop-path", type=float, default=0.2, help="default 0.2")
    parser.add_argument("--alpha", type=float, default=0.2, help="MixUp's alpha (default 0.2)")
    parser.add_argument("--smoothing", type=float, default=0.1, help="default 0.1")
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.5,
        help="fraction of digits used for training (default 0.5; the rest tests)",
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--out", default="runs/generalization", help="output directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.width, args.depth = 2, 1, 16, 2
    for name in ("epochs", "seeds", "width", "depth", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 < args.train_fraction < 1.0:
        parser.error("--train-fraction must be in (0, 1)")
    return args


def load_data(train_fraction, seed=0):
    """Digits scaled to [0, 1], split once (stratified) into train and test, plus noisy labels."""
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, train_size=train_fraction, stratify=y, random_state=seed
    )
    rng = np.random.default_rng(seed)
    flipped = rng.random(len(y_train)) < NOISE
    noisy = y_train.copy()
    noisy[flipped] = (y_train[flipped] + rng.integers(1, 10, flipped.sum())) % 10  # another class
    return {"train": (x_train, y_train), "noisy": (x_train, noisy), "test": (x_test, y_test)}


def train(technique, x, y, args, learning_rate, seed, validation=None):
    """Train one run; return the accuracy on ``validation`` (or the model)."""
    keras.utils.set_random_seed(seed)
    steps = int(np.ceil(len(x) / args.batch_size))
    total = args.epochs * steps
    drop_path = args.drop_path if technique == "drop_path" else 0.0
    model = mlp(64, [args.width] * args.depth, residual=True, drop_path=drop_path, output_units=10)
    trained = model
    if technique == "sam":
        trained = SharpnessAwareMinimization(model, rho=args.rho)
    elif technique == "mixup":
        trained = MixUp(model, alpha=args.alpha, seed=seed)
    smoothing = args.smoothing if technique == "label_smoothing" else 0.0
    callbacks = []
    if technique == "swa":
        start = min(int(0.75 * args.epochs), args.epochs - 1)
        callbacks.append(
            StochasticWeightAveraging(start, learning_rate=Constant(0.2 * learning_rate))
        )
    trained.compile(
        keras.optimizers.SGD(CosineAnnealing(learning_rate, total), momentum=0.9),
        loss=SparseCategoricalCrossentropy(from_logits=True, label_smoothing=smoothing),
    )
    trained.fit(
        x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0, callbacks=callbacks
    )
    return model


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def tune_baseline(data, args):
    """The baseline's learning rate: the best of the grid on a validation split (seed 0)."""
    x, y = data["train"]
    x_fit, x_val, y_fit, y_val = train_test_split(x, y, test_size=0.25, stratify=y, random_state=1)
    grid = LEARNING_RATES[1:2] if args.quick else LEARNING_RATES
    scores = {
        lr: accuracy(train("baseline", x_fit, y_fit, args, lr, 0), x_val, y_val) for lr in grid
    }
    return max(scores, key=scores.get), scores


def summarize(runs):
    summary = {}
    for scenario, by_technique in runs.items():
        base = np.mean(by_technique["baseline"])
        summary[scenario] = {
            t: {
                "mean": float(np.mean(a)),
                "std": float(np.std(a)),
                "vs_baseline": float(np.mean(a) - base),
            }
            for t, a in by_technique.items()
        }
    return summary


def report(summary, seeds):
    lines = []
    for scenario, rows in summary.items():
        lines.append(f"\n{scenario} (test accuracy, mean ± std over {seeds} seed(s)):")
        for technique, row in rows.items():
            delta = "" if technique == "baseline" else f"  {100 * row['vs_baseline']:+.2f} pp"
            lines.append(
                f"  {technique:<16} {100 * row['mean']:6.2f} ± {100 * row['std']:.2f} %{delta}"
            )
        others = {t: r for t, r in rows.items() if t != "baseline"}
        helped = [t for t, r in others.items() if r["vs_baseline"] > rows["baseline"]["std"]]
        if helped:
            lines.append(f"  helped by more than the baseline's spread: {', '.join(helped)}")
        elif all(r["vs_baseline"] <= 0 for r in others.values()):
            lines.append("  the baseline wins: no technique beat it")
        else:
            lines.append(
                "  no clear winner: no technique beat the baseline by more than its seed spread"
            )
    return "\n".join(lines)


def plot(summary, path):
    figure = Figure(figsize=(8, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(summary), squeeze=False)[0]
    for ax, (scenario, rows) in zip(axes, summary.items(), strict=True):
        names = list(rows)
        ax.bar(
            names,
            [100 * rows[n]["mean"] for n in names],
            yerr=[100 * rows[n]["std"] for n in names],
            capsize=3,
        )
        low = min(100 * rows[n]["mean"] - 100 * rows[n]["std"] for n in names)
        ax.set_ylim(max(0.0, low - 2), 100)
        ax.set_title(scenario)
        ax.set_ylabel("test accuracy (%)")
        ax.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    figure.savefig(path)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    data = load_data(args.train_fraction)
    learning_rate, grid_scores = tune_baseline(data, args)
    print(f"baseline learning rate {learning_rate} (validation accuracy per rate: {grid_scores})")
    x_test, y_test = data["test"]
    runs = {"clean": {}, "noisy": {}}
    for scenario, techniques in (("clean", TECHNIQUES), ("noisy", NOISY_TECHNIQUES)):
        x, y = data["train" if scenario == "clean" else "noisy"]
        for technique in techniques:
            runs[scenario][technique] = [
                accuracy(train(technique, x, y, args, learning_rate, seed), x_test, y_test)
                for seed in range(args.seeds)
            ]
    summary = summarize(runs)
    print(report(summary, args.seeds))
    plot(summary, os.path.join(args.out, "accuracy.png"))
    metrics = {
        "runs": runs,
        "summary": summary,
        "learning_rate": learning_rate,
        "grid_scores": {str(k): v for k, v in grid_scores.items()},
        "examples": {"train": len(data["train"][0]), "test": len(x_test)},
        "wall_seconds": time.perf_counter() - started,
        "args": vars(args),
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
