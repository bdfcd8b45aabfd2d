"""A hyperparameter sweep on scikit-learn's digits, recorded and explained by ``nnkit.tuning``.

The recipe runs ``nnkit.tuning.tune`` (a keras-tuner random search by
default) over an ``nnkit.models.mlp`` classifier, re-runs the best
configuration with several seeds (the noise floor), and writes the
sensitivity report. With the default flags it takes about ten minutes on two
CPU cores; ``--quick`` is a one-minute version (few, short trials: the
report will say "low confidence", which is the honest answer).

The swept knobs (``SearchSpace`` restricted to six, so that 90 trials are
enough for a ranking at ~15 trials per knob): ``learning_rate`` (log,
1e-4 … 1e-1), ``optimizer`` (``adam`` with a ``WeightDecay`` penalty or
``adamw`` with decoupled decay), ``weight_decay`` (log, 1e-6 … 1e-2),
``dropout`` (0 … 0.5), ``batch_size`` (16 … 128) and ``width`` (32 … 256);
the rest is fixed: two hidden blocks, ReLU, no normalization, cosine
schedule with a 5 % warmup. ``--full-space`` sweeps every knob of the
default ``SearchSpace`` instead (give it more ``--trials``). Every trial
trains with ``EarlyStopping`` (``--patience``); ``--median-stopping`` adds the
median stopping rule across trials (a third faster, but most trials are
then stopped after three epochs and compared by their early values).

The data: the 1,797 8×8 digit images, split once (``--split-seed``) into
train / validation / test (20 % test, then 15 % of the rest for
validation), standardized with training statistics. The objective is the
validation loss (cross-entropy with ``--label-smoothing``); the test split
is used once, to evaluate the best trial's model.

It writes a study directory (``--out``, default ``runs/tune_digits``)::

    study.json, trials.csv, trials/<id>/   the sweep (see docs/tuning.md)
    seeds.csv                              the best configuration, once per seed
    tuner/                                 keras-tuner's project
    report/report.md, report/*.png         the sensitivity report

Running it again with the same ``--out`` resumes the sweep (``--overwrite``
starts afresh); a larger ``--trials`` extends it. Under keras-tuner's
distributed mode (``KERASTUNER_*`` variables) run it unchanged in the chief
and every worker; only the chief re-runs the best configuration and writes
the report. The last line printed is a JSON summary.

Run ``python recipes/tune_digits.py --help`` for the options.
"""

import argparse
import csv
import json
import os
import pathlib
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from nnkit.tuning import (  # noqa: E402
    MLPHyperModel,
    SearchSpace,
    rerun_best,
    sensitivity_report,
    tune,
)

NUM_CLASSES = 10
#: (trials, epochs, seeds) of --quick.
QUICK = (8, 5, 3)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="tune_digits.py",
        description=(
            "Sweep the hyperparameters of an MLP on scikit-learn's digits with "
            "nnkit.tuning.tune, re-run the best configuration with several seeds, and "
            "write the sensitivity report into --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="runs/tune_digits", help="the study directory")
    parser.add_argument(
        "--tuner",
        choices=("random", "bayesian", "hyperband"),
        default="random",
        help="keras-tuner search algorithm (random search is the best input for the report)",
    )
    parser.add_argument("--trials", type=int, default=90, help="number of trials")
    parser.add_argument(
        "--epochs", type=int, default=20, help="epochs per trial (the schedule's length)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sweep")
    parser.add_argument(
        "--executions", type=int, default=1, help="trainings per trial (objective averaged)"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="re-runs of the best configuration with seeds 0..N-1 (the noise floor; 0: none)",
    )
    parser.add_argument(
        "--patience", type=int, default=5, help="EarlyStopping patience in every trial"
    )
    parser.add_argument(
        "--label-smoothing",
        type=float,
        default=0.1,
        help="label smoothing of the cross-entropy (keeps val_loss meaningful)",
    )
    parser.add_argument(
        "--full-space",
        action="store_true",
        help="sweep every knob of the default SearchSpace (needs more --trials)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a one-minute version: --trials {QUICK[0]} --epochs {QUICK[1]} "
        f"--seeds {QUICK[2]}, narrow widths",
    )
    parser.add_argument(
        "--median-stopping",
        action="store_true",
        help="stop trials behind the median of finished ones (faster, but the report then "
        "compares stopped trials by their early values)",
    )
    parser.add_argument("--overwrite", action="store_true", help="start afresh in --out")
    parser.add_argument(
        "--split-seed", type=int, default=0, help="seed of the train/validation/test split"
    )
    parser.add_argument(
        "--verbose", type=int, choices=(0, 1, 2), default=0, help="keras-tuner/fit verbosity"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.epochs, args.seeds = QUICK
    for name in ("trials", "epochs", "executions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.seeds != 0 and args.seeds < 3:
        parser.error(f"--seeds must be 0 or >= 3 (a spread needs three), got {args.seeds}")
    if args.patience < 0 or args.seed < 0:
        parser.error("--patience and --seed must be >= 0")
    if not 0 <= args.label_smoothing < 1:
        parser.error(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    return args


def load_data(split_seed, test_fraction=0.2, validation_fraction=0.15):
    """Digits split into train/validation/test, standardized with train statistics.

    The same split as ``recipes/digits_mlp.py``: stratified, one-hot labels.
    """
    x, y = load_digits(return_X_y=True)
    x = x.astype("float32")
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=split_seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=validation_fraction, stratify=y_rest, random_state=split_seed
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # constant pixels (the borders) stay at 0

    def prepare(features, labels):
        features = ((features - mean) / std).astype("float32")
        return features, keras.utils.to_categorical(labels, NUM_CLASSES).astype("float32")

    return {
        "train": prepare(x_train, y_train),
        "val": prepare(x_val, y_val),
        "test": prepare(x_test, y_test),
    }


def search_space(args):
    """The knobs the sweep varies (see the module docstring)."""
    space = SearchSpace()
    if args.full_space:
        return space
    space = space.restrict(
        optimizer=["adam", "adamw"],
        batch_size=(16, 128),
        width=(32, 64) if args.quick else (32, 256),
    )
    space = space.fixed(depth=2, schedule="cosine", activation="relu")
    return space.drop("warmup_fraction", "normalization", "residual")


def _is_worker():
    """A worker of keras-tuner's distributed mode (it trains; the chief reports)."""
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "")
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in tuner_id


def _trials(out):
    text = (pathlib.Path(out) / "trials.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def main(argv=None):
    """Run the recipe; return the summary printed on the last line."""
    start = time.perf_counter()
    args = parse_args(argv)
    data = load_data(args.split_seed)
    x_train, y_train = data["train"]
    hypermodel = MLPHyperModel(
        x_train.shape[1],
        NUM_CLASSES,
        space=search_space(args),
        output_activation="softmax",
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
        metrics=["accuracy"],
        epochs=args.epochs,
        train_size=len(x_train),
        patience=args.patience,
    )
    tuner = tune(
        hypermodel,
        x_train,
        y_train,
        validation_data=data["val"],
        directory=args.out,
        tuner=args.tuner,
        max_trials=args.trials,
        seed=args.seed,
        executions_per_trial=args.executions,
        median_stopping=args.median_stopping,
        overwrite=args.overwrite,
        verbose=args.verbose,
    )
    sweep_seconds = time.perf_counter() - start
    if _is_worker():
        summary = {
            "out": os.path.abspath(args.out),
            "role": "worker",
            "wall_seconds": round(sweep_seconds, 1),
        }
        print(json.dumps(summary))
        return summary

    with warnings.catch_warnings():
        # keras-tuner reloads the best epoch's weights into a fresh, unbuilt
        # optimizer; Keras warns that the optimizer's slots are not restored.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        best_model = tuner.get_best_models(1)[0]
    test_loss, test_accuracy = best_model.evaluate(*data["test"], verbose=0)

    if args.seeds:
        rerun_best(
            args.out,
            hypermodel,
            x_train,
            y_train,
            seeds=tuple(range(args.seeds)),
            validation_data=data["val"],
            verbose=0,
        )
    report = sensitivity_report(args.out)

    rows = _trials(args.out)
    statuses = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped", "failed")}
    scored = [r for r in rows if r["objective"]]
    best = min(scored, key=lambda r: float(r["objective"]))
    summary = {
        "out": os.path.abspath(args.out),
        "tuner": args.tuner,
        "trials": len(rows),
        "statuses": statuses,
        "best_trial": best["trial_id"],
        "best_val_loss": float(best["objective"]),
        "best_val_accuracy": float(best["metric:val_accuracy"]),
        "best_hyperparameters": dict(
            tuner.oracle.get_trial(best["trial_id"]).hyperparameters.values
        ),
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "noise": report.noise,
        "ranking": report.ranking,
        "low_confidence": bool(report.low_confidence),
        "report": str(report.path),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    print(
        f"{len(rows)} trials ({statuses['completed']} completed, {statuses['stopped']} stopped "
        f"by the median rule, {statuses['failed']} failed) in {summary['wall_seconds']:.0f} s"
    )
    print(
        f"best: trial {best['trial_id']}, val_loss {summary['best_val_loss']:.4f}, "
        f"val_accuracy {summary['best_val_accuracy']:.4f}; test accuracy {test_accuracy:.4f}"
    )
    if report.ranking:
        print(f"importance ranking: {', '.join(report.ranking)}")
    else:
        print("low confidence: " + " ".join(report.low_confidence))
    print(f"report: {report.path}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
