"""Does a one-shot supernet rank nnkit's tabular benchmark's architectures? Kendall τ, honestly.

Question (issue 28, "weight sharing is optional and experimental"): train one
`nnkit.search.OneShotSupernet` of the benchmark's space
(``conv1d_space(kernels=(5,))``, 312 architectures) by random single-path
sampling, score every architecture with its inherited weights, and compare
that ranking with the table's (``bench/data/nas_mnist1d.jsonl``).

Method: the table's data split (``bench/nas_table.py``: MNIST-1D, 3,000 train
/ 1,000 validation sequences), its optimizer (Adam 3e-3, batch 64). The
supernet trains ``--epochs`` epochs, one architecture drawn uniformly per
batch (46 batches an epoch), then each architecture's validation accuracy is
read with the shared weights (no retraining; the space has no BatchNorm, so
nothing to re-estimate). Figures:

* ``tau_full``: Kendall τ-b between the supernet's accuracies and the
  table's seed-mean validation accuracy after its last epoch (12);
  ``tau_short``: the same against the table at epoch ``--short`` (3);
* references from the table alone: ``tau_seeds`` (the mean τ between two
  seeds' 12-epoch accuracies: the ceiling that train-time noise allows) and
  ``tau_short_vs_full`` (how well epoch 3 ranks epoch 12) and ``tau_params``
  (how well the parameter count alone ranks epoch 12: "bigger is better", the
  proxy a supernet has to beat to be worth its training);
* ``top_pick_rank``: the table rank (1 = best seed-mean) of the supernet's
  best architecture, and its seed-mean accuracy against the table's best;
  ``top10_overlap``: architectures in both top-10s;
* ``train_seconds`` (and ``eval_seconds`` for the 312 scorings), and what
  the training seconds buy random search in the table: ``simulate(table,
  "random")`` runs (``--runs``) cut where their simulated seconds (the
  table's seconds per epoch, full 12-epoch trainings) pass
  ``train_seconds``; the median number of trainings, the median table rank
  and seed-mean accuracy of the pick (the best of its observed scores); and
  the same for the training plus the scoring seconds (the supernet's whole
  cost).

The seconds are this machine's, under whatever load it carries; the table's
seconds per epoch were measured when it was built (see ``bench/nas_table.py``).

Usage::

    nice -n 19 python bench/nas_supernet.py             # the full run (a few minutes)
    nice -n 19 python bench/nas_supernet.py --seed 1    # another supernet seed
    python bench/nas_supernet.py --epochs 1 --limit 8   # smoke test

The last line of stdout is one JSON object with every figure.
"""

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from bench._timing import set_threads  # noqa: E402
from bench.nas_table import DEFAULT_OUT, mnist1d_split, table_space  # noqa: E402
from nnkit.search import OneShotSupernet, TabularBenchmark, simulate  # noqa: E402


def tau(a, b):
    """Kendall's τ-b (ties counted) of two score lists; ``None`` when it is undefined."""
    value = kendalltau(a, b).statistic
    return None if not np.isfinite(value) else round(float(value), 4)


def table_ranks(means):
    """The rank of each architecture by seed-mean accuracy, 1 for the best (ties share the best)."""
    means = np.asarray(means)
    return np.array([1 + int(np.sum(means > m)) for m in means])


def random_search_at(table, seconds, *, runs, ranks):
    """What ``seconds`` of simulated full trainings buy random search, median over ``runs``."""
    trainings, pick_ranks, pick_means = [], [], []
    for seed in range(runs):
        history = simulate(table, "random", budget=float(len(table)), seed=seed)
        spent, seen = 0.0, []
        for step in history:
            spent += step["seconds"]
            if spent > seconds:
                break
            seen.append(step)
        trainings.append(len(seen))
        if seen:
            pick = max(seen, key=lambda step: step["score"])
            i = table.index(pick["arch"])
            pick_ranks.append(int(ranks[i]))
            pick_means.append(float(table.means[i]))
    return {
        "runs": runs,
        "trainings_median": float(np.median(trainings)),
        "pick_rank_median": float(np.median(pick_ranks)) if pick_ranks else None,
        "pick_mean_median": round(float(np.median(pick_means)), 4) if pick_means else None,
        "runs_with_a_pick": len(pick_ranks),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=str(DEFAULT_OUT))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--short", type=int, default=3, help="the table's short budget (epochs)")
    parser.add_argument("--runs", type=int, default=100, help="random-search runs")
    parser.add_argument("--limit", type=int, default=0, help="score only this many (smoke test)")
    parser.add_argument("--train-rows", type=int, default=0, help="0: all 3,000 (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    space = table_space()
    table = TabularBenchmark.from_file(args.table, space)
    (x, y), (x_val, y_val), _ = mnist1d_split()
    if args.train_rows:
        x, y = x[: args.train_rows], y[: args.train_rows]
    supernet = OneShotSupernet(space, x.shape[1:], 10, seed=args.seed)
    start = time.perf_counter()
    history = supernet.train(x, y, epochs=args.epochs, batch_size=64, seed=args.seed)
    train_seconds = time.perf_counter() - start
    archs = table.archs[: args.limit] if args.limit else table.archs
    start = time.perf_counter()
    scores = np.array([supernet.evaluate(arch, x_val, y_val) for arch in archs])
    eval_seconds = time.perf_counter() - start
    rows = np.array([table.index(arch) for arch in archs])
    full = table.means[rows]
    short_epoch = min(args.short, table.epochs)
    short = table.curves[rows, :, short_epoch - 1].mean(axis=1)
    ranks = table_ranks(table.means)
    seeds = table.curves.shape[1]
    seed_taus = [
        tau(table.curves[rows, a, -1], table.curves[rows, b, -1])
        for a in range(seeds)
        for b in range(a + 1, seeds)
    ]
    seed_taus = [t for t in seed_taus if t is not None]
    top = int(rows[int(np.argmax(scores))])
    k = min(10, len(rows))
    figures = {
        "architectures": len(rows),
        "epochs": args.epochs,
        "steps": args.epochs * (len(x) // 64),
        "final_loss": round(float(history.history["loss"][-1]), 4),
        "tau_full": tau(scores, full),
        "tau_short": tau(scores, short),
        "short_epoch": short_epoch,
        "tau_seeds": round(float(np.mean(seed_taus)), 4) if seed_taus else None,
        "tau_short_vs_full": tau(short, full),
        "tau_params": tau(table.params[rows], full),
        "supernet_accuracy": {
            "min": round(float(scores.min()), 4),
            "median": round(float(np.median(scores)), 4),
            "max": round(float(scores.max()), 4),
        },
        "top_pick": table.archs[top],
        "top_pick_rank": int(ranks[top]),
        "top_pick_mean": round(float(table.means[top]), 4),
        "table_best_mean": round(table.best_mean, 4),
        "top10_overlap": len(
            set(rows[np.argsort(-scores)[:k]].tolist()) & set(rows[np.argsort(-full)[:k]].tolist())
        ),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "random_search_same_seconds": random_search_at(
            table, train_seconds, runs=args.runs, ranks=ranks
        ),
        "random_search_train_and_eval_seconds": random_search_at(
            table, train_seconds + eval_seconds, runs=args.runs, ranks=ranks
        ),
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
