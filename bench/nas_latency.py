"""Measure the inference latency of every architecture of nnkit's MNIST-1D table, and record it.

Question (issue 28, cost as an objective): the table of ``bench/nas_table.py``
has each architecture's parameters; what is its measured inference latency,
so that searchers can be scored on the accuracy–latency front
(``python bench/nas_pareto.py --cost latency_ms``) as on parameters and FLOPs?

Method: each row's model is built as the table built it
(``table_space().build(arch, (40,), 10)``; untrained: the weights do not
change the time) and timed with ``nnkit.search.measure_latency`` at its
defaults: the median of 20 ``predict_on_batch`` calls on a batch of 32 after
3 untimed ones, with the interquartile range as its spread. One thread
(``--threads``), so the figures compare architectures rather than the
machine's other work. ``latency_ms`` and ``latency_iqr_ms`` are written into
the row; the other fields stay as they are. Rows that already have
``latency_ms`` are skipped, and the table is rewritten atomically after
every ``--every`` rows, so a killed run loses at most those and a rerun goes
on where it stopped. Latency is a property of this machine, its load and
the backend, not of the architecture: the JSON records the load average
before and after, the backend and the versions.

Usage::

    python bench/nas_latency.py                 # every row without a latency
    python bench/nas_latency.py --limit 5       # at most 5 new rows

The last line of stdout is one JSON object with every figure.
"""

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from bench._timing import environment, load_average, set_threads  # noqa: E402
from bench.nas_table import DEFAULT_OUT, table_space  # noqa: E402
from nnkit._io import atomic_write  # noqa: E402
from nnkit.search import measure_latency  # noqa: E402
from nnkit.search.benchmark import read_table_lines  # noqa: E402


def write_rows(path, rows):
    """Rewrite the table atomically, one JSON object a line, as ``nas_table.py`` writes it."""
    atomic_write(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=str(DEFAULT_OUT))
    parser.add_argument("--limit", type=int, default=0, help="stop after this many new rows")
    parser.add_argument("--every", type=int, default=20, help="rows between two rewrites")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per model")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    space = table_space()
    rows = read_table_lines(args.table)
    load_before = load_average()
    started = time.perf_counter()
    new = 0
    for row in rows:
        if "latency_ms" in row:
            continue
        if args.limit and new >= args.limit:
            break
        model = space.build(row["arch"], (40,), 10)
        timing = measure_latency(model, batch_size=32, repeats=args.repeats)
        row["latency_ms"] = round(timing["median_ms"], 4)
        row["latency_iqr_ms"] = round(timing["iqr_ms"], 4)
        keras.backend.clear_session()
        new += 1
        if new % args.every == 0:
            write_rows(args.table, rows)
    if new:
        write_rows(args.table, rows)
    latencies = np.asarray([row["latency_ms"] for row in rows if "latency_ms" in row])
    figures = {
        "table": str(args.table),
        "rows": len(rows),
        "measured_now": new,
        "with_latency": int(latencies.size),
        "seconds": round(time.perf_counter() - started, 1),
        "threads": args.threads,
        "batch_size": 32,
        "repeats": args.repeats,
        "environment": environment(load_before, load_average()),
    }
    if latencies.size:
        figures["latency_ms"] = {
            "min": round(float(latencies.min()), 4),
            "median": round(float(np.median(latencies)), 4),
            "max": round(float(latencies.max()), 4),
        }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
