"""Cost constraints on a search: architectures over a limit are rejected before training.

``max_params``, ``max_flops`` and ``max_latency_ms`` are known (or cheap to
measure, on the untrained model) before an architecture is trained, so a
constrained search never trains an architecture over a limit. The decision is
pure (`violation`: the cost and the limits in, the reason out); the
`ConstrainedSearcher` wraps any ask/tell searcher: when the searcher
proposes an infeasible architecture it is recorded in ``rejected`` with its
reason and cost, *not* told to the searcher (it was never scored), and the
searcher is asked again. The searcher has marked it seen, so it is never
proposed twice; after ``max_rejections`` rejections in a row, or when the
searcher runs out of architectures before finding a feasible one, a
ValueError says the constraints leave (almost) nothing of the space.

keras-tuner's own oracles (``"bayesian"``, ``"hyperband"``) cannot be asked
again for one trial: their infeasible proposals are not trained either, are
recorded in ``rejected`` and get the worst score (accuracy 0), so the
oracle learns to avoid them; ``trials.csv`` shows them with status
``infeasible`` and the reason, without an objective.
"""

from nnkit import _validation as v

#: The costs a constraint or a Pareto front can use, and the argument of each limit.
LIMITS = {"params": "max_params", "flops": "max_flops", "latency_ms": "max_latency_ms"}
DEFAULT_MAX_REJECTIONS = 1000


def check_limits(*, max_params=None, max_flops=None, max_latency_ms=None):
    """``{cost: limit}`` of the limits that are set (positive ints; a positive number of ms)."""
    limits = {}
    if max_params is not None:
        limits["params"] = v.check_positive_int("max_params", max_params)
    if max_flops is not None:
        limits["flops"] = v.check_positive_int("max_flops", max_flops)
    if max_latency_ms is not None:
        limits["latency_ms"] = v.check_positive_number("max_latency_ms", max_latency_ms)
    return limits


def violation(cost, limits):
    """The reason ``cost`` breaks ``limits`` (``"params 120 > max_params=100"``), else ``None``.

    A pure decision: ``cost`` is a dict with (at least) the limited keys.
    """
    for name, limit in limits.items():
        if name not in cost or cost[name] is None:
            raise ValueError(
                f"`{LIMITS[name]}` is set but the cost of this architecture has no {name!r}. "
                f"Received: cost={cost!r}"
            )
        if cost[name] > limit:
            return f"{name} {cost[name]:g} > {LIMITS[name]}={limit:g}"
    return None


class ConstrainedSearcher:
    """An ask/tell searcher that never proposes an architecture over a cost limit.

    ``cost_fn(arch)`` returns the architecture's cost dict (``params``,
    ``flops``, ``latency_ms``, ...); it is called once per architecture
    (cached in ``costs``). Other attributes are the wrapped searcher's.
    """

    def __init__(self, searcher, limits, cost_fn, *, max_rejections=DEFAULT_MAX_REJECTIONS):
        self.searcher = searcher
        self.limits = dict(limits)
        self.cost_fn = cost_fn
        self.max_rejections = v.check_positive_int("max_rejections", max_rejections)
        self.rejected = []  # {"arch", "reason", "cost"}, in order
        self.costs = {}
        self.accepted = 0

    def __getattr__(self, name):
        if name == "searcher":  # not set yet (during unpickling, copying)
            raise AttributeError(name)
        return getattr(self.searcher, name)

    def cost(self, arch):
        """The cost dict of ``arch`` (measured once)."""
        key = self.searcher.space.key(arch)
        if key not in self.costs:
            self.costs[key] = dict(self.cost_fn(arch))
        return self.costs[key]

    def _nothing_feasible(self, why):
        limits = ", ".join(f"{LIMITS[name]}={limit:g}" for name, limit in self.limits.items())
        smallest = {
            name: min((r["cost"][name] for r in self.rejected), default=None)
            for name in self.limits
        }
        return ValueError(
            f"No architecture of the space is within {limits}: {why}. The smallest costs "
            f"among the {len(self.rejected)} rejected were {smallest}. Loosen the limits or "
            "add smaller options to the space."
        )

    def ask(self):
        for _ in range(self.max_rejections):
            proposal = self.searcher.ask()
            if proposal is None:
                if not self.accepted and self.rejected:
                    raise self._nothing_feasible("every architecture was rejected")
                return None
            arch, epochs = proposal
            cost = self.cost(arch)
            reason = violation(cost, self.limits)
            if reason is None:
                self.accepted += 1
                return proposal
            self.rejected.append({"arch": arch, "reason": reason, "cost": cost})
        raise self._nothing_feasible(f"{self.max_rejections} proposals in a row were rejected")

    def tell(self, arch, epochs, score, epochs_run=None):
        if epochs_run is None:
            return self.searcher.tell(arch, epochs, score)
        return self.searcher.tell(arch, epochs, score, epochs_run=epochs_run)
