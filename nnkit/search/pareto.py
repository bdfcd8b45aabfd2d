"""Accuracy against cost: non-dominated sorting, a Pareto-rank evolution, and the front's plot.

Multi-objective search here means finding the architectures that no other
beats on both accuracy (higher) and a cost (lower: parameters, FLOPs or
latency). ``"pareto_evolution"`` is regularized evolution (Real et al. 2019)
whose tournament is decided by Pareto rank, as NSGA-II sorts its population
(Deb et al. 2002): every member of the population gets its non-dominated
rank (0 for the population's own front, 1 for the front of the rest, ...);
the tournament's winner is the member of lowest rank, ties going to the
higher accuracy; its one-choice mutation is the child and the oldest member
dies. So the population drifts along the whole front instead of towards the
most accurate corner. The other searchers optimize accuracy alone (random
search records both); the front of any search is read from its records
with `pareto_front` and drawn with `plot_pareto`.
"""

import pathlib

import numpy as np

from nnkit import _validation as v
from nnkit.search.cost import pareto_front
from nnkit.search.searchers import RegularizedEvolution


def pareto_ranks(accuracy, cost):
    """Non-dominated rank of each point (0: on the front; NSGA-II's sorting).

    Args:
        accuracy: One number per point (higher is better). Required.
        cost: One number per point (lower is better). Required.

    Returns:
        A list of ints, one per point.
    """
    accuracy = np.asarray(accuracy, dtype="float64")
    cost = np.asarray(cost, dtype="float64")
    ranks = np.full(len(accuracy), -1)
    remaining = list(range(len(accuracy)))
    rank = 0
    while remaining:
        front = [remaining[i] for i in pareto_front(accuracy[remaining], cost[remaining])]
        ranks[front] = rank
        remaining = [i for i in remaining if ranks[i] < 0]
        rank += 1
    return ranks.tolist()


class ParetoEvolution(RegularizedEvolution):
    """Regularized evolution whose tournament is won by the lowest Pareto rank (accuracy, cost)."""

    def __init__(
        self, space, *, seed=0, max_epochs=1, population=20, tournament=5, cost_fn, cost="params"
    ):
        super().__init__(
            space, seed=seed, max_epochs=max_epochs, population=population, tournament=tournament
        )
        if not callable(cost_fn):
            raise TypeError(f"`cost_fn` must be callable. Received: cost_fn={cost_fn!r}")
        self.cost_fn = cost_fn
        self.cost = cost

    def cost_of(self, arch):
        value = self.cost_fn(arch).get(self.cost)
        if value is None:
            raise ValueError(
                f"The cost of {arch!r} has no {self.cost!r}. Received: cost={self.cost!r}"
            )
        return float(value)

    def select_parent(self, picks):
        accuracy = [score for _, score in self.population]
        costs = [self.cost_of(arch) for arch, _ in self.population]
        # A member the table lacks scores -inf at infinite cost: the worst rank.
        accuracy = np.nan_to_num(accuracy, neginf=-1e300).tolist()
        ranks = pareto_ranks(accuracy, np.nan_to_num(costs, posinf=1e300))
        best = min(picks, key=lambda i: (ranks[int(i)], -accuracy[int(i)]))
        return self.population[int(best)][0]


def plot_pareto(accuracy, cost, path, *, cost_name="params", labels=None, title=None):
    """Draw every architecture's accuracy against its cost, the Pareto front joined; save it.

    Args:
        accuracy: One number per architecture (higher is better). Required.
        cost: One number per architecture (lower is better). Required.
        path: Where to write the figure (PNG, or any suffix matplotlib knows).
            Required.
        cost_name: The cost's axis label (``"params"``, ``"flops"``,
            ``"latency_ms"`` or your own). Defaults to ``"params"``.
        labels: One group name per architecture (e.g. the searcher), drawn
            in its own colour. Defaults to ``None``.
        title: The figure's title. Defaults to ``None``.

    Returns:
        The front's indices in order of increasing cost (`pareto_front`).

    Raises:
        ValueError: If the lists differ in length or hold non-finite values.

    Example:
    >>> import tempfile, pathlib
    >>> from nnkit.search import plot_pareto
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "front.png"
    >>> plot_pareto([0.9, 0.8, 0.85, 0.7], [100, 10, 50, 20], path)
    [1, 2, 0]
    >>> path.exists()
    True
    """
    front = pareto_front(accuracy, cost)
    path = pathlib.Path(v.check_path("path", path))
    cost_name = v.check_str("cost_name", cost_name)
    title = None if title is None else v.check_str("title", title)
    accuracy = np.asarray(accuracy, dtype="float64")
    cost = np.asarray(cost, dtype="float64")
    if labels is not None:
        labels = [str(label) for label in v.check_sequence("labels", labels, "a list of names")]
        if len(labels) != len(accuracy):
            raise ValueError(
                f"`labels` must have one name per architecture ({len(accuracy)}). "
                f"Received: {len(labels)} labels"
            )
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.5))
    axes = figure.add_subplot()
    groups = [None] if labels is None else list(dict.fromkeys(labels))
    for group in groups:
        mine = (
            np.arange(len(accuracy))
            if group is None
            else np.flatnonzero(np.asarray(labels) == group)
        )
        axes.scatter(cost[mine], accuracy[mine], s=12, alpha=0.6, label=group)
    axes.step(cost[front], accuracy[front], "k-", where="post", lw=1, label="Pareto front")
    axes.scatter(cost[front], accuracy[front], s=24, c="k", zorder=3)
    if len(cost) and cost.min() > 0 and cost.max() / cost.min() > 100:
        axes.set_xscale("log")
    axes.set_xlabel(cost_name)
    axes.set_ylabel("accuracy")
    if title is not None:
        axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return front
