"""recipes/tune_digits.py --quick: a short sweep writes the study, seeds.csv and the report."""

import csv
import importlib.util
import json
import pathlib

import pytest

RECIPE = pathlib.Path(__file__).resolve().parents[2] / "recipes" / "tune_digits.py"


def _load_recipe():
    spec = importlib.util.spec_from_file_location("tune_digits", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_sweep_writes_the_study_and_the_report(tmp_path, capsys):
    recipe = _load_recipe()
    out = tmp_path / "study"
    summary = recipe.main(["--quick", "--out", str(out)])

    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(summary))  # the JSON summary, last
    trials, epochs, seeds = recipe.QUICK
    rows = list(csv.DictReader((out / "trials.csv").read_text().splitlines()))
    assert [r["trial_id"] for r in rows] == [str(i) for i in range(trials)]
    assert summary["trials"] == trials and sum(summary["statuses"].values()) == trials
    assert all(int(r["epochs_run"]) <= epochs for r in rows)
    swept = [s["name"] for s in json.loads((out / "study.json").read_text())["hyperparameters"]]
    assert swept == [
        "learning_rate",
        "optimizer",
        "weight_decay",
        "dropout",
        "schedule",
        "batch_size",
        "depth",
        "width",
        "activation",
    ]
    for row in rows:
        assert (out / "trials" / row["trial_id"] / "curves.csv").exists()
    seed_rows = list(csv.DictReader((out / "seeds.csv").read_text().splitlines()))
    assert [r["seed"] for r in seed_rows] == [str(s) for s in range(seeds)]
    assert (out / "report" / "report.md").exists()
    assert list((out / "report").glob("*.png"))
    assert summary["low_confidence"] is True  # 8 trials cannot rank 6 knobs
    assert 0.5 < summary["test_accuracy"] <= 1.0
    best = min(rows, key=lambda r: float(r["objective"]) if r["objective"] else float("inf"))
    assert summary["best_trial"] == best["trial_id"]
    assert summary["best_hyperparameters"]["depth"] == 2


def test_arguments_are_checked():
    recipe = _load_recipe()
    with pytest.raises(SystemExit):
        recipe.parse_args(["--seeds", "2"])
    with pytest.raises(SystemExit):
        recipe.parse_args(["--trials", "0"])
    args = recipe.parse_args(["--quick"])
    assert (args.trials, args.epochs, args.seeds) == recipe.QUICK
    assert recipe.search_space(args).knob("width")["max"] == 64
