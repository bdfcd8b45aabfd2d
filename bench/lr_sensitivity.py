"""lr_find against a learning-rate sweep, one-cycle against cosine, and the report on unused knobs.

Questions (issue 25):

1. ``lr_find``'s suggested rate against the best rate of a 15-point sweep on
   three problems (a digits MLP classifier, a digits autoencoder, a small
   CNN on the 8×8 digits): is the final validation loss at the suggestion
   within 10 % of the swept best's, and what does the test cost, in steps
   and seconds, relative to one sweep trial?
2. ``OneCycle`` (with ``OneCycleMomentum`` on ``nnkit.optimizers.SGD``)
   against ``CosineAnnealing`` (SGD, momentum 0.9) at the same budget on the
   digits MLP, each schedule's peak rate the best of its own ``--peaks``-point
   sweep (``1e-2 … 3``, seed 0), then ``--seeds`` fresh seeds (1, 2, …):
   which wins (final validation loss, mean ± standard deviation)?
3. ``sensitivity_report`` on a random-search sweep (``tune``) of the digits
   MLP with the learning rate, dropout and two knobs the model never reads:
   are the unused knobs ranked last, and is there no confounding claim?

Method: sklearn's digits (1,797 images, 64 features scaled to [0, 1]), a
fixed split (1,400 train, 397 validation), batch 64, Adam for question 1
(the common first choice; the sweep is 15 rates log-spaced over
``1e-4 … 1``), every run seeded. A sweep trial and the runs at the
suggestions train ``--epochs`` epochs from the same initial weights (seed
0); the figure is the validation loss after the last epoch. The best swept
rate is rerun from ``--noise-seeds`` other initial weights: the spread of
its own loss is the noise floor of the 10 % target. ``lr_find`` runs with
its defaults (100 steps over ``1e-7 … 10``) on ``--finder-seeds`` batch
orders (its ``seed``), and every rule's suggestion (``minimum`` ÷ 10,
``steepest``, ``valley``) is trained at, so the rules are compared on the
same footing across the three problems (``lr_find_rules``: runs within
10 % of the best, geometric mean of the loss ratios). Seconds are
wall-clock on a shared CPU machine: the ratios, not the seconds, are the
figures to read.

Usage::

    python bench/lr_sensitivity.py          # full run (several minutes on 2 CPU cores)
    python bench/lr_sensitivity.py --quick  # smoke test

The last line of stdout is one JSON object with every figure.
"""

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nnkit.optimizers import SGD  # noqa: E402
from nnkit.schedules import CosineAnnealing, OneCycle, OneCycleMomentum  # noqa: E402
from nnkit.tuning import lr_find, sensitivity_report, tune  # noqa: E402

try:  # imported from the repository root (the smoke tests)
    from bench._timing import environment, load_average, set_threads  # noqa: E402
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    from _timing import environment, load_average, set_threads  # noqa: E402

BATCH = 64
TRAIN = 1400
WITHIN = 0.10
PROBLEMS = ("digits_mlp", "digits_autoencoder", "small_cnn")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 10)")
    parser.add_argument("--rates", type=int, default=None, help="sweep points (default 15)")
    parser.add_argument("--seeds", type=int, default=None, help="one-cycle seeds (default 5)")
    parser.add_argument("--trials", type=int, default=None, help="report sweep (default 60)")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--finder-steps", type=int, default=None,
                        help="lr_find steps (default: lr_find's own)")  # fmt: skip
    parser.add_argument("--finder-seeds", type=int, default=None,
                        help="lr_find batch orders (default 3)")  # fmt: skip
    parser.add_argument("--noise-seeds", type=int, default=None,
                        help="reruns of the best swept rate from other seeds (default 2)")  # fmt: skip
    parser.add_argument("--peaks", type=int, default=None, help="peak sweep points (default 8)")
    parser.add_argument("--parts", default="finder,race,report",
                        help="which questions to run (default all three)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    quick = args.quick
    args.epochs = args.epochs or (2 if quick else 10)
    args.rates = args.rates or (3 if quick else 15)
    args.seeds = args.seeds or (2 if quick else 5)
    args.trials = args.trials or (4 if quick else 60)
    args.finder_steps = args.finder_steps or (20 if quick else None)
    args.finder_seeds = args.finder_seeds or (1 if quick else 3)
    args.peaks = args.peaks or (2 if quick else 8)
    args.noise_seeds = args.noise_seeds if args.noise_seeds is not None else (0 if quick else 2)
    args.problems = [p for p in args.problems.split(",") if p]
    args.parts = [p for p in args.parts.split(",") if p]
    return args


def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order].astype("int32")
    return (x[:TRAIN], y[:TRAIN]), (x[TRAIN:], y[TRAIN:])


def build(problem, seed, optimizer, dropout=0.0):
    keras.utils.set_random_seed(seed)
    if problem == "digits_mlp":
        model = keras.Sequential([
            keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(dropout), keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(dropout), keras.layers.Dense(10),
        ])  # fmt: skip
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    elif problem == "digits_autoencoder":
        model = keras.Sequential([
            keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(8), keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(64, activation="sigmoid"),
        ])  # fmt: skip
        loss = "mse"
    else:
        model = keras.Sequential([
            keras.Input((64,)), keras.layers.Reshape((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10),
        ])  # fmt: skip
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer, loss=loss)
    return model


def targets(problem, x, y):
    return x if problem == "digits_autoencoder" else y


def train(problem, optimizer, data, epochs, seed=0):
    (x, y), (xv, yv) = data
    model = build(problem, seed, optimizer)
    start = time.perf_counter()
    history = model.fit(x, targets(problem, x, y), batch_size=BATCH, epochs=epochs, shuffle=True,
                        validation_data=(xv, targets(problem, xv, yv)), verbose=0)  # fmt: skip
    seconds = time.perf_counter() - start
    final = float(history.history["val_loss"][-1])
    return (final if math.isfinite(final) else math.inf), seconds


def steps_per_epoch():
    return -(-TRAIN // BATCH)


RULES = ("steepest", "minimum", "valley")


def sweep(problem, data, args, rates, make):
    """``{repr(rate): final validation loss}`` and the median trial seconds."""
    losses, seconds = {}, []
    for rate in rates:
        loss, wall = train(problem, make(rate), data, args.epochs)
        losses[repr(rate)] = loss
        seconds.append(wall)
    return losses, statistics.median(seconds)


def finder_vs_sweep(problem, data, args):
    """lr_find with its defaults (``--finder-seeds`` batch orders) against a 15-point sweep.

    Every rule's suggestion is trained at, from the sweep's initial weights,
    so the default rule is chosen on the same footing for all three problems.
    """
    (x, y), _ = data
    rates = [float(r) for r in np.geomspace(1e-4, 1.0, args.rates)]
    swept, trial_seconds = sweep(problem, data, args, rates, keras.optimizers.Adam)
    best_rate = min(rates, key=lambda r: swept[repr(r)])
    best = swept[repr(best_rate)]
    # The noise floor of the 10 % target: the best rate itself, from other initial weights.
    reruns = [
        train(problem, keras.optimizers.Adam(best_rate), data, args.epochs, seed)[0]
        for seed in range(1, args.noise_seeds + 1)
    ]
    finds, finder_seconds = [], []
    for seed in range(args.finder_seeds):
        model = build(problem, 0, keras.optimizers.Adam(1e-3))
        start = time.perf_counter()
        result = lr_find(model, x, targets(problem, x, y), batch_size=BATCH,
                         steps=args.finder_steps, seed=seed)  # fmt: skip
        finder_seconds.append(time.perf_counter() - start)
        finds.append(result)
    rules = {}
    for rule in RULES:
        suggestions = [result.suggestions[rule] for result in finds]
        losses = [
            math.inf
            if s is None
            else train(problem, keras.optimizers.Adam(s), data, args.epochs)[0]
            for s in suggestions
        ]
        rules[rule] = {
            "suggestions": suggestions,
            "losses": losses,
            "ratios": [loss / best for loss in losses],
            "within_10pct": sum(loss <= (1 + WITHIN) * best for loss in losses),
            "decades_from_best": [
                None if s is None else math.log10(s / best_rate) for s in suggestions
            ],
        }
    default = finds[0]
    at_default = rules[default.rule]["losses"][0]
    trial_steps = args.epochs * steps_per_epoch()
    return {
        "suggestion": default.suggestion,
        "suggestion_rule": default.rule,
        "stop_reason": default.stop_reason,
        "best_swept_rate": best_rate,
        "best_swept_loss": best,
        "loss_at_suggestion": at_default,
        "ratio_to_best": at_default / best if best > 0 else None,
        "within_10pct": bool(at_default <= (1 + WITHIN) * best),
        "best_rate_other_seeds": reruns,
        "best_rate_other_seeds_ratios": [loss / best for loss in reruns],
        "rules": rules,
        "sweep": swept,
        "finder_steps": len(default.learning_rates),
        "trial_steps": trial_steps,
        "finder_steps_ratio": len(default.learning_rates) / trial_steps,
        "finder_seconds": statistics.median(finder_seconds),
        "trial_seconds_median": trial_seconds,
        "finder_seconds_ratio": statistics.median(finder_seconds) / trial_seconds,
    }


def rule_totals(per_problem):
    """Per rule: runs within 10 % of the swept best, and the geometric mean of the ratios."""
    totals = {}
    for rule in RULES:
        ratios = [r for p in per_problem.values() for r in p["rules"][rule]["ratios"]]
        finite = [r for r in ratios if math.isfinite(r)]
        totals[rule] = {
            "within_10pct": sum(p["rules"][rule]["within_10pct"] for p in per_problem.values()),
            "runs": len(ratios),
            "geometric_mean_ratio": math.exp(statistics.fmean(math.log(r) for r in finite))
            if len(finite) == len(ratios)
            else math.inf,
        }
    return totals


def one_cycle_vs_cosine(data, args):
    """Each schedule's peak from its own sweep (seed 0), then ``--seeds`` fresh seeds."""
    peaks = [float(r) for r in np.geomspace(1e-2, 3.0, args.peaks)]
    total = args.epochs * steps_per_epoch()
    makers = {
        "one_cycle": lambda peak: SGD(OneCycle(peak, total), momentum=OneCycleMomentum(total)),
        "cosine": lambda peak: keras.optimizers.SGD(CosineAnnealing(peak, total), momentum=0.9),
    }
    summary, runs = {}, {}
    for name, make in makers.items():
        swept, _ = sweep("digits_mlp", data, args, peaks, make)
        peak = min(peaks, key=lambda r: swept[repr(r)])
        runs[name] = [
            train("digits_mlp", make(peak), data, args.epochs, seed)[0]
            for seed in range(1, args.seeds + 1)
        ]
        summary[name] = {
            "peak_sweep": swept,
            "peak_learning_rate": peak,
            "mean": statistics.fmean(runs[name]),
            "std": statistics.stdev(runs[name]) if len(runs[name]) > 1 else 0.0,
            "values": runs[name],
        }
    wins = sum(a < b for a, b in zip(runs["one_cycle"], runs["cosine"], strict=True))
    summary.update(
        total_steps=total,
        one_cycle_wins=wins,
        seeds=args.seeds,
        winner="one_cycle"
        if summary["one_cycle"]["mean"] < summary["cosine"]["mean"]
        else "cosine",
    )
    return summary


def unused_knob_report(data, args, directory):
    (x, y), (xv, yv) = data

    def build_hp(hp):
        rate = hp.Float("learning_rate", 1e-4, 1e-1, sampling="log")
        dropout = hp.Float("dropout", 0.0, 0.5)
        hp.Float("unused_a", 0.0, 1.0)  # declared, recorded, never read by the model
        hp.Float("unused_b", 1e-3, 1.0, sampling="log")
        return build("digits_mlp", 0, keras.optimizers.Adam(rate), dropout=dropout)

    tune(build_hp, x, y, validation_data=(xv, yv), directory=directory, tuner="random",
         max_trials=args.trials, epochs=max(1, args.epochs // 3), batch_size=BATCH, seed=0,
         overwrite=True)  # fmt: skip
    report = sensitivity_report(directory, n_bootstrap=0 if args.quick else 10, plots=False)
    ranking = report.ranking
    return {
        "trials": args.trials,
        "ranking": ranking,
        "unused_ranked_last": None if ranking is None else set(ranking[-2:]) == {"unused_a", "unused_b"},
        "importance": None if report.importance is None else report.importance.point,
        "confounding_claims": [f"{c.knob} by {c.by}" for c in report.confounded],
        "robust_ranges": {k: list(v) if v is not None else None for k, v in report.robust_ranges.items()},
        "low_confidence": report.low_confidence,
        "next_steps": report.next_step_line,
    }  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    load_before = load_average()
    data = digits()
    figures = {"settings": {k: getattr(args, k) for k in ("quick", "epochs", "rates", "seeds",
                                                          "trials", "finder_steps", "finder_seeds", "peaks", "noise_seeds")}}  # fmt: skip
    started = time.perf_counter()
    if "finder" in args.parts:
        per_problem = {p: finder_vs_sweep(p, data, args) for p in args.problems}
        figures["lr_find_vs_sweep"] = per_problem
        figures["lr_find_rules"] = rule_totals(per_problem)
        print("lr_find vs sweep done", round(time.perf_counter() - started), "s", file=sys.stderr)
    if "race" in args.parts:
        figures["one_cycle_vs_cosine"] = one_cycle_vs_cosine(data, args)
        print(
            "one-cycle vs cosine done", round(time.perf_counter() - started), "s", file=sys.stderr
        )
    if "report" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            study = os.path.join(tmp, "study")
            figures["unused_knob_report"] = unused_knob_report(data, args, study)
    figures["seconds"] = time.perf_counter() - started
    figures["environment"] = environment(load_before, load_average())
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
