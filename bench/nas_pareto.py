"""The accuracy–cost Pareto front on nnkit's tabular benchmark, and how well each searcher finds it.

Question (issue 28, cost as an objective): how much of the table's
accuracy–parameters Pareto front does a search of a fixed budget recover, and
does the Pareto-rank evolution (``"pareto_evolution"``) recover more of it
than evolution on accuracy alone or random search?

Method: the table of ``bench/nas_table.py`` (``bench/data/nas_mnist1d.jsonl``,
312 Conv1D architectures on MNIST-1D, seed-mean validation accuracy after 12
epochs). The cost is the parameter count (``--cost params``, from the table)
or the analytic FLOPs per example (``--cost flops``: each model is built once,
``count_flops``), or the measured inference latency of a batch of 32
(``--cost latency_ms``, from the table: ``bench/nas_latency.py`` records it).
Each run is ``nnkit.search.simulate`` with ``--budget`` full
trainings; the figure per run is the hypervolume of the front of the
architectures it evaluated (their seed-mean accuracies), on the plane
(log10 cost, accuracy) with the reference point (log10 of the table's largest
cost + 0.1, accuracy 0), divided by the hypervolume of the whole table's
front (1 = the whole front found). Median and quartiles over ``--runs`` seeded
runs per searcher. It also draws the table's front and the architectures one
``pareto_evolution`` run evaluated (``--figure``).

Usage::

    python bench/nas_pareto.py --figure docs/img/nas_pareto.png
    python bench/nas_pareto.py --runs 5 --searchers random,pareto_evolution  # smoke test

The last line of stdout is one JSON object with every figure.
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.nas_table import DEFAULT_OUT, table_space  # noqa: E402
from nnkit.search import (  # noqa: E402
    TabularBenchmark,
    count_flops,
    pareto_front,
    plot_pareto,
    simulate,
)
from nnkit.search.benchmark import read_table_lines  # noqa: E402

SEARCHERS = ("random", "evolution", "local", "pareto_evolution")


def hypervolume(accuracy, log_cost, reference_cost):
    """Area dominated by the front of the points, above accuracy 0 and left of the reference."""
    front = pareto_front(accuracy, log_cost)
    area = 0.0
    for k, i in enumerate(front):  # increasing cost, increasing accuracy
        right = log_cost[front[k + 1]] if k + 1 < len(front) else reference_cost
        area += (right - log_cost[i]) * max(accuracy[i], 0.0)
    return area


def with_flops(rows, space):
    import keras

    for row in rows:
        model = space.build(row["arch"], (40,), 10)
        row["flops"] = count_flops(model)
        keras.backend.clear_session()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=str(DEFAULT_OUT))
    parser.add_argument("--cost", default="params", choices=("params", "flops", "latency_ms"))
    parser.add_argument("--budget", type=float, default=50)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--searchers", default=",".join(SEARCHERS))
    parser.add_argument("--figure", default=None)
    args = parser.parse_args(argv)
    space = table_space()
    rows = read_table_lines(args.table)
    if args.cost == "flops":
        rows = with_flops(rows, space)
    if args.cost == "latency_ms" and not all("latency_ms" in row for row in rows):
        raise ValueError(
            "--cost latency_ms needs a latency in every row of the table; measure them with "
            f"`python bench/nas_latency.py --table {args.table}`. Received: --table {args.table}"
        )
    table = TabularBenchmark(rows, space)
    cost = np.asarray([c[args.cost] for c in table.costs], dtype="float64")
    log_cost = np.log10(cost)
    reference = float(log_cost.max() + 0.1)
    whole = hypervolume(table.means, log_cost, reference)
    front = pareto_front(table.means, cost)
    figures = {
        "architectures": len(table),
        "cost": args.cost,
        "budget": args.budget,
        "runs": args.runs,
        "table_front": [
            {
                "arch": table.archs[i],
                "accuracy": round(float(table.means[i]), 4),
                args.cost: round(float(cost[i]), 4) if args.cost == "latency_ms" else int(cost[i]),
            }
            for i in front
        ],  # fmt: skip
        "searchers": {},
    }
    index = {space.key(arch): i for i, arch in enumerate(table.archs)}
    for name in args.searchers.split(","):
        shares = []
        for seed in range(args.runs):
            history = simulate(table, name, budget=args.budget, seed=seed, cost=args.cost)
            rows_seen = sorted({index[space.key(step["arch"])] for step in history})
            volume = hypervolume(table.means[rows_seen], log_cost[rows_seen], reference)
            shares.append(volume / whole)
        q25, median, q75 = np.percentile(shares, [25, 50, 75])
        figures["searchers"][name] = {
            "hypervolume_share_median": round(float(median), 4),
            "hypervolume_share_q25": round(float(q25), 4),
            "hypervolume_share_q75": round(float(q75), 4),
        }
        print(name, json.dumps(figures["searchers"][name]), flush=True)
    if args.figure:
        history = simulate(table, "pareto_evolution", budget=args.budget, seed=0, cost=args.cost)
        seen = {space.key(step["arch"]) for step in history}
        labels = [
            "evaluated by pareto_evolution (seed 0)" if space.key(a) in seen else "not evaluated"
            for a in table.archs
        ]
        plot_pareto(
            table.means,
            cost,
            args.figure,
            cost_name=f"{args.cost} (log scale)" if args.cost else args.cost,
            labels=labels,
            title=f"MNIST-1D Conv1D table: accuracy vs {args.cost}",
        )
        figures["figure"] = args.figure
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
