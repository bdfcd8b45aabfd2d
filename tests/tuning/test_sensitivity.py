"""The sensitivity report on small hand-made studies: every section, every warning."""

import io
import math
import subprocess
import sys

import numpy as np
import pytest

from nnkit.tuning import sensitivity_report
from nnkit.tuning._study import study_header, write_seeds, write_study
from nnkit.tuning._study_read import read_study
from nnkit.tuning._synthetic import write_random_study
from nnkit.tuning.cli import main

SPECS = [
    {"name": "lr", "type": "float", "min": 1e-4, "max": 1e-1, "sampling": "log"},
    {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5, "default": 0.25},
]


def _bowl(v, rng):
    # Optimum mid-range in log10(lr); dropout matters a little.
    return (math.log10(v["lr"]) + 2.5) ** 2 + 0.3 * v["dropout"] + 0.02 * rng.normal()


def _rows(study_dir):
    study = read_study(study_dir)
    return study, [t for t in study.trials if t["objective"] is not None]


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_files_and_ranking(tmp_path):
    write_random_study(tmp_path, SPECS, _bowl, n_trials=40, seed=0)
    report = sensitivity_report(tmp_path, n_bootstrap=3)
    assert report.path == tmp_path / "report" / "report.md"
    assert report.ranking == ["lr", "dropout"]
    assert not report.low_confidence
    names = sorted(p.name for p in report.plots)
    assert names == ["budget.png", "hp_dropout.png", "hp_lr.png", "importance.png", "pair.png"]
    assert all(_is_png(p) for p in report.plots)
    text = report.path.read_text()
    assert "FanovaImportanceEvaluator" in text and "seed 0" in text
    assert "| 1 | `lr` |" in text and "| 2 | `dropout` |" in text
    for image in names:
        assert f"({image})" in text
    assert "## Top pair: `lr` × `dropout`" in text
    assert "Noise: unknown" in text  # no seeds.csv, one execution per trial


def test_markdown_only(tmp_path):
    write_random_study(tmp_path, SPECS, _bowl, n_trials=40, seed=0)
    report = sensitivity_report(tmp_path, n_bootstrap=0, plots=False)
    assert report.plots == [] and not list(report.path.parent.glob("*.png"))
    assert "![" not in report.path.read_text()
    assert report.ranking == ["lr", "dropout"]


def test_ped_anova_is_named(tmp_path):
    write_random_study(tmp_path, SPECS, _bowl, n_trials=40, seed=0)
    report = sensitivity_report(
        tmp_path, method="ped-anova", n_bootstrap=0, output_dir=tmp_path / "o"
    )
    assert report.path.parent == tmp_path / "o"
    assert "PedAnovaImportanceEvaluator" in report.path.read_text()
    assert report.ranking[0] == "lr"


def test_noise_floor_from_seeds_sets_the_robust_range(tmp_path):
    write_random_study(tmp_path, SPECS, _bowl, n_trials=40, seed=1)
    write_seeds(tmp_path, [{"seed": s, "objective": v} for s, v in enumerate([0.1, 0.3, 0.5])])
    report = sensitivity_report(tmp_path, n_bootstrap=0)
    assert report.noise == pytest.approx(0.2)  # sample std of 0.1, 0.3, 0.5
    study, rows = _rows(tmp_path)
    objective = np.array([t["objective"] for t in rows])
    near = objective <= objective.min() + 2 * 0.2
    # The curve in lr is (log10 lr + 2.5)^2 + const: within 2σ = 0.4 of its minimum where
    # |log10 lr + 2.5| <= sqrt(0.4).
    low, high = np.log10(report.robust_ranges["lr"])
    assert low == pytest.approx(-2.5 - math.sqrt(0.4), abs=0.1)
    assert high == pytest.approx(-2.5 + math.sqrt(0.4), abs=0.1)
    assert report.best["objective"] == objective.min()
    text = report.path.read_text()
    assert "σ = 0.2 (standard deviation over 3 seeds" in text
    assert f"{int(near.sum())} trial(s) are within 2σ of the best" in text
    assert "stays within 2σ of its minimum" in text


def test_noise_floor_pooled_over_executions(tmp_path):
    header = study_header(SPECS[:1])
    runs = [[1.0, 1.2], [2.0, 2.6, 2.3], [3.0]]
    trials = [
        {"trial_id": str(i), "status": "completed", "hyperparameters": {"lr": 10.0 ** -(i + 1)},
         "executions": [{"seed": k, "best_epoch": 0, "best": {"val_loss": v}} for k, v in
                        enumerate(values)],
         "objective": float(np.mean(values))}
        for i, values in enumerate(runs)
    ]  # fmt: skip
    write_study(tmp_path, header, trials)
    report = sensitivity_report(tmp_path, n_bootstrap=0)
    deviations = np.concatenate([np.array(r) - np.mean(r) for r in runs])
    pooled = math.sqrt(np.sum(deviations**2) / (1 + 2))
    assert report.noise == pytest.approx(pooled)
    assert "pooled standard deviation between executions" in report.path.read_text()


def test_without_noise_the_robust_range_is_a_tenth_of_the_median_gap(tmp_path):
    write_random_study(tmp_path, SPECS, _bowl, n_trials=40, seed=2)
    report = sensitivity_report(tmp_path, n_bootstrap=0)
    _, rows = _rows(tmp_path)
    objective = np.array([t["objective"] for t in rows])
    tol = 0.1 * (np.median(objective) - objective.min())
    low, high = np.log10(report.robust_ranges["lr"])
    # At least the closed form's range; wider by the curve's own uncertainty (noise
    # unknown, dropout varied too), but not by more than a quarter of a decade a side.
    assert -2.5 - math.sqrt(tol) - 0.25 < low < -2.5 - math.sqrt(tol) + 0.05
    assert -2.5 + math.sqrt(tol) - 0.05 < high < -2.5 + math.sqrt(tol) + 0.25
    assert "a tenth of the gap between the median trial and the best" in report.path.read_text()


def test_edge_warning(tmp_path):
    def rising(v, rng):  # best at the lowest learning rate and any dropout
        return math.log10(v["lr"]) + 0.01 * rng.normal()

    write_random_study(tmp_path, SPECS, rising, n_trials=40, seed=0)
    report = sensitivity_report(tmp_path, n_bootstrap=0)
    best_lr = report.best["hyperparameters"]["lr"]
    assert (math.log10(best_lr) + 4) / 3 <= 0.05  # independent check that it is at the edge
    assert any("`lr`" in w and "lower edge" in w for w in report.warnings)
    best_dropout = report.best["hyperparameters"]["dropout"]
    assert any("`dropout`" in w for w in report.warnings) == (not 0.025 < best_dropout < 0.475)
    assert "## Warnings" in report.path.read_text()


def test_mid_range_optimum_gives_no_edge_warning(tmp_path):
    write_random_study(
        tmp_path, SPECS[:1], lambda v, rng: (math.log10(v["lr"]) + 2.5) ** 2, n_trials=30, seed=0
    )
    assert sensitivity_report(tmp_path, n_bootstrap=0).warnings == []


def test_failed_trials_and_budget(tmp_path):
    def sometimes_diverges(v, rng):
        return math.nan if v["lr"] > 0.03 else _bowl(v, rng)

    write_random_study(tmp_path, SPECS, sometimes_diverges, n_trials=40, seed=0)
    study, rows = _rows(tmp_path)
    n_failed = sum(t["status"] == "failed" for t in study.trials)
    assert n_failed > 0
    report = sensitivity_report(tmp_path, n_bootstrap=0)
    assert report.failed_fraction == pytest.approx(n_failed / 40)
    text = report.path.read_text()
    assert f"Failed trials: {n_failed / 40:.0%} ({n_failed} failed" in text
    assert f"{n_failed} × The objective became NaN." in text
    objective = [t["objective"] if t["objective"] is not None else np.inf for t in study.trials]
    first_best = int(np.argmin(objective)) + 1
    found = study.trials[first_best - 1]["trial_id"]
    assert f"The best (trial `{found}`) came after {first_best} of the 40 trials run." in text


def test_maximised_objective(tmp_path):
    header = study_header(SPECS[:1], objective="val_accuracy", direction="max")
    trials = [
        {"trial_id": str(i), "status": "completed", "hyperparameters": {"lr": lr},
         "executions": [], "objective": acc}
        for i, (lr, acc) in enumerate([(1e-3, 0.9), (1e-2, 0.95), (3e-2, 0.7)])
    ]  # fmt: skip
    write_study(tmp_path, header, trials)
    report = sensitivity_report(tmp_path, n_bootstrap=0)
    assert report.best["objective"] == 0.95
    assert "higher is better" in report.path.read_text()


def test_default_configuration_compared_against_noise(tmp_path):
    header = study_header(SPECS)
    values = [(1e-4, 0.0, 1.0), (3e-3, 0.1, 0.2), (1e-2, 0.4, 0.5)]
    trials = [
        {"trial_id": str(i), "status": "completed",
         "hyperparameters": {"lr": lr, "dropout": d}, "executions": [], "objective": y}
        for i, (lr, d, y) in enumerate(values)
    ]  # fmt: skip
    # trial 0 runs the defaults (lr=min, dropout=0.25 is not it) -> make one that does:
    trials[0]["hyperparameters"]["dropout"] = 0.25
    write_study(tmp_path, header, trials)
    write_seeds(tmp_path, [{"seed": s, "objective": v} for s, v in enumerate([0.2, 0.25, 0.3])])
    text = sensitivity_report(tmp_path, n_bootstrap=0).path.read_text()
    assert "The default configuration (trial `0`) reached 1" in text
    assert "better by 0.8, above noise" in text


@pytest.mark.parametrize("tuner", ["bayesian", "random"])
def test_model_based_or_concentrated_sampling_is_low_confidence(tmp_path, tuner):
    header = study_header(SPECS, tuner=tuner)
    rng = np.random.default_rng(0)
    trials = [
        {"trial_id": str(i), "status": "completed",
         # Concentrated: lr within a factor 1.5 around 3e-3, dropout spread out.
         "hyperparameters": {"lr": 3e-3 * 1.5 ** rng.uniform(-1, 1),
                             "dropout": rng.uniform(0, 0.5)},
         "executions": [], "objective": float(rng.normal())}
        for i in range(60)
    ]  # fmt: skip
    write_study(tmp_path, header, trials)
    report = sensitivity_report(tmp_path, n_bootstrap=0)
    assert report.ranking is None
    reasons = " ".join(report.low_confidence)
    assert "concentrated" in reasons and "`lr`" in reasons and "`dropout`" not in reasons
    assert ("model-based" in reasons) == (tuner == "bayesian")
    assert "Low confidence" in report.path.read_text()


def test_hyperband_note(tmp_path):
    write_random_study(tmp_path, SPECS, _bowl, n_trials=12, seed=0, tuner="hyperband")
    report = sensitivity_report(tmp_path, n_bootstrap=0)
    assert any("Hyperband" in w for w in report.warnings)


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="study.json"):
        sensitivity_report(tmp_path)
    write_random_study(tmp_path, SPECS, _bowl, n_trials=3, seed=0)
    with pytest.raises(ValueError, match="method='shap'"):
        sensitivity_report(tmp_path, method="shap")
    with pytest.raises(ValueError, match="n_bootstrap=-2"):
        sensitivity_report(tmp_path, n_bootstrap=-2)


def test_cli_main(tmp_path):
    write_random_study(tmp_path, SPECS, _bowl, n_trials=40, seed=0)
    out = io.StringIO()
    assert main([str(tmp_path), "--bootstrap", "0", "--method", "fanova"], stdout=out) == 0
    assert f"wrote {tmp_path / 'report' / 'report.md'}" in out.getvalue()
    assert "ranking: lr, dropout" in out.getvalue()


@pytest.mark.slow  # a fresh interpreter imports TensorFlow (nnkit.tuning imports Keras)
def test_python_dash_m_and_lazy_optuna(tmp_path):
    """`python -m nnkit.tuning DIR` works; `import nnkit.tuning` does not import Optuna."""
    write_random_study(tmp_path, SPECS, _bowl, n_trials=5, seed=0)
    code = (
        "import runpy, sys\n"
        "import nnkit.tuning\n"
        "lazy = 'optuna' not in sys.modules\n"
        f"sys.argv = ['nnkit-sensitivity', {str(tmp_path)!r}, '--bootstrap', '0']\n"
        "try:\n"
        "    runpy.run_module('nnkit.tuning', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, 'lazy', lazy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOW CONFIDENCE" in done.stdout
    assert done.stdout.strip().endswith("exit 0 lazy True")
    assert (tmp_path / "report" / "report.md").exists()


def _tiny_sweep(tmp_path):
    """The issue's tiny sweep: 12 trials with keras-tuner's ids ``00``..``11``, best at ``01``."""
    header = study_header(SPECS[:1])
    lrs = np.geomspace(1e-4, 1e-1, 12)
    objectives = [(math.log10(lr) + 2.5) ** 2 for lr in lrs]
    objectives[1] = -1.0  # the best, the second trial run
    trials = [
        {"trial_id": f"{i:02d}", "status": "completed", "hyperparameters": {"lr": float(lr)},
         "executions": [], "objective": float(y)}
        for i, (lr, y) in enumerate(zip(lrs, objectives, strict=True))
    ]  # fmt: skip
    write_study(tmp_path, header, trials)


def test_one_trial_numbering(tmp_path):
    _tiny_sweep(tmp_path)
    text = sensitivity_report(tmp_path, n_bootstrap=0, plots=False).path.read_text()
    assert "Best: trial `01`" in text
    assert "The best (trial `01`) came after 2 of the 12 trials run." in text
    assert "found at trial 2" not in text


def test_a_sweep_too_small_to_rank_still_gets_a_range_between_its_points(tmp_path):
    _tiny_sweep(tmp_path)
    report = sensitivity_report(tmp_path, n_bootstrap=0, plots=False)
    assert report.ranking is None and report.low_confidence  # "Low confidence: no ranking"
    low, high = report.robust_ranges["lr"]
    assert low < high  # a range, not one observed value
    text = report.path.read_text()
    assert "Low confidence" in text
    assert "| `lr` | 0.0001 … 0.1 (log) | 0.0001874 | " in text
    assert "Run more" not in report.next_step_line  # one knob needs no ranking


def test_no_robust_range_from_too_few_trials_per_knob(tmp_path):
    write_random_study(tmp_path, SPECS, _bowl, n_trials=8, seed=0)
    report = sensitivity_report(tmp_path, n_bootstrap=0, plots=False)
    assert report.robust_ranges == {"lr": None, "dropout": None}
    assert (
        "8 trial(s) where it is active, fewer than the 10 a range needs"
        in (report.range_missing["lr"])
    )
    assert "none: 8 trial(s)" in report.path.read_text()


@pytest.mark.parametrize("seeds", [False, True])
def test_every_line_of_a_knob_plot_is_in_its_legend(tmp_path, monkeypatch, seeds):
    from nnkit.tuning import plots

    write_random_study(tmp_path, SPECS, _bowl, n_trials=40, seed=0)
    if seeds:
        write_seeds(tmp_path, [{"seed": s, "objective": v} for s, v in enumerate([0.1, 0.2, 0.3])])
    figures = {}
    save = plots._save

    def keep(figure, path, **kwargs):
        figures[path.name] = figure
        return save(figure, path, **kwargs)

    monkeypatch.setattr(plots, "_save", keep)
    sensitivity_report(tmp_path, n_bootstrap=0)
    knob_plots = sorted(name for name in figures if name.startswith("hp_"))
    assert knob_plots == ["hp_dropout.png", "hp_lr.png"]
    for name in knob_plots:
        (axes,) = figures[name].axes
        drawn = [*axes.lines, *axes.collections, *axes.patches]
        assert any(line.get_linestyle() == "--" for line in axes.lines)  # the threshold
        labels = [artist.get_label() for artist in drawn]
        assert not [label for label in labels if label.startswith("_")], (name, labels)
        legend = [text.get_text() for text in axes.get_legend().get_texts()]
        assert sorted(legend) == sorted(labels), name
        expected = "within 2σ of the best" if seeds else "best 10 % cut-off"
        assert expected in legend


def test_no_bootstrap_gives_importances_without_intervals_not_nan(tmp_path):
    write_random_study(tmp_path, SPECS, _bowl, n_trials=40, seed=0)
    report = sensitivity_report(tmp_path, n_bootstrap=0, plots=False)
    text = report.path.read_text()
    assert "nan" not in text.lower()
    assert "No bootstrap resamples (n_bootstrap=0)" in text
    assert "| 1 | `lr` |" in text


def test_a_best_value_at_the_end_of_a_numeric_choice_grid_is_warned(tmp_path):
    grid = [0.001, 0.003, 0.01, 0.03]
    specs = [{"name": "lr", "type": "choice", "values": grid}]
    write_random_study(tmp_path, specs, lambda v, rng: -v["lr"] + 0.001 * rng.normal(),
                       n_trials=20, seed=0)  # fmt: skip
    report = sensitivity_report(tmp_path, n_bootstrap=0, plots=False)
    assert any("highest of its choices" in w and "`lr` (0.03)" in w for w in report.warnings)
