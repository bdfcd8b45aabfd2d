"""The sensitivity report: which knobs matter, where they are safe, and how noisy it all is."""

import dataclasses
import math
import pathlib
import re

import numpy as np

from nnkit import _validation as v
from nnkit._validation import check_int, check_one_of
from nnkit.tuning import analysis
from nnkit.tuning import importance as importance_lib
from nnkit.tuning import plots as draw
from nnkit.tuning._study_read import read_study


@dataclasses.dataclass(frozen=True)
class SensitivityReport:
    """What ``sensitivity_report`` found, alongside the Markdown file it wrote.

    ``ranking`` is ``None`` when ``low_confidence`` lists reasons (too few
    trials for the number of knobs, or trials concentrated by a model-based
    sampler): the report then warns instead of ranking.
    """

    path: pathlib.Path  # report.md
    ranking: list | None  # knob names, most important first
    importance: object  # nnkit.tuning.importance.Importance, or None
    low_confidence: list  # reasons; empty when the ranking is trustworthy
    warnings: list  # edge-of-range and other warnings
    robust_ranges: dict  # knob -> (low, high) or the list of good choices
    noise: float | None  # the objective's standard deviation over seeds
    failed_fraction: float
    best: dict | None  # the best trial's row
    plots: list  # PNG paths


def _slug(name):
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


def _range_text(spec, robust):
    if robust is None:
        return "–"
    if analysis.is_numeric(spec):
        return f"{_fmt(robust[0])} … {_fmt(robust[1])}"
    return ", ".join(str(v) for v in robust)


def sensitivity_report(
    study_dir, *, method="fanova", n_bootstrap=30, seed=0, output_dir=None, plots=True
):
    """Write ``report.md`` and PNG plots about a study directory; return what it found.

    The report ranks the hyperparameters by importance (Optuna's fANOVA or
    PED-ANOVA evaluator fed with the recorded trials, with a bootstrap interval
    over trials), or warns "low confidence" instead when there are fewer than
    about 15 trials per hyperparameter or the trials came from a model-based
    sampler concentrated in one region. Per hyperparameter it plots the
    objective against the value (log axis for log-sampled knobs), shades the
    robust range (trials within twice the seed-to-seed standard deviation of
    the best; the best 10 % when the noise is unknown; none, and the report says
    why, from fewer trials than a ranking needs) and warns when the best value
    lies at an edge of the searched range. It also draws the top pair against
    each other, the best-so-far against the trial number (with the
    failed fraction), and states the noise floor from ``seeds.csv``
    (``rerun_best``). Trials stopped early by the median rule count with the
    value they reached; failed trials count only in the failed fraction.

    Args:
        study_dir: A study directory written by ``nnkit.tuning.tune``.
        method: ``"fanova"`` or ``"ped-anova"``. Defaults to ``"fanova"``.
        n_bootstrap: Resamples of the trials for the importance intervals
            (0 for none). Defaults to 30.
        seed: Seeds the evaluator and the resampling. Defaults to 0.
        output_dir: Where to write; defaults to ``<study_dir>/report``.
        plots: Whether to draw the PNG plots (``False``: Markdown only). Defaults
            to True.

    Returns:
        A ``SensitivityReport`` (``path`` is the Markdown file).

    Raises:
        FileNotFoundError: If ``study_dir`` holds no ``study.json``.
        TypeError: If ``study_dir`` or ``output_dir`` is not a path, ``seed``
            or ``n_bootstrap`` not an int, or ``plots`` not a bool.
        ValueError: If ``method``, ``n_bootstrap`` or ``seed`` is invalid, or
            a study file is damaged.

    Example:
        >>> import math, tempfile
        >>> from nnkit.tuning._synthetic import write_random_study
        >>> specs = [
        ...     {"name": "learning_rate", "type": "float", "min": 1e-4, "max": 1.0,
        ...      "sampling": "log"},
        ...     {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5}]
        >>> study_dir = tempfile.mkdtemp()
        >>> _ = write_random_study(study_dir, specs,
        ...     lambda v, rng: (math.log10(v["learning_rate"]) + 2) ** 2 + v["dropout"],
        ...     n_trials=40, seed=0)
        >>> report = sensitivity_report(study_dir, n_bootstrap=5)
        >>> report.ranking
        ['learning_rate', 'dropout']
        >>> report.path.name
        'report.md'
    """
    study_dir = v.check_path("study_dir", study_dir)
    check_one_of("method", method, importance_lib.METHODS)
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, minimum=0)
    seed = check_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
    output_dir = v.check_optional_path("output_dir", output_dir)
    plots = v.check_bool("plots", plots)
    study = read_study(study_dir, "study_dir")
    out = pathlib.Path(output_dir) if output_dir is not None else study.directory / "report"
    out.mkdir(parents=True, exist_ok=True)

    rows = importance_lib.usable_trials(study)
    names = importance_lib.analysed_names(study)
    sign = 1.0 if study.direction == "min" else -1.0
    display = np.array([row["objective"] for row in rows], dtype=float)
    oriented = sign * display
    sigma, noise_source = analysis.noise_floor(study)
    mask, threshold = analysis.near_best(oriented, sigma)
    reasons = analysis.confidence_reasons(study, rows, names)
    result = None
    if not reasons and names:
        result = importance_lib.importance(study, method=method, n_bootstrap=n_bootstrap, seed=seed)
    best = rows[int(np.argmin(oriented))] if rows else None
    warnings = []
    robust = {}
    # A range drawn from the few trials of a sweep too small to rank is luck, not advice.
    enough = len(rows) >= analysis.trials_needed(names)
    for name in names:
        robust[name] = analysis.robust_range(study, rows, mask, name) if enough else None
        if best is not None:
            text = analysis.edge_warning(study, name, best["hyperparameters"].get(name))
            if text:
                warnings.append(text)
    if study.tuner == "hyperband":
        warnings.append(
            "Hyperband trials ran for different numbers of epochs; their objective values are "
            "not all comparable, which blurs the per-knob plots and the importance."
        )

    statuses = study.statuses()
    failed_fraction = (
        float(np.mean(np.isin(statuses, ("failed", "invalid")))) if len(statuses) else 0.0
    )
    label = f"{study.objective} ({study.direction})"
    written = []
    values, running = analysis.best_so_far(study)
    if plots:
        if result is not None:
            written.append(draw.importance(result, out / "importance.png"))
        for name in names:
            written.append(
                draw.knob(
                    study, name, rows, display, sign, sign * threshold, robust[name],
                    out / f"hp_{_slug(name)}.png", label, noise=sigma,
                )
            )  # fmt: skip
        top = result.top_two if result is not None and len(result.names) >= 2 else None
        if top:
            written.append(draw.pair(study, top, rows, display, sign, out / "pair.png", label))
        written.append(draw.budget(sign * values, sign * running, sign, out / "budget.png", label))

    report = SensitivityReport(
        path=out / "report.md",
        ranking=list(result.names) if result is not None else None,
        importance=result,
        low_confidence=reasons,
        warnings=warnings,
        robust_ranges=robust,
        noise=sigma,
        failed_fraction=failed_fraction,
        best=best,
        plots=written,
    )
    markdown = _markdown(study, report, rows, mask, threshold, sign, noise_source, values, running)
    report.path.write_text(markdown, encoding="utf-8")
    return report


def _markdown(study, report, rows, mask, threshold, sign, noise_source, values, running):
    lines = [f"# Sensitivity report: `{study.directory.name}`", ""]
    counts = {
        s: int(np.sum(study.statuses() == s)) for s in ("completed", "stopped", "failed", "invalid")
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
            lines.append(
                f"| {rank} | `{name}` | {result.point[name]:.3f} | {interval} | {top_two} |"
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
            "robust ranges below use the best 10 % of trials instead."
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

    needed = analysis.trials_needed(list(report.robust_ranges))
    if len(rows) >= needed:
        about = "Robust range: where the trials within the noise of the best put the knob " + (
            "(within 2σ of the best)." if report.noise is not None else "(best 10 % of trials)."
        )
    else:
        about = (
            f"No robust range is given: {len(rows)} trial(s) with an objective value, fewer "
            f"than the {needed} this report needs for {len(report.robust_ranges)} "
            f"hyperparameter(s); a range drawn from the {int(mask.sum())} trial(s) near the "
            "best would be luck. Run more random-search trials."
        )
    lines += [
        "## Per hyperparameter",
        "",
        about,
        "",
        "| hyperparameter | searched | best | robust range |",
        "|---|---|---|---|",
    ]
    for name, robust in report.robust_ranges.items():
        spec = study.spec(name)
        searched = (
            f"{_fmt(spec['min'])} … {_fmt(spec['max'])}"
            + (" (log)" if spec["sampling"] == "log" else "")
            if analysis.is_numeric(spec)
            else ", ".join(str(v) for v in spec["values"] or [])
        )
        best_value = report.best["hyperparameters"].get(name) if report.best else None
        lines.append(
            f"| `{name}` | {searched} | {_fmt(best_value)} | {_range_text(spec, robust)} |"
        )
    lines.append("")
    for name in report.robust_ranges:
        lines.append(_image(report, name, f"hp_{_slug(name)}.png"))
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
    return "\n".join(lines)
