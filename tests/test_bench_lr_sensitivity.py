"""Smoke test of bench/lr_sensitivity.py: tiny sizes run and end with the JSON line."""

import importlib.util
import json
import math
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "lr_sensitivity.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("lr_sensitivity_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_ends_with_one_json_object(capsys):
    figures = load_bench().main(["--quick", "--problems", "digits_mlp", "--epochs", "1"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == json.loads(json.dumps(figures))
    mlp = figures["lr_find_vs_sweep"]["digits_mlp"]
    assert len(mlp["sweep"]) == 3 and mlp["finder_steps"] <= 20
    assert mlp["trial_steps"] == 22  # one epoch of 1,400 examples at batch 64
    assert math.isclose(mlp["finder_steps_ratio"], mlp["finder_steps"] / 22)
    assert mlp["best_swept_loss"] == min(mlp["sweep"].values())
    assert mlp["within_10pct"] == (mlp["loss_at_suggestion"] <= 1.1 * mlp["best_swept_loss"])
    assert mlp["suggestion_rule"] == "minimum"  # lr_find's default rule
    rule = mlp["rules"][mlp["suggestion_rule"]]
    assert rule["suggestions"][0] == mlp["suggestion"]
    assert rule["losses"][0] == mlp["loss_at_suggestion"]
    assert set(figures["lr_find_rules"]) == {"steepest", "minimum", "valley"}
    assert all(v["runs"] == 1 for v in figures["lr_find_rules"].values())
    race = figures["one_cycle_vs_cosine"]
    assert race["seeds"] == 2 and len(race["one_cycle"]["values"]) == 2
    for name in ("one_cycle", "cosine"):  # each peak is the best of its own sweep
        sweep = race[name]["peak_sweep"]
        assert len(sweep) == 2 and sweep[repr(race[name]["peak_learning_rate"])] == min(
            sweep.values()
        )
    assert race["winner"] in ("one_cycle", "cosine")
    report = figures["unused_knob_report"]
    assert report["ranking"] is None and report["low_confidence"]  # 4 trials cannot rank 4
    assert report["next_steps"].startswith("What to do next:")
    assert figures["environment"]["backend"] == "tensorflow"
