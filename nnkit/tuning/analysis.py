"""The measurements behind the sensitivity report, as pure functions of a read study.

Everything is computed on the objective oriented so that lower is better
(``loss``): a maximised objective is negated here and shown with its own sign
in the report.
"""

import math

import numpy as np

from nnkit.tuning import _surrogate
from nnkit.tuning.importance import encode, usable_trials

# Below this many usable trials per analysed knob the ranking is withheld. With
# 6 knobs, fANOVA on random-search trials of a known function found the true top
# two (in order) in 13 of 20 studies at 50 trials and in 20 of 20 at 100
# (tests/tuning/test_synthetic.py; the issue reports 12/20 and 20/20).
MIN_TRIALS_PER_KNOB = 15
MIN_TRIALS = 10
# Random search spreads a knob over its range with a standard deviation near
# range / sqrt(12); a sampler concentrated in one region gives much less.
MIN_SPREAD = 0.5
MAX_CHOICE_SHARE = 0.8
NOISE_MULTIPLIER = 2.0  # "within the noise of the best": within 2 sigma of it
BEST_FRACTION = 0.1  # the robust set when the noise is unknown: the best 10 %
EDGE = 0.05  # the best value lies in the outer 5 % of the range (sampling scale)
# A robust range needs this many trials where the knob is active per knob varied in them
# (5 for a one-knob grid of learning rates, 30 for a random search of six knobs).
RANGE_TRIALS_PER_KNOB = 5
RANGE_MIN_TRIALS = 5
# With the noise unknown, "good" is within this fraction of the gap between the median
# trial and the best (the fitted curve of a knob, nnkit.tuning._surrogate).
GAP_FRACTION = 0.1


def oriented(study, values):
    """Objective values with lower = better."""
    values = np.asarray(values, dtype=float)
    return values if study.direction == "min" else -values


def trial_objectives(study, rows):
    return oriented(study, [row["objective"] for row in rows])


def noise_floor(study):
    """``(sigma, source)``: the objective's spread over seeds, or ``(None, reason)``.

    From ``seeds.csv`` (the best configuration re-run with several seeds) when
    it has at least two finite values; otherwise pooled over the trials that ran
    several executions (``executions_per_trial`` in keras-tuner).
    """
    if study.seeds is not None and "objective" in study.seeds:
        values = study.seeds["objective"][np.isfinite(study.seeds["objective"])]
        if len(values) >= 2:
            source = f"standard deviation over {len(values)} seeds at the best configuration"
            if len(values) < 3:
                source += " (fewer than 3 seeds: a rough estimate)"
            return float(np.std(values, ddof=1)), source
    squares, dof = 0.0, 0
    for row in study.trials:
        if (row["executions"] or 0) < 2:
            continue
        record = study.trial_record(row["trial_id"])
        values = [e.get("best", {}).get(study.objective) for e in record.get("executions") or []]
        values = np.array([v for v in values if v is not None], dtype=float)
        values = values[np.isfinite(values)]
        if len(values) >= 2:
            squares += float(np.sum((values - values.mean()) ** 2))
            dof += len(values) - 1
    if dof:
        return (
            math.sqrt(squares / dof),
            f"pooled standard deviation between executions of the same trial ({dof} d.o.f.)",
        )
    return None, "unknown: no seeds.csv and no trial ran more than one execution"


def near_best(objectives, sigma):
    """Mask of trials indistinguishable from the best, and the threshold used."""
    objectives = np.asarray(objectives, dtype=float)
    if not len(objectives):
        return np.zeros(0, dtype=bool), math.nan
    best = float(np.min(objectives))
    if sigma is not None:
        threshold = best + NOISE_MULTIPLIER * sigma
    else:
        threshold = float(np.quantile(objectives, BEST_FRACTION, method="inverted_cdf"))
    return objectives <= threshold, threshold


def is_numeric(spec):
    return spec["type"] in ("float", "int")


def robust_range(study, rows, objectives, name, tol, *, seed=0, widen=False):
    """Where the knob is good: a ``_surrogate.RobustRange`` for numbers, a list for choices.

    ``objectives`` are oriented (lower is better), one per row; only the rows
    where the knob is active count. ``None`` when the knob took fewer than 3
    distinct numeric values.
    """
    spec = study.spec(name)
    pairs = [
        (row["hyperparameters"][name], y)
        for row, y in zip(rows, objectives, strict=True)
        if row["hyperparameters"].get(name) is not None
    ]
    if not pairs:
        return None
    values, ys = (list(t) for t in zip(*pairs, strict=True))
    if _surrogate.numeric_values(spec):
        log = _surrogate.uses_log(spec, values)
        return _surrogate.robust_range(values, ys, tol, log=log, seed=seed, widen=widen)
    return _surrogate.categorical_range(values, ys, tol, spec["values"] or [])


def range_support(study, rows, names, name, active):
    """``None`` when the trials support a robust range for ``name``, else why not.

    A range needs ``RANGE_TRIALS_PER_KNOB`` trials where the knob is active per
    knob varied in them (a knob active in a fraction of those trials counts as
    that fraction): 5 for a one-knob grid, 30 for six knobs.
    """
    mine = [row for row in rows if row["hyperparameters"].get(name) is not None]
    if not mine:
        return "never active"
    varied = sum(
        sum(row["hyperparameters"].get(m) is not None for row in mine) / len(mine) for m in names
    )
    needed = max(RANGE_MIN_TRIALS, math.ceil(RANGE_TRIALS_PER_KNOB * varied))
    if active[name] < needed:
        return (
            f"{active[name]} trial(s) where it is active, fewer than the {needed} a range needs "
            f"({RANGE_TRIALS_PER_KNOB} per knob varied in them)"
        )
    return None


def edge_side(study, name, value):
    """``"lower"``/``"upper"`` when ``value`` lies at that edge of the searched range, else None."""
    spec = study.spec(name)
    if value is None:
        return None
    if spec["type"] == "choice":
        values = spec.get("values") or []
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) < 3 or len(numbers) != len(values) or value not in numbers:
            return None
        return "lower" if value == min(numbers) else "upper" if value == max(numbers) else None
    if not is_numeric(spec) or spec["min"] == spec["max"]:
        return None
    low, high = encode(spec, spec["min"]), encode(spec, spec["max"])
    position = (encode(spec, value) - low) / (high - low)
    return "lower" if position <= EDGE else "upper" if position >= 1 - EDGE else None


def edge_warning(study, name, value):
    """A sentence when the best value lies at an edge of the searched range, else None."""
    side = edge_side(study, name, value)
    if side is None:
        return None
    spec = study.spec(name)
    if spec["type"] == "choice":
        numbers = spec["values"]
        return (
            f"The best `{name}` ({_fmt(value)}) is the {'lowest' if side == 'lower' else 'highest'}"
            f" of its choices [{_fmt(min(numbers))} … {_fmt(max(numbers))}]: the optimum may be "
            "beyond it; add values on that side."
        )
    return (
        f"The best `{name}` ({_fmt(value)}) lies at the {side} edge of the searched range "
        f"[{_fmt(spec['min'])}, {_fmt(spec['max'])}]: the optimum may be outside it; "
        "widen the range on that side."
    )


def _spread(study, name, rows):
    """Sampled spread of one knob relative to a uniform draw over its range, or None."""
    spec = study.spec(name)
    values = [row["hyperparameters"].get(name) for row in rows]
    values = [v for v in values if v is not None]
    if len(values) < MIN_TRIALS:
        return None
    if is_numeric(spec):
        if spec["min"] == spec["max"]:
            return None
        encoded = np.array([encode(spec, v) for v in values], dtype=float)
        width = encode(spec, spec["max"]) - encode(spec, spec["min"])
        return ("spread", float(np.std(encoded) / (width / math.sqrt(12))))
    if len(spec["values"] or []) < 2:
        return None
    _, counts = np.unique([repr(v) for v in values], return_counts=True)
    return ("share", float(counts.max() / len(values)))


def is_conditional(study, name):
    return bool(study.spec(name)["conditions"])


def active_counts(rows, names):
    """``{name: trials where the knob is active}`` (a conditional knob is None elsewhere)."""
    return {n: sum(row["hyperparameters"].get(n) is not None for row in rows) for n in names}


def trials_needed(study, names):
    """Usable trials a ranking needs: ``MIN_TRIALS_PER_KNOB`` per knob active in every trial.

    A conditional knob is judged over its own active trials and needs
    ``MIN_TRIALS_PER_KNOB`` of them (``left_out``), so it does not raise this count.
    """
    plain = [n for n in names if not is_conditional(study, n)]
    return max(MIN_TRIALS, MIN_TRIALS_PER_KNOB * len(plain))


def left_out(study, names, active):
    """Conditional knobs active in too few trials to be judged: ``{name: active count}``."""
    return {
        n: active[n] for n in names if is_conditional(study, n) and active[n] < MIN_TRIALS_PER_KNOB
    }


def condition_text(study, name):
    return " and ".join(f"`{c['parent']}` in {c['values']}" for c in study.spec(name)["conditions"])


def confidence_reasons(study, rows, names, active=None):
    """Why a ranking would not be trustworthy (an empty list when it would be)."""
    reasons = []
    active = active_counts(rows, names) if active is None else active
    needed = trials_needed(study, names)
    plain = [n for n in names if not is_conditional(study, n)]
    if len(rows) < needed:
        conditional = [n for n in names if n not in plain]
        counted = (
            "; conditional ones are judged over the trials where they are active ("
            + ", ".join(f"`{n}` in {active[n]}" for n in conditional)
            + f", each needing {MIN_TRIALS_PER_KNOB})"
            if conditional
            else ""
        )
        reasons.append(
            f"Too few trials: {len(rows)} with an objective value for {len(plain)} "
            f"hyperparameter(s) active in every trial; a ranking needs about "
            f"{MIN_TRIALS_PER_KNOB} per hyperparameter (at least {needed} here){counted}. "
            f"Run {needed - len(rows)} more random-search trials."
        )
    if study.tuner == "bayesian":
        reasons.append(
            "The trials came from a model-based sampler (bayesian), which concentrates "
            "them where it expects the optimum; importance measured on such a sample is "
            "biased. Rank knobs on a random-search sweep."
        )
    narrow = []
    for name in names:
        spread = _spread(study, name, rows)
        if spread is None:
            continue
        kind, value = spread
        if kind == "spread" and value < MIN_SPREAD:
            narrow.append(f"`{name}` (spread {value:.2f} of a uniform draw)")
        if kind == "share" and value > MAX_CHOICE_SHARE:
            narrow.append(f"`{name}` ({value:.0%} of trials on one value)")
    if narrow:
        reasons.append(
            "The sampled values are concentrated in one region of the search space: "
            + ", ".join(narrow)
            + "."
        )
    return reasons


def best_so_far(study):
    """Per trial (in order): its oriented objective (NaN if none) and the best so far."""
    usable = {row["trial_id"] for row in usable_trials(study)}
    values = np.array(
        [row["objective"] if row["trial_id"] in usable else math.nan for row in study.trials],
        dtype=float,
    )
    values = oriented(study, values)
    running = (
        np.fmin.accumulate(np.where(np.isnan(values), np.inf, values)) if len(values) else values
    )
    running = np.where(np.isinf(running), np.nan, running)
    return values, running


def default_trial(study, rows):
    """A usable trial that ran the search space's defaults, or None."""
    for row in rows:
        hps = row["hyperparameters"]
        if all(
            hps.get(spec["name"]) == spec["default"]
            for spec in study.hyperparameters
            if spec["name"] in hps
        ) and all(spec["name"] in hps or spec["conditions"] for spec in study.hyperparameters):
            return row
    return None


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
