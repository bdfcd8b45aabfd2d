"""The measurements behind the sensitivity report, as pure functions of a read study.

Everything is computed on the objective oriented so that lower is better
(``loss``): a maximised objective is negated here and shown with its own sign
in the report.
"""

import math

import numpy as np

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


def robust_range(study, rows, mask, name):
    """Where the near-best trials put this knob: ``(low, high)``, or the sorted choices."""
    spec = study.spec(name)
    values = [
        row["hyperparameters"].get(name) for row, keep in zip(rows, mask, strict=True) if keep
    ]
    values = [v for v in values if v is not None]
    if not values:
        return None
    if is_numeric(spec):
        return (min(values), max(values))
    order = [repr(v) for v in spec["values"] or []]
    return sorted(
        set(values),
        key=lambda v: (order.index(repr(v)), "") if repr(v) in order else (len(order), repr(v)),
    )


def _choice_edge_warning(name, spec, value):
    # A grid of numbers (e.g. learning rates as a Choice): its ends are edges too.
    values = spec.get("values") or []
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) < 3 or len(numbers) != len(values) or value not in (min(numbers), max(numbers)):
        return None
    side = "lowest" if value == min(numbers) else "highest"
    return (
        f"The best `{name}` ({_fmt(value)}) is the {side} of its choices "
        f"[{_fmt(min(numbers))} … {_fmt(max(numbers))}]: the optimum may be beyond it; "
        "add values on that side."
    )


def edge_warning(study, name, value):
    """A sentence when the best value lies at an edge of the searched range, else None."""
    spec = study.spec(name)
    if spec["type"] == "choice" and value is not None:
        return _choice_edge_warning(name, spec, value)
    if not is_numeric(spec) or value is None or spec["min"] == spec["max"]:
        return None
    low, high = encode(spec, spec["min"]), encode(spec, spec["max"])
    position = (encode(spec, value) - low) / (high - low)
    if EDGE < position < 1 - EDGE:
        return None
    side = "lower" if position <= EDGE else "upper"
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


def trials_needed(names):
    """Usable trials the report needs to rank ``names`` or give robust ranges for them."""
    return max(MIN_TRIALS, MIN_TRIALS_PER_KNOB * len(names))


def confidence_reasons(study, rows, names):
    """Why a ranking would not be trustworthy (an empty list when it would be)."""
    reasons = []
    needed = trials_needed(names)
    if len(rows) < needed:
        reasons.append(
            f"Too few trials: {len(rows)} with an objective value for {len(names)} "
            f"hyperparameters; a ranking needs about {MIN_TRIALS_PER_KNOB} per hyperparameter "
            f"(at least {needed} here). Run more random-search trials."
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
