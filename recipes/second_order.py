"""Second-order optimizers against a tuned Adam: the deep autoencoder of the K-FAC papers at digits scale.

The recipe trains, on scikit-learn's 8×8 digits (1,797 images, pixels scaled
to ``[0, 1]``, nothing downloaded):

* ``autoencoder``: the deep autoencoder benchmark of Hinton & Salakhutdinov
  (2006) used by the K-FAC papers, at digits scale: an encoder
  ``64-48-32-16-8`` of ``tanh`` units (the 8-unit code linear) and the
  mirrored decoder ``8-16-32-48-64`` with sigmoid outputs, trained on
  binary cross-entropy reconstruction (the K-FAC papers' loss);
* ``classifier`` (the control, where the literature expects smaller gains):
  a ``64-64-64-10`` ``tanh`` MLP with softmax cross-entropy.

Each problem is trained with every optimizer of ``OPTIMIZERS`` (Adam,
SGD with Nesterov momentum, ``nnkit.optimizers.Shampoo``,
``nnkit.optimizers.SOAP``, ``nnkit.optimizers.KFAC``; one row per optimizer,
so another method is one more row). Every optimizer gets the same treatment:

1. a learning-rate sweep over its own log-spaced grid (``--sweep-seeds``
   seeds per rate, the final training loss averaged over them);
2. the best rate of the sweep rerun with ``--seeds`` seeds;
3. per seed, the steps and the seconds to reach the *target* training loss:
   ``--target-factor`` (default 1.05) × the final loss of tuned Adam (the
   mean over its seeds), so "target reached" means "within 5 % of tuned
   Adam at the end".

The training loss is the epoch's mean mini-batch loss (Keras's ``loss``
log); a step is one mini-batch. The learning-rate *sensitivity* of each
optimizer is the width, in decades, of the range of swept rates whose final
loss lies within 10 % of its best (``log10(max/min)`` of those rates; wider
is more forgiving).

It prints a table per problem (steps and seconds to target, mean ± standard
deviation over the seeds, final loss, best rate, sensitivity), says plainly
which optimizer reached the target in the fewest steps and the least time
(including when it is Adam), and writes to ``--out`` (default
``runs/second_order``)::

    summary.json            per problem and optimizer: the sweep, the runs,
                            steps and seconds to target, the sensitivity
    <problem>_loss.png      training loss against steps and against seconds
                            (mean over the seeds, each at its best rate)

``--quick`` runs a few epochs, a two-rate grid and one seed (seconds; the
recipe test). Run ``python recipes/second_order.py --help`` for the options.
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from nnkit.optimizers import KFAC, SOAP, Shampoo  # noqa: E402

PROBLEMS = ("autoencoder", "classifier")
ENCODER = (48, 32, 16)  # hidden widths before the 8-unit code; the decoder mirrors them
CODE = 8
CLASSIFIER = (64, 64)
BATCH_SIZE = 128

LOSSES = {"autoencoder": "binary_crossentropy", "classifier": "categorical_crossentropy"}

# One row per optimizer: its factory ((learning rate, model) -> optimizer) and the
# grid of learning rates its sweep tries. KFAC registers the model it preconditions
# and takes the exact Gauss-Newton factor of the problem's loss at the output layer.
OPTIMIZERS = {
    "adam": (lambda lr, model: keras.optimizers.Adam(lr), (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
    "sgd_nesterov": (
        lambda lr, model: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
        (0.01, 0.03, 0.1, 0.3, 1.0),
    ),
    "shampoo": (lambda lr, model: Shampoo(lr), (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
    "soap": (lambda lr, model: SOAP(lr), (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
    "kfac": (
        lambda lr, model: KFAC(
            lr, model=model, damping=1e-2, damping_type="eigen", output_fisher=LOSSES[model.name]
        ),
        (3e-3, 1e-2, 3e-2, 0.1, 0.3),
    ),
}
BASELINE = "adam"
WITHIN = 0.10  # sensitivity: rates whose final loss is within 10 % of the best


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Shampoo, SOAP and K-FAC against tuned Adam and SGD-Nesterov on the digits "
        "deep autoencoder (and the digits MLP classifier as the control)."
    )
    parser.add_argument("--epochs", type=int, default=60, help="epochs per run (default 60)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds at the best rate (default 3)")
    parser.add_argument(
        "--sweep-seeds", type=int, default=1, help="seeds per swept rate (default 1)"
    )
    parser.add_argument(
        "--optimizers",
        default=",".join(OPTIMIZERS),
        help=f"comma-separated rows of the table (default {','.join(OPTIMIZERS)})",
    )
    parser.add_argument(
        "--problems", default=",".join(PROBLEMS), help="autoencoder, classifier or both"
    )
    parser.add_argument(
        "--target-factor",
        type=float,
        default=1.05,
        help="target = this × tuned Adam's final training loss (default 1.05)",
    )
    parser.add_argument("--out", default=os.path.join("runs", "second_order"))
    parser.add_argument(
        "--quick", action="store_true", help="a few epochs, two rates, one seed (seconds)"
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "seeds", "sweep_seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not (math.isfinite(args.target_factor) and args.target_factor > 0):
        parser.error("--target-factor must be a positive number")
    args.optimizers = [name for name in args.optimizers.split(",") if name]
    unknown = [name for name in args.optimizers if name not in OPTIMIZERS]
    if unknown or not args.optimizers:
        parser.error(f"--optimizers: unknown {unknown}; choose from {list(OPTIMIZERS)}")
    if BASELINE not in args.optimizers:
        parser.error(f"--optimizers must include the baseline {BASELINE!r}")
    args.problems = [name for name in args.problems.split(",") if name]
    if not args.problems or any(name not in PROBLEMS for name in args.problems):
        parser.error(f"--problems: choose from {list(PROBLEMS)}")
    if args.quick:
        args.epochs, args.seeds, args.sweep_seeds = min(args.epochs, 3), 1, 1
    return args


def load_data():
    """``{"x": pixels in [0, 1], "labels": one-hot}`` of the 1,797 digits."""
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    labels = keras.utils.to_categorical(digits.target, 10).astype("float32")
    return {"x": x, "labels": labels}


def build_model(problem, seed):
    """The autoencoder or the classifier, seeded."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((64,))]
    if problem == "autoencoder":
        layers += [keras.layers.Dense(width, activation="tanh") for width in ENCODER]
        layers.append(keras.layers.Dense(CODE, name="code"))
        layers += [keras.layers.Dense(width, activation="tanh") for width in reversed(ENCODER)]
        layers.append(keras.layers.Dense(64, activation="sigmoid"))
    else:
        layers += [keras.layers.Dense(width, activation="tanh") for width in CLASSIFIER]
        layers.append(keras.layers.Dense(10, activation="softmax"))
    return keras.Sequential(layers, name=problem)


class _Clock(keras.callbacks.Callback):
    """Seconds since the start of training at every epoch end (compilation included)."""

    def on_train_begin(self, logs=None):
        self.start, self.seconds = time.perf_counter(), []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def train(problem, optimizer_name, learning_rate, seed, epochs, data):
    """One run: ``{"loss": [per epoch], "seconds": [per epoch], "steps_per_epoch": n}``."""
    model = build_model(problem, seed)
    factory, _ = OPTIMIZERS[optimizer_name]
    model.compile(factory(learning_rate, model), loss=LOSSES[problem])
    y = data["x"] if problem == "autoencoder" else data["labels"]
    clock = _Clock()
    history = model.fit(
        data["x"], y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0, callbacks=[clock]
    )
    losses = [float(value) for value in history.history["loss"]]
    losses = [value if math.isfinite(value) else float("inf") for value in losses]
    steps_per_epoch = math.ceil(len(data["x"]) / BATCH_SIZE)
    return {"loss": losses, "seconds": clock.seconds, "steps_per_epoch": steps_per_epoch}


def to_target(run, target):
    """``(steps, seconds)`` at the first epoch end with loss <= target, or ``(None, None)``."""
    for epoch, value in enumerate(run["loss"]):
        if value <= target:
            return (epoch + 1) * run["steps_per_epoch"], run["seconds"][epoch]
    return None, None


def sensitivity(sweep):
    """Decades of swept rates within ``WITHIN`` of the best final loss (0.0: only the best)."""
    finite = {lr: loss for lr, loss in sweep.items() if math.isfinite(loss)}
    if not finite:
        return 0.0
    best = min(finite.values())
    good = [lr for lr, loss in finite.items() if loss <= best * (1.0 + WITHIN)]
    return float(math.log10(max(good) / min(good)))


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def run_problem(problem, args, data):
    """Sweep, rerun at the best rate and measure steps/seconds to target, per optimizer."""
    results = {}
    for name in args.optimizers:
        grid = OPTIMIZERS[name][1]
        if args.quick:
            grid = grid[1:3]
        sweep = {}
        for lr in grid:
            finals = [
                train(problem, name, lr, 1000 + s, args.epochs, data)["loss"][-1]
                for s in range(args.sweep_seeds)
            ]
            sweep[lr] = float(np.mean(finals))
        best_lr = min(sweep, key=lambda lr: (sweep[lr], lr))
        runs = [
            train(problem, name, best_lr, seed, args.epochs, data) for seed in range(args.seeds)
        ]
        results[name] = {
            "sweep": {repr(lr): loss for lr, loss in sweep.items()},
            "best_learning_rate": best_lr,
            "sensitivity_decades": sensitivity(sweep),
            "runs": runs,
            "final_loss": _mean_std([run["loss"][-1] for run in runs]),
        }
    target = args.target_factor * results[BASELINE]["final_loss"][0]
    for result in results.values():
        reached = [to_target(run, target) for run in result["runs"]]
        result["steps_to_target"] = _mean_std([steps for steps, _ in reached])
        result["seconds_to_target"] = _mean_std([seconds for _, seconds in reached])
        result["seeds_reaching_target"] = sum(steps is not None for steps, _ in reached)
    return {"target_loss": target, "optimizers": results}


def _fmt(pair, digits=0):
    mean, std = pair
    if mean is None:
        return "not reached"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def report(problem, outcome, seeds):
    """The printed table and the plain verdict."""
    lines = [f"== {problem}: target training loss {outcome['target_loss']:.4f} (tuned Adam's)"]
    lines.append(
        f"{'optimizer':<14}{'best lr':>9}  {'steps to target':>17}  {'seconds to target':>17}  "
        f"{'final loss':>17}  {'lr range (dec)':>14}"
    )
    results = outcome["optimizers"]
    for name, r in results.items():
        lines.append(
            f"{name:<14}{r['best_learning_rate']:>9.0e}  {_fmt(r['steps_to_target']):>17}  "
            f"{_fmt(r['seconds_to_target'], 2):>17}  {_fmt(r['final_loss'], 4):>17}  "
            f"{r['sensitivity_decades']:>14.2f}"
        )
    for name, r in results.items():
        if r["seeds_reaching_target"] < seeds:
            lines.append(f"{name}: {r['seeds_reaching_target']}/{seeds} seeds reached the target")
    reached = {n: r for n, r in results.items() if r["seeds_reaching_target"] > 0}
    for key, label in (("steps_to_target", "steps"), ("seconds_to_target", "wall time")):
        if reached:
            winner = min(reached, key=lambda n: reached[n][key][0])
            verdict = f"fewest {label} to target (mean over the seeds that reached it): {winner}"
            if winner == BASELINE:
                verdict += " (the baseline wins)"
            lines.append(verdict)
    return "\n".join(lines)


def plot(problem, outcome, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_steps, by_seconds) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in outcome["optimizers"].items():
        loss = np.mean([run["loss"] for run in r["runs"]], axis=0)
        seconds = np.mean([run["seconds"] for run in r["runs"]], axis=0)
        steps = np.arange(1, len(loss) + 1) * r["runs"][0]["steps_per_epoch"]
        label = f"{name} (lr {r['best_learning_rate']:g})"
        by_steps.plot(steps, loss, label=label)
        by_seconds.plot(seconds, loss, label=label)
    for axis, xlabel in ((by_steps, "steps"), (by_seconds, "seconds")):
        axis.axhline(outcome["target_loss"], color="gray", linestyle=":", label="target")
        axis.set_xlabel(xlabel)
        axis.set_ylabel("training loss")
        axis.set_yscale("log")
    by_steps.legend(fontsize="small")
    figure.suptitle(f"digits {problem}: each optimizer at its best learning rate")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    data = load_data()
    start = time.perf_counter()
    summary = {"args": vars(args), "problems": {}}
    for problem in args.problems:
        outcome = run_problem(problem, args, data)
        summary["problems"][problem] = outcome
        print(report(problem, outcome, args.seeds))
        plot(problem, outcome, os.path.join(args.out, f"{problem}_loss.png"))
    summary["wall_seconds"] = time.perf_counter() - start
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {args.out}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
