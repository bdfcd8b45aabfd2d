"""Score every searcher of nnkit.search on nnkit's tabular benchmark, relative to random search.

Question (issue 28): how many evaluations does each searcher need to reach
within 0.1 percentage points of the space's best mean validation accuracy,
median over >= 100 seeded runs, relative to random search? Goal: the best of
regularized evolution / local search / ASHA at <= 1/2 of random search's
evaluations (and <= 1/3 in simulated wall time for the multi-fidelity ones).

Method: the table of ``bench/nas_table.py`` (``bench/data/nas_mnist1d.jsonl``:
per-epoch validation accuracy of every architecture of the Conv1D space, 3
seeds). Each run calls ``nnkit.search.simulate`` with a budget of as many full
trainings as the table has architectures (enough for random search to see
them all); a query returns one seed's accuracy at the asked epochs, drawn by
the run's generator. The figure per run is the full trainings spent (a run
of ``e`` of ``E`` epochs costs ``e/E``) until an architecture whose seed-mean
accuracy is within ``--tolerance`` (0.001 = 0.1 pp) of the best was trained
at the full budget, and the simulated seconds spent by then (the table's
seconds per epoch). A run stops once it got there (``simulate(stop_at=)``;
the figures are the same). Runs that never get there count as ``inf`` (the
median is then ``inf`` when more than half miss).

keras-tuner's Bayesian optimization is slow here: after its 30 random points
(3 per hyperparameter) each trial fits a Gaussian process and maximizes the
acquisition with 50 L-BFGS-B restarts on numerical gradients, each step a
scikit-learn ``predict`` (about 15 s per trial on a loaded 2-core machine; a
profile put half of it in scikit-learn's input checks, which the bench turns
off with ``sklearn.set_config(assume_finite=True,
skip_parameter_validation=True)``). So it gets fewer runs
(``--bayesian-runs``) and a budget capped at ``--bayesian-budget`` full
trainings (100); a run that misses within the cap counts as ``inf``, and its
median is exact only when more than half of its runs reached the target.
``--first-seed`` lets several processes share the runs of one searcher
(each prints one ``run`` line per run).

When the table is not complete, the figures are for the architectures it
holds (``"complete": false`` in the JSON) and are no evidence about the space.

Usage::

    python bench/nas_search.py                 # every searcher, 100 runs each
    python bench/nas_search.py --runs 5 --searchers random,evolution  # smoke test

The last line of stdout is one JSON object with every figure.
"""

import argparse
import json
import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.nas_table import DEFAULT_OUT, table_space  # noqa: E402
from nnkit.search import TabularBenchmark, evaluations_to_reach, simulate  # noqa: E402

ALL = ("random", "evolution", "local", "asha", "hyperband", "bayesian")


def _seconds_to_reach(history, target, full_epochs):
    seconds = 0.0
    for step in history:
        seconds += step["seconds"]
        if step["epochs"] >= full_epochs and step["mean"] >= target - 1e-12:
            return seconds
    return math.inf


def _summary(values):
    values = np.asarray(values, dtype="float64")
    finite = np.isfinite(values)
    quartiles = np.percentile(values, [25, 50, 75])  # inf where more than that share missed
    median = float(np.median(values))

    def plain(x):
        return None if not math.isfinite(x) else round(float(x), 2)

    return {
        "median": plain(median),
        "q25": plain(quartiles[0]),
        "q75": plain(quartiles[2]),
        "reached": round(float(finite.mean()), 3),
    }


def score(table, searcher, *, runs, budget, tolerance, first_seed=0):
    target = table.best_mean - tolerance
    evaluations, seconds = [], []
    for seed in range(first_seed, first_seed + runs):
        # stop_at: a run ends once it reached the target; the figures are the same.
        history = simulate(table, searcher, budget=budget, seed=seed, stop_at=target)
        evaluations.append(evaluations_to_reach(history, target, table.epochs))
        seconds.append(_seconds_to_reach(history, target, table.epochs))
        print("run", json.dumps([searcher, seed, evaluations[-1], seconds[-1]]), flush=True)
    return {
        "runs": runs,
        "budget": budget,
        "evaluations": _summary(evaluations),
        "seconds": _summary(seconds),
    }


def _ratio(value, baseline):
    if value is None or baseline is None or baseline == 0:
        return None
    return round(value / baseline, 3)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=str(DEFAULT_OUT))
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--bayesian-runs", type=int, default=10)
    parser.add_argument(
        "--bayesian-budget", type=float, default=100.0, help="its cap in full trainings"
    )
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--searchers", default=",".join(ALL))
    parser.add_argument("--tolerance", type=float, default=0.001)
    parser.add_argument("--budget", type=float, default=0.0, help="0: the table's size")
    args = parser.parse_args(argv)
    space = table_space()
    table = TabularBenchmark.from_file(args.table, space)
    budget = args.budget or float(len(table))
    start = time.perf_counter()
    results = {}
    for name in args.searchers.split(","):
        runs, cap = args.runs, budget
        if name == "bayesian":
            runs, cap = min(args.runs, args.bayesian_runs), min(budget, args.bayesian_budget)
            # scikit-learn's input checks are half of keras-tuner's acquisition time here.
            import sklearn

            sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
        results[name] = score(
            table, name, runs=runs, budget=cap, tolerance=args.tolerance, first_seed=args.first_seed
        )
        print(name, json.dumps(results[name]), flush=True)
    base = results.get("random")
    for result in results.values() if base is not None else ():
        result["evaluations_vs_random"] = _ratio(
            result["evaluations"]["median"], base["evaluations"]["median"]
        )
        result["seconds_vs_random"] = _ratio(result["seconds"]["median"], base["seconds"]["median"])
    figures = {
        "table": str(args.table),
        "architectures": len(table),
        "space_size": space.size,
        "complete": len(table) == space.size,
        "epochs": table.epochs,
        "best_mean": round(table.best_mean, 4),
        "tolerance": args.tolerance,
        "budget": budget,
        "searchers": results,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
