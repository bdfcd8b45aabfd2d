"""The sensitivity report's closing line: what to run next, from what the report found.

In this order, each only when it applies: run more trials (the ranking was
refused, or a conditional knob was seen in too few trials); rerun with a
confounding knob fixed; fix the knobs that hardly matter (importance under
``FIX_BELOW``, whole bootstrap interval under ``2 · FIX_BELOW``) at the best
trial's values; widen a range whose best value sits at its edge; restrict the
others to their robust ranges; measure the noise when it is unknown. A pure
function of the report's findings: it runs nothing.
"""

import math

from nnkit.tuning import _surrogate, analysis

FIX_BELOW = 0.05


def _fmt(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def negligible(result, confounded=()):
    """Ranked knobs whose importance is under ``FIX_BELOW`` (whole interval under twice it),
    not flagged as confounded: any value in their searched range does as well."""
    if result is None:
        return []
    flagged = {c.knob for c in confounded}
    return [
        n
        for n in result.names
        if result.point[n] < FIX_BELOW
        and (not result.n_bootstrap or result.high[n] < 2 * FIX_BELOW)
        and n not in flagged
    ]


def _more_for_conditional(name, count, n_rows):
    share = count / n_rows if n_rows else 0.0
    missing = analysis.MIN_TRIALS_PER_KNOB - count
    if share <= 0:
        return f"make `{name}` active in some trials (it never was)"
    return f"run about {math.ceil(missing / share)} more trials so that `{name}` is active in " + (
        f"{analysis.MIN_TRIALS_PER_KNOB}"
    )


def _restrict(study, name, found):
    spec = study.spec(name)
    if isinstance(found, _surrogate.RobustRange):
        if _surrogate.numeric_values(spec) and spec["type"] in ("float", "int"):
            if found.low <= spec["min"] and found.high >= spec["max"]:
                return None
        return f"`{name}` to {_fmt(found.low)} … {_fmt(found.high)}"
    if isinstance(found, list) and spec["type"] == "choice" and len(found) < len(spec["values"]):
        return f"`{name}` to {found}"
    return None


def next_steps(study, *, n_rows, reasons, needed, left_out, confounded, edges, result, ranges,
               noise, best):  # fmt: skip
    """The items of "what to do next", most urgent first (plain sentences, no Markdown)."""
    items = []
    names = list(ranges)
    if reasons and len(names) > 1:  # one knob needs no ranking
        if n_rows < needed:
            items.append(
                f"run {needed - n_rows} more random-search trials ({needed} in all) before "
                "trusting a ranking"
            )
        else:
            items.append("rank the knobs on a random-search sweep over the whole space")
    for name, count in left_out.items():
        items.append(_more_for_conditional(name, count, n_rows))
    for c in confounded:
        value = best["hyperparameters"].get(c.by) if best else None
        fixed = f" at {_fmt(value)}" if value is not None else ""
        items.append(f"rerun with `{c.by}` fixed{fixed} to measure `{c.knob}` on its own")
    confounded_names = {c.knob for c in confounded}
    negligible_names = negligible(result, confounded)
    if negligible_names:
        values = [
            f"{n}={_fmt(best['hyperparameters'][n])}"
            if best and best["hyperparameters"].get(n) is not None
            else n
            for n in negligible_names
        ]
        items.append(
            f"fix {', '.join(f'`{v}`' for v in values)} (importance under "
            f"{FIX_BELOW:.0%}; `SearchSpace.fixed`)"
        )
    for name, side in edges:
        if name not in negligible_names and name not in confounded_names:
            items.append(f"widen `{name}` on its {side} side")
    edged = {name for name, _ in edges}
    narrowed = [
        text
        for name, found in ranges.items()
        if name not in negligible_names
        and name not in edged
        and name not in confounded_names
        and found is not None
        for text in [_restrict(study, name, found)]
        if text
    ]
    if narrowed:
        items.append("restrict " + ", ".join(narrowed) + " (`SearchSpace.restrict`)")
    if noise is None:
        items.append("re-run the best configuration with 3 seeds (`rerun_best`) to measure noise")
    if not items:
        items.append("nothing: the sweep answers its question; train the best configuration")
    return items


def line(items):
    """One sentence: ``What to do next: a; b; c.``"""
    text = "; ".join(items)
    return f"What to do next: {text[0].upper()}{text[1:]}."
