"""A tabular NAS benchmark: every architecture of a space, trained ahead, read by lookup.

The table is a JSON-lines file (``bench/nas_table.py`` writes nnkit's own, on
MNIST-1D): one line per architecture with its per-epoch validation accuracy
for each seed, its parameter count and its seconds per epoch. A searcher is
scored against it in seconds: the objective of an architecture at a budget of
``b`` epochs is the validation accuracy after epoch ``b`` of one of the
seeds (drawn by the run's generator, as a fresh training would give), and
the cost is ``b`` times its seconds per epoch (simulated wall time).
"""

import json
import pathlib

import numpy as np

from nnkit import _validation as v


def read_table_lines(path):
    """The rows of a table file; a torn (unparseable) last line is left out."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class TabularBenchmark:
    """A trained-ahead table of architectures, queried like a training run.

    Use it to score a searcher in seconds instead of hours (``search(...,
    objective=benchmark)``) and to check a searcher against random search
    over many seeded runs (``bench/nas_search.py``). Train-time noise is
    kept: a query returns one seed's curve, drawn by the caller's generator,
    while `best_mean` is the target every searcher is measured against.

    Formula: ``query(arch, b, rng) = acc[arch, s, b − 1]`` with ``s`` drawn
    uniformly from the seeds; ``cost = b · seconds_per_epoch[arch]``;
    ``mean(arch) = (1/S) Σ_s acc[arch, s, E − 1]`` at the full budget ``E``.

    Args:
        rows: The table's rows (dicts with ``arch``, ``val_accuracy``
            (seeds × epochs), ``params`` and ``seconds_per_epoch``), e.g.
            ``read_table_lines(path)``. Required.
        space: The `ArchitectureSpace` the table covers (for its keys).
            Required.

    Raises:
        ValueError: If ``rows`` is empty or a row has no curve.

    Example:
    >>> from nnkit.search import ArchitectureSpace, Choice, TabularBenchmark
    >>> space = ArchitectureSpace([Choice("w", [1, 2])], build=lambda a, s, c: None)
    >>> rows = [{"arch": {"w": 1}, "val_accuracy": [[0.5, 0.6]], "params": 10,
    ...          "seconds_per_epoch": 1.0},
    ...         {"arch": {"w": 2}, "val_accuracy": [[0.4, 0.7]], "params": 20,
    ...          "seconds_per_epoch": 2.0}]
    >>> table = TabularBenchmark(rows, space)
    >>> table.best_mean, table.epochs
    (0.7, 2)

    References:
        Ying et al., "NAS-Bench-101", ICML 2019; Dong & Yang, "NAS-Bench-201", ICLR 2020.
    """

    def __init__(self, rows, space):
        from nnkit.search.space import ArchitectureSpace

        rows = v.check_sequence("rows", rows, "a list of dicts (the table's rows)")
        if not rows:
            raise ValueError("`rows` is empty: the table has no architecture. Received: rows=[]")
        if not isinstance(space, ArchitectureSpace):
            raise TypeError(
                f"`space` must be a nnkit.search.ArchitectureSpace. Received: space={space!r}"
            )
        for row in rows:
            if not isinstance(row, dict) or not {"arch", "val_accuracy"} <= set(row):
                raise ValueError(
                    "Each of `rows` must be a dict with 'arch' and 'val_accuracy'. "
                    f"Received: rows={rows!r}"
                )
        self.space = space
        self._index = {}
        curves = []
        for i, row in enumerate(rows):
            try:
                curve = np.asarray(row["val_accuracy"], dtype="float64")
            except (TypeError, ValueError):
                curve = np.zeros((0,))
            if curve.ndim != 2 or curve.size == 0 or not np.all(np.isfinite(curve)):
                raise ValueError(
                    f"Row {i} of `rows` has no finite (seeds × epochs) curve. Received: rows={rows!r}"
                )
            curves.append(curve)
            self._index[space.key(row["arch"])] = i
        epochs = min(c.shape[1] for c in curves)
        seeds = min(c.shape[0] for c in curves)
        self.curves = np.stack([c[:seeds, :epochs] for c in curves])  # (archs, seeds, epochs)
        self.archs = [dict(row["arch"]) for row in rows]
        self.params = np.asarray([row.get("params", 0) for row in rows], dtype="int64")
        self.seconds_per_epoch = np.asarray(
            [row.get("seconds_per_epoch", 1.0) for row in rows], dtype="float64"
        )
        # Costs known before training: parameters, and FLOPs / latency when the rows have them.
        self.costs = [
            {name: row[name] for name in ("params", "flops", "latency_ms") if name in row}
            for row in rows
        ]
        self.means = self.curves[:, :, -1].mean(axis=1)
        self.best_mean = float(self.means.max())

    @classmethod
    def from_file(cls, path, space):
        """The table of a JSON-lines file written by ``bench/nas_table.py``."""
        return cls(read_table_lines(v.check_path("path", path)), space)

    @property
    def epochs(self):
        return int(self.curves.shape[2])

    def __len__(self):
        return len(self.archs)

    def index(self, arch):
        """The row of ``arch``; a KeyError names it when the table lacks it."""
        key = self.space.key(arch)
        if key not in self._index:
            raise KeyError(f"The table has no architecture {arch!r}")
        return self._index[key]

    def __contains__(self, arch):
        return self.space.key(arch) in self._index

    def mean(self, arch):
        """The seed-mean validation accuracy at the full budget (the searcher's target)."""
        return float(self.means[self.index(arch)])

    def cost(self, arch):
        """The row's costs of ``arch`` (``params``; ``flops``, ``latency_ms`` where recorded)."""
        return dict(self.costs[self.index(arch)])

    def query(self, arch, budget, rng):
        """``(accuracy, seconds)`` of one training of ``arch`` for ``budget`` epochs."""
        i = self.index(arch)
        budget = int(min(max(budget, 1), self.epochs))
        seed = int(rng.integers(self.curves.shape[1]))
        return float(self.curves[i, seed, budget - 1]), float(budget * self.seconds_per_epoch[i])
