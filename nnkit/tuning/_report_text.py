"""The Markdown of the sensitivity report, from what ``sensitivity_report`` found."""

import math
import re

import numpy as np

from nnkit.tuning import analysis


def slug(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _fmt(value):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _image(report, alt, name):
    drawn = {path.name for path in report.plots}
    return f"![{alt}]({name})" if name in drawn else ""


def _range_text(robust, detail, why):
    if robust is None:
        return "–", f"none: {why}" if why else "–"
    if detail is None and why:  # a numeric knob that does not matter: its whole range
        return f"{_fmt(robust[0])} … {_fmt(robust[1])}", why
    if detail is None:
        return ", ".join(str(v) for v in robust), "choices whose mean is within the tolerance"
    low = f"{_fmt(detail.low_interval[0])} – {_fmt(detail.low_interval[1])}"
    high = f"{_fmt(detail.high_interval[0])} – {_fmt(detail.high_interval[1])}"
    notes = []
    if detail.open_low:
        notes.append("reaches the lowest value tried")
    if detail.open_high:
        notes.append("reaches the highest value tried")
    extra = f" ({'; '.join(notes)})" if notes else ""
    return f"{_fmt(detail.low)} … {_fmt(detail.high)}", f"low {low}; high {high}{extra}"


def markdown(study, report, rows, mask, threshold, sign, noise_source, values, running):
    lines = [f"# Sensitivity report: `{study.directory.name}`", ""]
    counts = {
        s: int(np.sum(study.statuses() == s))
        for s in ("completed", "stopped", "failed", "invalid", "infeasible")
    }
    lines += [
        f"- Objective: `{study.objective}` ({'lower' if sign > 0 else 'higher'} is better)",
        f"- Tuner: {study.tuner}; {len(study.trials)} trials: "
        + ", ".join(f"{n} {s}" for s, n in counts.items()),
        f"- Hyperparameters analysed: {', '.join(f'`{n}`' for n in report.robust_ranges) or 'none'}",
        "",
        "## Importance",
        "",
    ]
    if report.low_confidence:
        lines += ["**Low confidence: no ranking is given.**", ""]
        lines += [f"- {reason}" for reason in report.low_confidence]
        lines.append("")
    elif report.importance is None:
        lines += ["No hyperparameter took more than one value; nothing to rank.", ""]
    else:
        result = report.importance
        if result.n_bootstrap:
            about = (
                f"Interval: 5th–95th percentile over {result.n_bootstrap} bootstrap resamples of "
                f'the {result.n_trials} trials. "Top two" is how often the knob ranks in the top '
                "two across resamples."
            )
        else:
            about = (
                f"No bootstrap resamples (n_bootstrap=0): the importances of the "
                f"{result.n_trials} trials come without intervals."
            )
        lines += [
            f"Method: {result.method}. {about}",
            "",
            "| rank | hyperparameter | importance | 90 % interval | top two |",
            "|---:|---|---:|---|---:|",
        ]
        for rank, name in enumerate(result.names, 1):
            interval, top_two = "–", "–"
            if result.n_bootstrap:
                interval = f"{result.low[name]:.3f} – {result.high[name]:.3f}"
                top_two = f"{result.top_two_share[name]:.0%}"
            notes = []
            if analysis.is_conditional(study, name):
                count = sum(r["hyperparameters"].get(name) is not None for r in rows)
                notes.append(f"judged over its {count} active trials")
            notes += [f"confounded with `{c.by}`" for c in report.confounded if c.knob == name]
            shown = f"`{name}`" + (f" ({'; '.join(notes)})" if notes else "")
            lines.append(
                f"| {rank} | {shown} | {result.point[name]:.3f} | {interval} | {top_two} |"
            )
        lines += ["", _image(report, "importance", "importance.png"), ""]
    if report.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report.warnings] + [""]

    lines += ["## Noise floor", ""]
    if report.noise is not None:
        lines.append(
            f"Seed-to-seed standard deviation σ = {report.noise:.4g} ({noise_source}). "
            f"Differences smaller than 2σ = {2 * report.noise:.4g} are within noise; "
            f"{int(mask.sum())} trial(s) are within 2σ of the best."
        )
    else:
        lines.append(
            f"Noise: {noise_source}. Re-run the best configuration with at least three seeds "
            "(`nnkit.tuning.rerun_best`) before claiming one configuration beats another; the "
            "robust ranges below use a tenth of the gap between the median trial and the best "
            "instead."
        )
    default = analysis.default_trial(study, rows)
    if report.best is not None:
        lines.append("")
        lines.append(
            f"Best: trial `{report.best['trial_id']}`, {study.objective} = "
            f"{_fmt(report.best['objective'])}, with "
            + ", ".join(f"`{k}`={_fmt(v)}" for k, v in report.best["hyperparameters"].items())
            + "."
        )
        if default is not None and default is not report.best:
            gap = sign * (default["objective"] - report.best["objective"])
            verdict = (
                "unknown against noise"
                if report.noise is None
                else ("above noise" if gap > 2 * report.noise else "within noise")
            )
            lines.append(
                f"The default configuration (trial `{default['trial_id']}`) reached "
                f"{_fmt(default['objective'])}: the best is better by {gap:.4g}, {verdict}."
            )
    lines.append("")

    tolerance = (
        "within 2σ of its minimum"
        if report.noise is not None
        else "within a tenth of the gap between the median trial and the best"
    )
    lines += [
        "## Per hyperparameter",
        "",
        "Robust range: where a smooth curve fitted between the observed points (local-linear, "
        f"over the trials where the knob is active) stays {tolerance}; each end's 90 % interval "
        "comes from refitting on bootstrap resamples of the trials. For choices that are not "
        "numbers: the choices whose mean objective is within the same tolerance of the best one.",
        "",
        "| hyperparameter | searched | best | robust range | uncertainty (90 %) |",
        "|---|---|---|---|---|",
    ]
    for name, robust in report.robust_ranges.items():
        spec = study.spec(name)
        searched = (
            f"{_fmt(spec['min'])} … {_fmt(spec['max'])}"
            + (" (log)" if spec["sampling"] == "log" else "")
            if analysis.is_numeric(spec)
            else ", ".join(_fmt(v) for v in spec["values"] or [])
        )
        best_value = report.best["hyperparameters"].get(name) if report.best else None
        shown, spread = _range_text(
            robust, report.range_details.get(name), report.range_missing.get(name)
        )
        lines.append(f"| `{name}` | {searched} | {_fmt(best_value)} | {shown} | {spread} |")
    lines.append("")
    for name in report.robust_ranges:
        lines.append(_image(report, name, f"hp_{slug(name)}.png"))
    lines.append("")
    if report.ranking and len(report.ranking) >= 2:
        lines += [
            f"## Top pair: `{report.ranking[0]}` × `{report.ranking[1]}`",
            "",
            _image(report, "top pair", "pair.png"),
            "",
        ]
    lines += ["## Budget", ""]
    finite = np.isfinite(running)
    if finite.any():
        final = running[finite][-1]
        found = int(np.argmax(running == final))
        # Trials are named by their id (as in "Best: trial `01`") and counted from 1.
        text = (
            f"The best (trial `{study.trials[found]['trial_id']}`) came after "
            f"{found + 1} of the {len(running)} trials run."
        )
        half = len(running) // 2
        if half >= 1 and math.isfinite(running[half - 1]):
            gain = float(running[half - 1] - final)
            if gain <= 0:
                text += " The second half of the sweep did not improve on the first."
            else:
                text += f" The second half of the sweep improved the best by {gain:.4g}"
                text += f" ({gain / report.noise:.1f}σ)." if report.noise else "."
        lines.append(text)
    lines.append(
        f"Failed trials: {report.failed_fraction:.0%} ({counts['failed']} failed, "
        f"{counts['invalid']} invalid); {counts['stopped']} stopped early by the median rule."
    )
    messages = [t["message"] for t in study.trials if t["status"] == "failed" and t["message"]]
    if messages:
        distinct, seen = np.unique(messages, return_counts=True)
        lines.append("")
        lines.append("Most frequent failure messages:")
        for index in np.argsort(-seen)[:3]:
            lines.append(f"- {seen[index]} × {distinct[index][:160]}")
    lines += ["", _image(report, "budget", "budget.png"), ""]
    lines += ["## What to do next", "", f"**{report.next_step_line}**", ""]
    return "\n".join(lines)
