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
- A conditional knob that is inactive in a trial (e.g. momentum when the
  optimizer is Adam) is given its default value for fANOVA, which needs a value
  for every knob in every trial; so the effect of switching it on or off is
  counted in its parent's importance, and its own importance measures how much
  its value matters where it is active (diluted by the trials where it is not).
  PED-ANOVA handles conditional knobs itself (conditional PED-ANOVA) and is
  given only the active values.
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


def _evaluate(frozen, names, direction, evaluator):
    import optuna

    study = optuna.create_study(direction="minimize" if direction == "min" else "maximize")
    study.add_trials(frozen)
    scores = optuna.importance.get_param_importances(study, evaluator=evaluator, params=list(names))
    return np.array([float(scores.get(name, 0.0)) for name in names])


def usable_trials(study):
    """Trials with a finite objective (completed, or stopped early by the median rule)."""
    return [
        t
        for t in study.trials
        if t["status"] in ("completed", "stopped")
        and t["objective"] is not None
        and math.isfinite(t["objective"])
    ]


def importance(study, *, method="fanova", n_bootstrap=30, seed=0, n_trees=32):
    """Importance of each analysed knob, with a bootstrap interval over trials.

    ``study`` is a ``nnkit.tuning._study.Study``. Returns an ``Importance``.
    """
    check_one_of("method", method, METHODS)
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, minimum=0)
    n_trees = check_int("n_trees", n_trees, minimum=1)
    rows = usable_trials(study)
    names = analysed_names(study)
    description = METHOD_NAMES[method].format(n_trees=n_trees, seed=seed)
    if len(rows) < 2 or not names:
        zeros = dict.fromkeys(names, 0.0)
        return Importance(description, names, zeros, zeros, zeros, zeros, len(rows), 0)
    distributions = _distributions(study, names)
    frozen = _frozen_trials(study, rows, names, distributions, fill_inactive=method == "fanova")
    evaluator = _evaluator(method, seed, n_trees)
    rng = np.random.default_rng(seed)
    with _quiet_optuna():
        point = _evaluate(frozen, names, study.direction, evaluator)
        draws = np.empty((n_bootstrap, len(names)))
        for b in range(n_bootstrap):
            picked = rng.integers(len(frozen), size=len(frozen))
            draws[b] = _evaluate([frozen[i] for i in picked], names, study.direction, evaluator)
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
