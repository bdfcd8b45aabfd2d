"""The sensitivity report: which knobs matter, where they are safe, and how noisy it all is."""

import dataclasses
import pathlib

import numpy as np

from nnkit import _validation as v
from nnkit._validation import check_int, check_one_of
from nnkit.tuning import _advice, _confounding, _surrogate, analysis
from nnkit.tuning import _report_text as text
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
    warnings: list  # edge-of-range, confounding, left-out conditional knobs, ...
    robust_ranges: dict  # knob -> (low, high), the list of good choices, or None
    noise: float | None  # the objective's standard deviation over seeds
    failed_fraction: float
    best: dict | None  # the best trial's row
    plots: list  # PNG paths
    # knob -> nnkit.tuning._surrogate.RobustRange (the fitted curve, the ends' 90 %
    # intervals) for numeric knobs with a range; None otherwise
    range_details: dict = dataclasses.field(default_factory=dict)
    range_missing: dict = dataclasses.field(default_factory=dict)  # knob -> why no range
    confounded: list = dataclasses.field(default_factory=list)  # _confounding.Confounding
    left_out: dict = dataclasses.field(default_factory=dict)  # conditional knob -> active trials
    next_steps: list = dataclasses.field(default_factory=list)  # "what to do next" items

    @property
    def next_step_line(self):
        """The closing line of the report: ``What to do next: ...``."""
        return _advice.line(self.next_steps)


def sensitivity_report(
    study_dir, *, method="fanova", n_bootstrap=30, seed=0, output_dir=None, plots=True
):
    """Write ``report.md`` and PNG plots about a study directory; return what it found.

    The report ranks the hyperparameters by importance (Optuna's fANOVA or
    PED-ANOVA evaluator fed with the recorded trials, with a bootstrap interval
    over trials), or warns "low confidence" instead when there are fewer than
    about 15 trials per hyperparameter or the trials came from a model-based
    sampler concentrated in one region. A conditional knob (``sam_rho``, active
    only when ``sam`` is on) is judged only over the trials where it is active:
    it does not raise the trials a ranking needs, it needs 15 active trials of
    its own, and is left out of the ranking, with a warning, without them.

    Per hyperparameter it fits the objective against the value with a smooth
    curve between the observed points (local-linear, ``_surrogate``) and gives
    the **robust range**: where the curve stays within 2σ (seed-to-seed) of its
    minimum, or within a tenth of the gap between the median trial and the
    best when the noise is unknown; each end comes with a 90 % bootstrap
    interval. A range needs 5 trials where the knob is active per knob varied
    in them, so a one-knob grid of 7 rates gets one; without them the report
    says why. It warns when the best value lies at an edge of the searched
    range, and when a knob's apparent importance is explained by its
    correlation with another knob in the sampled trials (``_confounding``:
    rerun with that knob fixed). It also draws the top pair against each
    other, the best-so-far against the trial number (with the failed
    fraction), states the noise floor from ``seeds.csv`` (``rerun_best``), and
    ends with one "What to do next" line (run more trials, fix these knobs,
    restrict or widen those ranges). Trials stopped early by the median rule
    count with the value they reached; failed trials count only in the failed
    fraction.

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
        >>> low, high = report.robust_ranges["learning_rate"]
        >>> 1e-3 < low < 1e-2 < high < 1e-1
        True
        >>> report.next_step_line.startswith("What to do next:")
        True
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
    active = analysis.active_counts(rows, names)
    reasons = analysis.confidence_reasons(study, rows, names, active)
    left_out = analysis.left_out(study, names, active)
    ranked = [n for n in names if n not in left_out]
    result = None
    if not reasons and ranked:
        result = importance_lib.importance(
            study, method=method, n_bootstrap=n_bootstrap, seed=seed, names=ranked
        )
    best = rows[int(np.argmin(oriented))] if rows else None
    warnings = [
        f"`{name}` is active in {count} of the {len(rows)} trials ({analysis.condition_text(study, name)}); "
        f"it is judged only over those, and needs {analysis.MIN_TRIALS_PER_KNOB} of them: it is "
        "left out of the ranking."
        for name, count in left_out.items()
    ]
    confounded = _confounding.find(study, rows, names, oriented) if len(rows) else []
    for c in confounded:
        warnings.append(_confounding.sentence(c, best["hyperparameters"].get(c.by)))
    tol = (
        _surrogate.tolerance(oriented, sigma, analysis.NOISE_MULTIPLIER, analysis.GAP_FRACTION)
        if len(rows)
        else 0.0
    )
    robust, details, missing, edges = {}, {}, {}, []
    for name in names:
        why = analysis.range_support(study, rows, names, name, active)
        widen = sigma is None and len(names) > 1  # the other knobs act as noise on its curve
        found = (
            None
            if why
            else analysis.robust_range(study, rows, oriented, name, tol, seed=seed, widen=widen)
        )
        if why is None and found is None:
            why = "fewer than 3 distinct values tried"
        missing[name] = why
        details[name] = found if isinstance(found, _surrogate.RobustRange) else None
        robust[name] = (found.low, found.high) if details[name] is not None else found
        if best is not None:
            side = analysis.edge_side(study, name, best["hyperparameters"].get(name))
            if side:
                edges.append((name, side))
                warnings.append(analysis.edge_warning(study, name, best["hyperparameters"][name]))
    for name in _advice.negligible(result, confounded):
        spec = study.spec(name)
        if spec["type"] in ("float", "int"):  # any value does as well: the whole range
            robust[name], details[name] = (spec["min"], spec["max"]), None
            missing[name] = f"any value: importance under {_advice.FIX_BELOW:.0%}"
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
                    out / f"hp_{text.slug(name)}.png", label, noise=sigma,
                    curve=None if details[name] is None else details[name].curve,
                )
            )  # fmt: skip
        top = result.top_two if result is not None and len(result.names) >= 2 else None
        if top:
            written.append(draw.pair(study, top, rows, display, sign, out / "pair.png", label))
        written.append(draw.budget(sign * values, sign * running, sign, out / "budget.png", label))

    steps = _advice.next_steps(
        study, n_rows=len(rows), reasons=reasons, needed=analysis.trials_needed(study, names),
        left_out=left_out, confounded=confounded, edges=edges, result=result,
        ranges={n: details[n] or robust[n] for n in names},
        noise=sigma, best=best,
    )  # fmt: skip
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
        range_details=details,
        range_missing=missing,
        confounded=confounded,
        left_out=left_out,
        next_steps=steps,
    )
    markdown = text.markdown(
        study, report, rows, mask, threshold, sign, noise_source, values, running
    )
    report.path.write_text(markdown, encoding="utf-8")
    return report
