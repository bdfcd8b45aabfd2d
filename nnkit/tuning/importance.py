"""Hyperparameter importance with bootstrap intervals, computed by Optuna's evaluators.

The recorded trials are handed to Optuna as ``FrozenTrial``s with distributions
derived from ``study.json``; the evaluator is always named explicitly (Optuna's
default evaluator changed from fANOVA to PED-ANOVA between versions) and
seeded. Uncertainty comes from resampling the trials with replacement and
re-running the evaluator on each resample.

Treatment of the search space:

- ``float``/``int`` knobs become Optuna ``FloatDistribution``/``IntDistribution``
  over the searched range (widened to any recorded value outside it).
  A log-sampled knob enters as the log10 of its value over a linear range: fANOVA
  integrates over the box of the search space with a uniform measure, and Optuna
  hands it the untransformed values, so with a log distribution 90 % of a
  ``1e-4 .. 1e-1`` learning-rate range would lie in its top decade. In log10
  units every decade weighs what it weighed when the knob was sampled.
  ``reverse_log`` knobs are analysed on a linear scale.
- ``choice`` and ``boolean`` knobs become ``CategoricalDistribution``s; ``fixed``
  knobs and knobs that took a single value are left out (importance 0).
- A conditional knob (e.g. momentum, active when the optimizer is SGD) is
  judged by fANOVA only over the trials where it is active (with the
  unconditional knobs), and its share scaled to the whole study by the law of
  total variance (``_ConditionalFanova``); the effect of switching it on or off
  is counted in its parent's importance. PED-ANOVA handles conditional knobs
  itself (conditional PED-ANOVA) and is given only the active values.
"""

import contextlib
import dataclasses
import math
import warnings

import numpy as np

from nnkit._validation import check_int, check_one_of

METHODS = ("fanova", "ped-anova")
METHOD_NAMES = {
    "fanova": "fANOVA (Optuna FanovaImportanceEvaluator: random forest of {n_trees} trees, "
    "seed {seed}; share of the objective's variance explained by each knob alone)",
    "ped-anova": "PED-ANOVA (Optuna PedAnovaImportanceEvaluator, target_quantile=0.1, "
    "region_quantile=1.0: how much each knob's distribution in the best 10 % of trials "
    "differs from all trials)",
}
INTERVAL = (5.0, 95.0)


@dataclasses.dataclass(frozen=True)
class Importance:
    """Importance estimates of a study's knobs, most important first."""

    method: str
    names: list  # analysed knobs, by decreasing point estimate
    point: dict  # name -> importance on all trials
    low: dict  # name -> 5th percentile over bootstrap resamples
    high: dict  # name -> 95th percentile over bootstrap resamples
    top_two_share: dict  # name -> fraction of resamples where the knob is in the top two
    n_trials: int
    n_bootstrap: int

    @property
    def top_two(self):
        return self.names[:2]


def analysed_names(study):
    """Knobs that can carry importance: not fixed, and with more than one recorded value."""
    names = []
    for spec in study.hyperparameters:
        if spec["type"] == "fixed":
            continue
        seen = {repr(v) for v in study.hp_values(spec["name"]) if v is not None}
        if len(seen) > 1:
            names.append(spec["name"])
    return names


def encode(spec, value):
    """A knob's value on the scale it is analysed on (log10 for log-sampled knobs)."""
    if spec["type"] in ("float", "int") and spec["sampling"] == "log":
        return math.log10(value)
    return value


def _distributions(study, names):
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    distributions = {}
    for name in names:
        spec = study.spec(name)
        observed = [v for v in study.hp_values(name) if v is not None]
        if spec["type"] in ("float", "int"):
            low = min([spec["min"], *observed])
            high = max([spec["max"], *observed])
            if spec["sampling"] == "log":
                distributions[name] = FloatDistribution(math.log10(low), math.log10(high))
            elif spec["type"] == "int":
                distributions[name] = IntDistribution(int(low), int(high))
            else:
                distributions[name] = FloatDistribution(float(low), float(high))
        else:
            choices = list(spec["values"] or [])
            choices += [v for v in dict.fromkeys(observed) if v not in choices]
            distributions[name] = CategoricalDistribution(choices)
    return distributions


@contextlib.contextmanager
def _quiet_optuna():
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            # PED-ANOVA warns when the quantiles select few trials; the report
            # says so itself (low-confidence rule) and keeps warnings out of it.
            warnings.simplefilter("ignore", UserWarning)
            # ``normalize=False`` (conditional knobs) is marked experimental in Optuna 4-5.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _frozen_trials(study, rows, names, distributions, fill_inactive):
    from optuna.trial import create_trial

    frozen = []
    for row in rows:
        params, dists = {}, {}
        for name in names:
            spec = study.spec(name)
            value = row["hyperparameters"].get(name)
            if value is None:
                if not fill_inactive:
                    continue
                value = spec["default"]
            params[name] = encode(spec, value)
            dists[name] = distributions[name]
        frozen.append(create_trial(value=row["objective"], params=params, distributions=dists))
    return frozen


def _evaluator(method, seed, n_trees):
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    if method == "fanova":
        return FanovaImportanceEvaluator(n_trees=n_trees, max_depth=64, seed=seed)
    return PedAnovaImportanceEvaluator(
        target_quantile=0.1, region_quantile=1.0, evaluate_on_local=True
    )


def _evaluate(frozen, names, direction, evaluator, normalize=True):
    import optuna

    study = optuna.create_study(direction="minimize" if direction == "min" else "maximize")
    study.add_trials(frozen)
    scores = optuna.importance.get_param_importances(
        study, evaluator=evaluator, params=list(names), normalize=normalize
    )
    return np.array([float(scores.get(name, 0.0)) for name in names])


class _ConditionalFanova:
    """fANOVA shares with each conditional knob judged over the trials where it is active.

    The unconditional knobs are evaluated on all trials; each conditional knob
    ``c`` on its active trials ``A_c`` (with the unconditional knobs). fANOVA's
    unnormalised importances are shares of the variance of the trials they
    were computed on, so ``c``'s share of the whole is its share within ``A_c``
    times ``|A_c| / n · Var(y | A_c) / Var(y)`` (the within-group term of the
    law of total variance); the vector is then normalised to sum to 1 as
    Optuna's is.
    """

    def __init__(self, study, rows, names, distributions, evaluator):
        self.direction, self.evaluator = study.direction, evaluator
        self.names = names
        self.conditional = [n for n in names if study.spec(n)["conditions"]]
        self.plain = [n for n in names if n not in self.conditional]
        self.y = np.array([row["objective"] for row in rows], dtype=float)
        self.frozen = _frozen_trials(study, rows, self.plain, distributions, fill_inactive=True)
        self.active, self.frozen_c = {}, {}
        for c in self.conditional:
            self.active[c] = np.array([row["hyperparameters"].get(c) is not None for row in rows])
            self.frozen_c[c] = _frozen_trials(
                study, rows, [*self.plain, c], distributions, fill_inactive=True
            )

    def __call__(self, picked):
        if not self.conditional:
            return _evaluate([self.frozen[i] for i in picked], self.names, self.direction,
                             self.evaluator)  # fmt: skip
        out = dict.fromkeys(self.names, 0.0)
        total = float(np.var(self.y[picked]))
        if total <= 0:
            return np.zeros(len(self.names))
        if self.plain:
            raw = _evaluate([self.frozen[i] for i in picked], self.plain, self.direction,
                            self.evaluator, normalize=False)  # fmt: skip
            out.update(zip(self.plain, raw, strict=True))
        for c in self.conditional:
            sub = [i for i in picked if self.active[c][i]]
            trials = [self.frozen_c[c][i] for i in sub]
            if len(sub) < 2 or len({repr(t.params[c]) for t in trials}) < 2:
                continue
            within = float(np.var(self.y[sub]))
            raw = _evaluate(trials, [*self.plain, c], self.direction, self.evaluator,
                            normalize=False)[-1]  # fmt: skip
            out[c] = raw * len(sub) / len(picked) * within / total
        values = np.array([max(out[n], 0.0) for n in self.names])
        return values / values.sum() if values.sum() > 0 else values


def usable_trials(study):
    """Trials with a finite objective (completed, or stopped early by the median rule)."""
    return [
        t
        for t in study.trials
        if t["status"] in ("completed", "stopped")
        and t["objective"] is not None
        and math.isfinite(t["objective"])
    ]


def importance(study, *, method="fanova", n_bootstrap=30, seed=0, n_trees=32, names=None):
    """Importance of each analysed knob, with a bootstrap interval over trials.

    ``study`` is a ``nnkit.tuning._study.Study``; ``names`` the knobs to rank
    (default: every analysed knob). Returns an ``Importance``.
    """
    check_one_of("method", method, METHODS)
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, minimum=0)
    n_trees = check_int("n_trees", n_trees, minimum=1)
    rows = usable_trials(study)
    names = analysed_names(study) if names is None else list(names)
    description = METHOD_NAMES[method].format(n_trees=n_trees, seed=seed)
    if len(rows) < 2 or not names:
        zeros = dict.fromkeys(names, 0.0)
        return Importance(description, names, zeros, zeros, zeros, zeros, len(rows), 0)
    distributions = _distributions(study, names)
    evaluator = _evaluator(method, seed, n_trees)
    if method == "fanova":
        evaluate = _ConditionalFanova(study, rows, names, distributions, evaluator)
    else:
        frozen = _frozen_trials(study, rows, names, distributions, fill_inactive=False)

        def evaluate(picked):
            return _evaluate([frozen[i] for i in picked], names, study.direction, evaluator)

    rng = np.random.default_rng(seed)
    with _quiet_optuna():
        point = evaluate(np.arange(len(rows)))
        draws = np.empty((n_bootstrap, len(names)))
        for b in range(n_bootstrap):
            draws[b] = evaluate(rng.integers(len(rows), size=len(rows)))
    order = sorted(range(len(names)), key=lambda i: (-point[i], names[i]))
    if n_bootstrap:
        low, high = np.percentile(draws, INTERVAL, axis=0)
        ranks = np.argsort(np.argsort(-draws, axis=1, kind="stable"), axis=1, kind="stable")
        top_two = np.mean(ranks < 2, axis=0)
    else:
        low, high, top_two = point, point, np.full(len(names), np.nan)
    return Importance(
        method=description,
        names=[names[i] for i in order],
        point={names[i]: float(point[i]) for i in order},
        low={names[i]: float(low[i]) for i in order},
        high={names[i]: float(high[i]) for i in order},
        top_two_share={names[i]: float(top_two[i]) for i in order},
        n_trials=len(rows),
        n_bootstrap=n_bootstrap,
    )
