"""Searchers over an `ArchitectureSpace`, one ask/tell shape, chosen by name.

Every searcher proposes ``(architecture, epochs)`` with ``ask()`` (``None``
when it has nothing left) and learns the score with ``tell(arch, epochs,
score)`` (higher is better). The same objects drive a tabular benchmark
(``simulate``) and real training through keras-tuner (``SearcherOracle``).
An architecture is never proposed twice at the same budget.

- ``"random"``: scrambled Sobol points (``scipy.stats.qmc``) mapped to the
  choices, one coordinate per choice (quasi-random search).
- ``"evolution"``: regularized evolution (Real et al. 2019): a population of
  the ``population`` most recent architectures; a child is one mutation (one
  choice changed) of the best of ``tournament`` members drawn at random; the
  oldest member dies.
- ``"local"``: local search (White et al. 2021): evaluate every one-choice
  neighbour of the current architecture, move to the best if it improves,
  else restart from a random architecture.
- ``"asha"``: asynchronous successive halving (Li et al. 2020) on epochs:
  rungs ``max_epochs / eta^k``; an architecture in the top ``1/eta`` of its
  rung is promoted (retrained for the next rung's epochs), else a new one
  starts on the lowest rung. Asynchronous: ``ask`` promotes as soon as a
  rung's *completed* results allow it (never waits for a full rung), so
  several workers can ask before earlier trials are told. A trial stopped
  early (``tell(..., epochs_run=e)``, e.g. by ``MedianStopping``) is
  recorded at the highest rung it reached (``rungs[k] <= e``), not promoted
  from there again, and kept in ``stopped`` when it reached none.

- ``"pareto_evolution"``: regularized evolution whose tournament is won by
  the lowest Pareto rank of (accuracy, ``cost``) in the population
  (NSGA-II's non-dominated sorting; ``nnkit.search.pareto``).

keras-tuner's ``"bayesian"`` and ``"hyperband"`` are the other two names:
they run through keras-tuner's own oracles (``simulate``,
``search_architectures``). Cost limits (``max_params``, ``max_flops``,
``max_latency_ms``) wrap any searcher in a ``ConstrainedSearcher``
(``nnkit.search.constraints``).
"""

import abc

import numpy as np

from nnkit import _validation as v
from nnkit.search.space import ArchitectureSpace

SEARCHERS = ("random", "evolution", "local", "asha", "pareto_evolution")
_DRAW_BLOCK = 64  # Sobol points come in powers of two (scipy warns otherwise)
_TRIES = 200


class Searcher(abc.ABC):
    """Base: seeded generator, the architectures seen, full-budget proposals."""

    def __init__(self, space, *, seed=0, max_epochs=1):
        self.space = space
        self.seed = v.check_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
        self.max_epochs = v.check_positive_int("max_epochs", max_epochs)
        self.rng = np.random.default_rng(self.seed)
        self.seen = set()
        self._sobol = None
        self._points = []

    # -- fresh architectures ---------------------------------------------------------

    def _sobol_point(self):
        if not self._points:
            from scipy.stats import qmc

            if self._sobol is None:
                self._sobol = qmc.Sobol(len(self.space.choices), scramble=True, seed=self.seed)
            self._points = list(self._sobol.random(_DRAW_BLOCK))
        return self._points.pop(0)

    def fresh(self, quasi=False):
        """An architecture not seen yet (Sobol or uniform), or ``None`` when none is left."""
        for _ in range(_TRIES):
            arch = (
                self.space.from_unit(self._sobol_point()) if quasi else self.space.random(self.rng)
            )
            if self.space.key(arch) not in self.seen:
                return arch
        unseen = [a for a in self.space.architectures() if self.space.key(a) not in self.seen]
        return unseen[int(self.rng.integers(len(unseen)))] if unseen else None

    def propose(self, arch, epochs=None):
        """Mark ``arch`` seen and return ``(arch, epochs)`` (``None`` for no architecture)."""
        if arch is None:
            return None
        self.seen.add(self.space.key(arch))
        return arch, self.max_epochs if epochs is None else epochs

    # -- the interface ----------------------------------------------------------------------

    @abc.abstractmethod
    def ask(self):
        """The next ``(arch, epochs)`` to train, or ``None`` when the space is exhausted."""

    def tell(self, arch, epochs, score, epochs_run=None):
        """Learn ``score`` (higher is better) of ``arch`` trained for ``epochs``.

        ``epochs_run`` (the epochs a trial stopped early got, ``None`` when it
        ran all ``epochs``) matters to ASHA only. The base learns nothing
        (random search); the other searchers override it.
        """
        return None

    def budget(self, epochs, epochs_run=None):
        """The epochs at which a result of ``arch`` trained for ``epochs`` counts.

        Results are compared only at the same budget: the best architecture
        is the best at the highest budget reached (``SearcherOracle``). Here
        the budget asked, ``epochs`` (every proposal of a full-budget searcher
        has the same); ASHA counts a trial stopped early at the rung it reached.
        """
        return int(epochs)


class RandomSearch(Searcher):
    """Quasi-random search: scrambled Sobol points, one coordinate per choice."""

    def ask(self):
        return self.propose(self.fresh(quasi=True))


class RegularizedEvolution(Searcher):
    """Aging evolution: tournament of ``tournament`` from the ``population`` youngest, mutate one."""

    def __init__(self, space, *, seed=0, max_epochs=1, population=20, tournament=5):
        super().__init__(space, seed=seed, max_epochs=max_epochs)
        self.population_size = v.check_int("population", population, minimum=2)
        self.tournament = v.check_int(
            "tournament", tournament, minimum=1, maximum=self.population_size
        )
        self.population = []  # (arch, score), oldest first

    def ask(self):
        if len(self.population) < self.population_size:
            return self.propose(self.fresh())
        picks = self.rng.choice(len(self.population), size=self.tournament, replace=False)
        parent = self.select_parent(picks)
        for _ in range(_TRIES):
            child = self.space.mutate(parent, self.rng)
            if self.space.key(child) not in self.seen:
                return self.propose(child)
        return self.propose(self.fresh())

    def select_parent(self, picks):
        """The tournament's winner among the population indices ``picks`` (the best score)."""
        return max((self.population[int(i)] for i in picks), key=lambda item: item[1])[0]

    def tell(self, arch, epochs, score, epochs_run=None):
        self.population.append((arch, float(score)))
        if len(self.population) > self.population_size:
            self.population.pop(0)


class LocalSearch(Searcher):
    """Best-improvement local search over one-choice neighbours, restarting at a local optimum."""

    def __init__(self, space, *, seed=0, max_epochs=1):
        super().__init__(space, seed=seed, max_epochs=max_epochs)
        self.scores = {}
        self.current = None  # (arch, score)
        self.queue = []

    def _start_neighbourhood(self):
        options = self.space.neighbours(self.current[0])
        order = self.rng.permutation(len(options))
        self.queue = [options[int(i)] for i in order]

    def _step(self):
        """Move to the best neighbour if it improves, else restart; True if it moved."""
        arch, score = self.current
        best = max(
            (
                (n, self.scores[self.space.key(n)])
                for n in self.space.neighbours(arch)
                if self.space.key(n) in self.scores
            ),
            key=lambda item: item[1],
            default=None,
        )
        if best is not None and best[1] > score:
            self.current = best
            self._start_neighbourhood()
            return True
        self.current = None
        return False

    def ask(self):
        while True:
            if self.current is None:
                return self.propose(self.fresh())
            while self.queue:
                arch = self.queue.pop(0)
                if self.space.key(arch) not in self.seen:
                    return self.propose(arch)
            self._step()

    def tell(self, arch, epochs, score, epochs_run=None):
        self.scores[self.space.key(arch)] = float(score)
        if self.current is None:
            self.current = (arch, float(score))
            self._start_neighbourhood()


class SuccessiveHalving(Searcher):
    """ASHA: promote the top ``1/eta`` of a rung to ``eta`` times the epochs, else start anew."""

    def __init__(self, space, *, seed=0, max_epochs=1, min_epochs=1, eta=3):
        super().__init__(space, seed=seed, max_epochs=max_epochs)
        self.eta = v.check_int("eta", eta, minimum=2)
        min_epochs = v.check_int("min_epochs", min_epochs, minimum=1, maximum=self.max_epochs)
        rungs = [self.max_epochs]
        while rungs[-1] // self.eta >= min_epochs:
            rungs.append(rungs[-1] // self.eta)
        self.rungs = rungs[::-1]  # epochs per rung, lowest first
        self.results = [[] for _ in self.rungs]  # (score, key, arch) per rung
        self.promoted = [set() for _ in self.rungs]
        self.stopped = []  # (score, key, arch) of trials stopped below the lowest rung

    def ask(self):
        for k in range(len(self.rungs) - 2, -1, -1):
            done = sorted(self.results[k], key=lambda item: -item[0])
            for _, key, arch in done[: len(done) // self.eta]:
                if key not in self.promoted[k]:
                    self.promoted[k].add(key)
                    return arch, self.rungs[k + 1]
        return self.propose(self.fresh(quasi=True), self.rungs[0])

    def rung_reached(self, epochs_run):
        """Index of the highest rung with ``rungs[k] <= epochs_run``, ``None`` below the lowest."""
        reached = [k for k, rung in enumerate(self.rungs) if rung <= epochs_run]
        return reached[-1] if reached else None

    def budget(self, epochs, epochs_run=None):
        """The epochs of the rung the result counts at (see `tell`); ``0`` below the lowest."""
        k = self.rungs.index(epochs) if epochs in self.rungs else 0
        if epochs_run is not None and epochs_run < epochs:
            k = self.rung_reached(epochs_run)
        return 0 if k is None else self.rungs[k]

    def tell(self, arch, epochs, score, epochs_run=None):
        """Record ``score`` at ``epochs``' rung, or at the rung reached when stopped early.

        ``epochs_run < epochs`` (a trial stopped early, e.g. by ``MedianStopping``):
        the result counts at the highest rung ``k`` with ``rungs[k] <= epochs_run``
        unless ``arch`` already has a result there (a promoted trial keeps the
        result of the rung it was promoted from); below the lowest rung it goes
        to ``stopped`` and is never promoted.
        """
        key = self.space.key(arch)
        k = self.rungs.index(epochs) if epochs in self.rungs else 0
        if epochs_run is not None and epochs_run < epochs:
            k = self.rung_reached(epochs_run)
            if k is None:
                self.stopped.append((float(score), key, arch))
                return
            if any(item[1] == key for item in self.results[k]):
                return
            self.promoted[k].add(key)  # stopped: it does not climb from here
        elif k > 0:
            self.promoted[k - 1].add(key)  # it got here by promotion (also when rebuilt)
        self.results[k].append((float(score), key, arch))


_CLASSES = {
    "random": RandomSearch,
    "evolution": RegularizedEvolution,
    "local": LocalSearch,
    "asha": SuccessiveHalving,
}


def make_searcher(
    searcher,
    space,
    *,
    seed=0,
    max_epochs=1,
    cost_fn=None,
    cost="params",
    max_params=None,
    max_flops=None,
    max_latency_ms=None,
    **options,
):
    """The ask/tell searcher called ``name`` over ``space``, seeded.

    Args:
        searcher: ``"random"`` (Sobol), ``"evolution"``, ``"local"``,
            ``"asha"`` or ``"pareto_evolution"``. Required.
        space: An `ArchitectureSpace`. Required.
        seed: The searcher's seed. Defaults to ``0``.
        max_epochs: The full budget in epochs (ASHA's top rung). Defaults to ``1``.
        cost_fn: ``cost_fn(arch) -> {"params": ..., "flops": ...,
            "latency_ms": ...}``, called once per architecture (cached);
            needed by the limits and by ``"pareto_evolution"``. Defaults to
            ``None``.
        cost: The cost ``"pareto_evolution"`` trades accuracy against:
            ``"params"``, ``"flops"`` or ``"latency_ms"``. Defaults to ``"params"``.
        max_params: Reject architectures with more parameters (never
            proposed; listed in the searcher's ``rejected``). Defaults to ``None``.
        max_flops: Reject architectures with more FLOPs. Defaults to ``None``.
        max_latency_ms: Reject architectures slower than this. Defaults to ``None``.
        **options: ``population``/``tournament`` (evolution, defaults 20 and
            5), ``min_epochs``/``eta`` (ASHA, defaults 1 and 3).

    Returns:
        An object with ``ask() -> (arch, epochs) | None`` and
        ``tell(arch, epochs, score)`` (higher scores are better).

    Example:
    >>> from nnkit.search import ArchitectureSpace, Choice, make_searcher
    >>> space = ArchitectureSpace([Choice("w", [1, 2, 3])], build=lambda a, s, c: None)
    >>> searcher = make_searcher("asha", space, seed=0, max_epochs=9)
    >>> arch, epochs = searcher.ask()
    >>> epochs  # ASHA starts on its lowest rung, 9 / 3**2
    1
    """
    if not isinstance(space, ArchitectureSpace):
        raise TypeError(
            f"`space` must be a nnkit.search.ArchitectureSpace. Received: space={space!r}"
        )
    from nnkit.search import constraints

    name = v.check_one_of("searcher", searcher, SEARCHERS)
    cost = v.check_one_of("cost", cost, tuple(constraints.LIMITS))
    limits = constraints.check_limits(
        max_params=max_params, max_flops=max_flops, max_latency_ms=max_latency_ms
    )
    if cost_fn is not None and not callable(cost_fn):
        raise TypeError(f"`cost_fn` must be callable or None. Received: cost_fn={cost_fn!r}")
    if cost_fn is None and (limits or name == "pareto_evolution"):
        raise ValueError(
            "Cost limits and searcher='pareto_evolution' need `cost_fn` (arch -> cost dict); "
            "simulate() and search_architectures() pass their own. Received: cost_fn=None"
        )
    if cost_fn is not None:
        cost_fn = _cached(cost_fn, space)
    if name == "pareto_evolution":
        from nnkit.search.pareto import ParetoEvolution

        engine = ParetoEvolution(
            space, seed=seed, max_epochs=max_epochs, cost_fn=cost_fn, cost=cost, **options
        )
    else:
        engine = _CLASSES[name](space, seed=seed, max_epochs=max_epochs, **options)
    if limits:
        engine = constraints.ConstrainedSearcher(engine, limits, cost_fn)
    return engine


def _cached(cost_fn, space):
    """``cost_fn`` called once per architecture."""
    costs = {}

    def cached(arch):
        key = space.key(arch)
        if key not in costs:
            costs[key] = dict(cost_fn(arch))
        return costs[key]

    return cached
