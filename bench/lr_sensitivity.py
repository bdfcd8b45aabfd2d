"""lr_find against a learning-rate sweep, one-cycle against cosine, and the report on unused knobs.

Questions (issue 25):

1. ``lr_find``'s suggested rate against the best rate of a 15-point sweep on
   three problems (a digits MLP classifier, a digits autoencoder, a small
   CNN on the 8×8 digits): is the final validation loss at the suggestion
   within 10 % of the swept best's, and what does the test cost, in steps
   and seconds, relative to one sweep trial?
2. ``OneCycle`` (with ``OneCycleMomentum`` on ``nnkit.optimizers.SGD``)
   against ``CosineAnnealing`` (SGD, momentum 0.9) at the same budget on the
   digits MLP, peak rate from ``lr_find`` for both, over several seeds:
   which wins (final validation loss, mean ± standard deviation)?
3. ``sensitivity_report`` on a random-search sweep (``tune``) of the digits
   MLP with the learning rate, dropout and two knobs the model never reads:
   are the unused knobs ranked last, and is there no confounding claim?

Method: sklearn's digits (1,797 images, 64 features scaled to [0, 1]), a
fixed split (1,400 train, 397 validation), batch 64, Adam for question 1
(the common first choice; the sweep is 15 rates log-spaced over
``1e-4 … 1``), every run seeded. A sweep trial and the run at the
suggestion train ``--epochs`` epochs from the same initial weights; the
figure is the validation loss after the last epoch. ``lr_find`` runs with
its defaults (``learning_rates=(1e-7, 10)``, half an epoch of steps, at
least 10) and, as the figure, with ``steps=100`` over ``(1e-6, 10)``, and
its ``suggestion`` (valley). Seconds are wall-clock on a
shared CPU machine: the ratios, not the seconds, are the figures to read.

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
    parser.add_argument("--finder-steps", type=int, default=None, help="lr_find steps (100)")
    parser.add_argument("--parts", default="finder,race,report",
                        help="which questions to run (default all three)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    quick = args.quick
    args.epochs = args.epochs or (2 if quick else 10)
    args.rates = args.rates or (3 if quick else 15)
    args.seeds = args.seeds or (2 if quick else 5)
    args.trials = args.trials or (4 if quick else 60)
    args.finder_steps = args.finder_steps or (20 if quick else 100)
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


def finder_vs_sweep(problem, data, args):
    (x, y), _ = data
    model = build(problem, 0, keras.optimizers.Adam(1e-3))
    # lr_find's defaults: half an epoch of steps (11 here) over 1e-7 … 10.
    default = lr_find(model, x, targets(problem, x, y), batch_size=BATCH)
    start = time.perf_counter()
    result = lr_find(model, x, targets(problem, x, y), batch_size=BATCH, steps=args.finder_steps,
                     learning_rates=(1e-6, 10.0))  # fmt: skip
    finder_seconds = time.perf_counter() - start
    rates = [float(r) for r in np.geomspace(1e-4, 1.0, args.rates)]
    sweep, seconds = {}, []
    for rate in rates:
        loss, wall = train(problem, keras.optimizers.Adam(rate), data, args.epochs)
        sweep[repr(rate)] = loss
        seconds.append(wall)
    best_rate = min(rates, key=lambda r: sweep[repr(r)])
    suggestion = result.suggestion
    at_suggestion, _ = train(problem, keras.optimizers.Adam(suggestion), data, args.epochs)
    at_default = math.inf
    if default.suggestion is not None:
        at_default, _ = train(problem, keras.optimizers.Adam(default.suggestion), data, args.epochs)
    best = sweep[repr(best_rate)]
    trial_steps = args.epochs * steps_per_epoch()
    return {
        "suggestion": suggestion,
        "suggestion_rule": "valley",
        "suggestions": result.suggestions,
        "stop_reason": result.stop_reason,
        "best_swept_rate": best_rate,
        "best_swept_loss": best,
        "loss_at_suggestion": at_suggestion,
        "ratio_to_best": at_suggestion / best if best > 0 else None,
        "within_10pct": bool(at_suggestion <= (1 + WITHIN) * best),
        "decades_from_best": math.log10(suggestion / best_rate),
        "sweep": sweep,
        "defaults": {
            "steps": len(default.learning_rates),
            "suggestion": default.suggestion,
            "loss_at_suggestion": at_default,
            "within_10pct": bool(at_default <= (1 + WITHIN) * best),
        },
        "finder_steps": len(result.learning_rates),
        "trial_steps": trial_steps,
        "finder_steps_ratio": len(result.learning_rates) / trial_steps,
        "finder_seconds": finder_seconds,
        "trial_seconds_median": statistics.median(seconds),
        "finder_seconds_ratio": finder_seconds / statistics.median(seconds),
    }


def one_cycle_vs_cosine(data, args):
    (x, y), _ = data
    probe = build("digits_mlp", 0, keras.optimizers.SGD(0.01, momentum=0.9))
    peak = lr_find(probe, x, y, batch_size=BATCH, steps=args.finder_steps,
                   learning_rates=(1e-6, 10.0)).suggestion  # fmt: skip
    total = args.epochs * steps_per_epoch()
    runs = {"one_cycle": [], "cosine": []}
    for seed in range(args.seeds):
        one_cycle = SGD(OneCycle(peak, total), momentum=OneCycleMomentum(total))
        cosine = keras.optimizers.SGD(CosineAnnealing(peak, total), momentum=0.9)
        runs["one_cycle"].append(train("digits_mlp", one_cycle, data, args.epochs, seed)[0])
        runs["cosine"].append(train("digits_mlp", cosine, data, args.epochs, seed)[0])
    summary = {
        name: {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values,
        }
        for name, values in runs.items()
    }
    wins = sum(a < b for a, b in zip(runs["one_cycle"], runs["cosine"], strict=True))
    summary.update(
        peak_learning_rate=peak,
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
                                                          "trials", "finder_steps")}}  # fmt: skip
    started = time.perf_counter()
    if "finder" in args.parts:
        figures["lr_find_vs_sweep"] = {p: finder_vs_sweep(p, data, args) for p in args.problems}
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
