"""Run a searcher against a `TabularBenchmark`: the search loop without training.

``simulate`` spends a budget counted in full trainings (a run of ``e`` of
the table's ``E`` epochs costs ``e / E``), so the multi-fidelity searchers
and the full-budget ones get the same budget. keras-tuner's Bayesian
optimization and Hyperband run through their own oracles, driven by a
keras-tuner ``Tuner`` whose ``run_trial`` reads the table. An architecture
that the table lacks (a table still being built) costs nothing, scores
``-inf`` and is not recorded.
"""

import tempfile

import keras_tuner
import numpy as np

from nnkit import _validation as v
from nnkit.search.searchers import SEARCHERS, make_searcher

KERAS_TUNER_SEARCHERS = ("bayesian", "hyperband")
_LIMIT_ARGUMENTS = ("max_params", "max_flops", "max_latency_ms")
# The cost of an architecture a table still being built lacks: worse than any.
_UNKNOWN_COST = {"params": np.inf, "flops": np.inf, "latency_ms": np.inf}
ALL_SEARCHERS = SEARCHERS + KERAS_TUNER_SEARCHERS


class _History(list):
    """The evaluations in order; ``rejected`` lists the architectures over a cost limit."""

    rejected = ()


class _Record:
    def __init__(self, benchmark, budget, rng, limits=None, stop_at=None):
        self.benchmark = benchmark
        self.budget = budget
        self.rng = rng
        self.stop_at = stop_at
        self.reached = False
        self.history = _History()
        self.history.rejected = []
        self.limits = limits or {}
        self.spent = 0.0

    def reject(self, arch):
        """The reason ``arch`` is over a limit (recorded), else ``None``."""
        from nnkit.search.constraints import violation

        cost = self.benchmark.cost(arch)
        reason = violation(cost, self.limits) if self.limits else None
        if reason is not None:
            self.history.rejected.append({"arch": arch, "reason": reason, "cost": cost})
        return reason

    @property
    def done(self):
        return self.reached or self.spent >= self.budget - 1e-9

    def evaluate(self, arch, epochs):
        if arch not in self.benchmark:
            # A table still being built lacks it: free, never the best, not recorded.
            return -np.inf
        score, seconds = self.benchmark.query(arch, epochs, self.rng)
        self.spent += epochs / self.benchmark.epochs
        self.history.append(
            {
                "arch": arch,
                "epochs": int(epochs),
                "score": score,
                "seconds": seconds,
                "spent": self.spent,
                "mean": self.benchmark.mean(arch),
                "cost": self.benchmark.cost(arch),
            }
        )
        if (
            self.stop_at is not None
            and epochs >= self.benchmark.epochs
            and self.history[-1]["mean"] >= self.stop_at - 1e-12
        ):
            self.reached = True
        return score


class _TableTuner(keras_tuner.Tuner):
    """A keras-tuner tuner whose trials are table look-ups (public ``run_trial`` API)."""

    def __init__(self, oracle, record, **kwargs):
        self.record = record
        super().__init__(oracle=oracle, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        values = trial.hyperparameters.values
        epochs = int(values.get("tuner/epochs", self.record.benchmark.epochs))
        arch = self.record.benchmark.space.from_values(values)
        if self.record.done or arch not in self.record.benchmark:
            return {"score": 0.0}  # past the budget, or not in the table: not recorded
        if self.record.reject(arch) is not None:
            return {"score": 0.0}  # over a cost limit: never trained, the worst score
        score = self.record.evaluate(arch, epochs)
        if self.record.done:
            self.oracle.max_trials = len(self.oracle.trials)  # no further trial
        return {"score": score}


def _keras_tuner_search(name, record, seed):
    space = record.benchmark.space
    objective = keras_tuner.Objective("score", "max")
    common = {
        "objective": objective,
        "hyperparameters": space.hyperparameters(),
        "seed": seed + 1,  # keras-tuner reads seed=0 as "no seed"
    }
    epochs = record.benchmark.epochs
    if name == "bayesian":
        oracle = keras_tuner.oracles.BayesianOptimizationOracle(
            max_trials=int(np.ceil(record.budget)), **common
        )
    else:
        oracle = keras_tuner.oracles.HyperbandOracle(
            max_epochs=epochs,
            factor=3,
            hyperband_iterations=1000,
            **common,
        )
        oracle.max_trials = int(np.ceil(record.budget * epochs)) + 1
    with tempfile.TemporaryDirectory() as directory:
        tuner = _TableTuner(
            oracle, record, directory=directory, project_name="table", overwrite=True
        )
        tuner.search(verbose=0)


def simulate(benchmark, searcher="random", *, budget=100, seed=0, stop_at=None, **options):
    """Run ``searcher`` on a tabular benchmark until ``budget`` full trainings are spent.

    Args:
        benchmark: A `TabularBenchmark`. Required.
        searcher: One of ``"random"``, ``"evolution"``, ``"local"``, ``"asha"``,
            ``"pareto_evolution"``, ``"bayesian"``, ``"hyperband"``.
            Defaults to ``"random"``.
        budget: Full trainings to spend, a number ``> 0``. Defaults to ``100``.
        seed: The run's seed (the searcher's and the table's draws of a seed
            per query). Defaults to ``0``.
        stop_at: A table mean accuracy in ``[0, 1]``: stop as soon as an architecture
            whose mean reaches it was trained at the full budget (the
            history up to there is the same as without it; `evaluations_to_reach`
            with that target reads the same figure). ``None`` spends the
            whole budget. Defaults to ``None``.
        **options: The searcher's own arguments (``population``, ``eta``, ...),
            ``cost`` (``"pareto_evolution"``'s cost) and the limits
            ``max_params``, ``max_flops``, ``max_latency_ms`` (read from the
            table's rows; an architecture over a limit costs nothing and is
            listed in the result's ``rejected``).

    Returns:
        The list of evaluations in order, dicts with ``arch``, ``epochs``,
        ``score`` (the drawn seed's accuracy), ``seconds`` (simulated),
        ``spent`` (full trainings so far), ``mean`` (the table's seed mean
        at the full budget) and ``cost`` (the row's ``params``, and
        ``flops``/``latency_ms`` where recorded). Its attribute ``rejected``
        lists ``{"arch", "reason", "cost"}`` of the architectures over a limit.

    Example:
    >>> from nnkit.search import ArchitectureSpace, Choice, TabularBenchmark, simulate
    >>> space = ArchitectureSpace([Choice("w", [1, 2, 3])], build=lambda a, s, c: None)
    >>> rows = [{"arch": {"w": w}, "val_accuracy": [[0.1 * w]], "params": w,
    ...          "seconds_per_epoch": 1.0} for w in (1, 2, 3)]
    >>> history = simulate(TabularBenchmark(rows, space), "evolution", budget=3, seed=0)
    >>> sorted(step["arch"]["w"] for step in history)
    [1, 2, 3]
    """
    from nnkit.search.benchmark import TabularBenchmark

    if not isinstance(benchmark, TabularBenchmark):
        raise TypeError(
            "`benchmark` must be a nnkit.search.TabularBenchmark. "
            f"Received: benchmark={benchmark!r}"
        )
    name = v.check_one_of("searcher", searcher, ALL_SEARCHERS)
    budget = v.check_positive_number("budget", budget)
    seed = v.check_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
    from nnkit.search.constraints import check_limits

    limits = check_limits(**{key: options.pop(key, None) for key in _LIMIT_ARGUMENTS})
    if stop_at is not None:
        stop_at = v.check_number("stop_at", stop_at, minimum=0.0, maximum=1.0)
    record = _Record(benchmark, budget, np.random.default_rng([seed, 1]), limits, stop_at)
    if name in KERAS_TUNER_SEARCHERS:
        _keras_tuner_search(name, record, seed)
        return record.history
    engine = make_searcher(
        name,
        benchmark.space,
        seed=seed,
        max_epochs=benchmark.epochs,
        cost_fn=lambda arch: benchmark.cost(arch) if arch in benchmark else _UNKNOWN_COST,
        **options,
        **{f"max_{key}": value for key, value in limits.items()},
    )
    while not record.done:
        proposal = engine.ask()
        if proposal is None:
            break
        arch, epochs = proposal
        engine.tell(arch, epochs, record.evaluate(arch, epochs))
    # An architecture the table lacks was "rejected" at infinite cost: it is not recorded.
    rejected = getattr(engine, "rejected", [])
    record.history.rejected = [entry for entry in rejected if entry["arch"] in benchmark]
    return record.history


def evaluations_to_reach(history, target, full_epochs):
    """Full trainings spent until an architecture with table mean ``>= target`` ran at full budget.

    The figure of ``bench/nas_search.py``: the searcher has *found* a good
    architecture (trained it for the full budget); which one it would pick
    from noisy scores is not part of it.

    Args:
        history: What `simulate` returned. Required.
        target: The table mean to reach, e.g. ``best_mean - 0.001`` (0.1 pp).
            Required.
        full_epochs: The full budget (the table's epochs). Required.

    Returns:
        The full trainings spent (a float), ``inf`` when never reached.

    Example:
    >>> history = [{"epochs": 1, "mean": 0.9, "spent": 0.5},
    ...            {"epochs": 2, "mean": 0.9, "spent": 1.5}]
    >>> evaluations_to_reach(history, 0.9, 2)
    1.5
    """
    history = v.check_sequence("history", history, "a list of dicts from simulate()")
    target = v.check_number("target", target)
    full_epochs = v.check_positive_int("full_epochs", full_epochs)
    for step in history:
        if not isinstance(step, dict) or not {"epochs", "mean", "spent"} <= set(step):
            raise ValueError(
                f"`history` must hold the dicts simulate() returns. Received: history={history!r}"
            )
    for step in history:
        if step["epochs"] >= full_epochs and step["mean"] >= target - 1e-12:
            return step["spent"]
    return float("inf")
