"""Smoke test of bench/second_order.py: ``--quick`` runs and ends with the JSON line."""

import importlib.util
import json
import math
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "second_order.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("second_order_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_ends_with_one_json_object(capsys, tmp_path):
    # Adam and SOAP keep the smoke test short; the full run has every row.
    figures = load_bench().main(["--quick", "--optimizers", "adam,soap", "--out", str(tmp_path)])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == json.loads(json.dumps(figures))
    to_target = figures["steps_to_target"]
    assert set(to_target) == {"target_loss", "adam", "soap"}
    assert to_target["adam"]["steps_ratio"] == 1.0  # the reference
    assert to_target["adam"]["seeds_reaching_target"] == 3  # rerun_best's three seeds
    assert set(figures["step_time"]) == set(figures["refresh"]) == {"soap"}
    step = figures["step_time"]["soap"]
    assert step["ratio_to_adam"] > 0 and step["seconds_per_step"] > 0
    refresh = figures["refresh"]["soap"]
    assert refresh["refresh_every"] == 10
    for key in ("cond_seconds_per_step", "never_seconds_per_step", "always_seconds_per_step"):
        assert math.isfinite(refresh[key]) and refresh[key] > 0, key
    expected = refresh["never_seconds_per_step"] + refresh["refresh_seconds"] / 10
    assert math.isclose(refresh["host_choice_seconds_per_step_lower_bound"], expected)
    assert figures["environment"]["backend"] == "tensorflow"


def test_summary_must_hold_every_optimizer(tmp_path):
    # --summary takes steps to target from a recipe run; a row it lacks is an error, not a gap.
    summary = tmp_path / "summary.json"
    adam = {"best_learning_rate": 1e-3, "steps_to_target": [30, 0], "seconds_to_target": [1, 0]}
    outcome = {"target_loss": 0.3, "optimizers": {"adam": adam}}
    summary.write_text(json.dumps({"args": {}, "problems": {"autoencoder": outcome}}))
    with pytest.raises(ValueError, match=r"no autoencoder results for \['soap'\]"):
        load_bench().main(["--quick", "--optimizers", "adam,soap", "--summary", str(summary)])


@pytest.mark.slow
def test_kfac_costs_from_a_summary(capsys, tmp_path):
    # Steps to target from a (made-up) recipe summary; the step times are measured: the
    # fixed step, the adaptive step with the empirical Fisher, and the default.
    summary = tmp_path / "summary.json"
    row = {"best_learning_rate": 1e-3, "steps_to_target": [30, 0], "seconds_to_target": [1, 0],
           "seeds_reaching_target": 3, "final_loss": [0.3, 0]}  # fmt: skip
    outcome = {"target_loss": 0.3, "optimizers": {n: row for n in ("adam", "kfac", "kfac_fixed")}}
    summary.write_text(json.dumps({"args": {}, "problems": {"autoencoder": outcome}}))
    figures = load_bench().main(
        ["--quick", "--optimizers", "adam,kfac,kfac_fixed", "--summary", str(summary)]
    )
    assert set(figures["step_time"]) == {"kfac", "kfac_fixed", "kfac_adaptive_empirical"}
    costs, times = figures["kfac_costs"], figures["step_time"]
    seconds = {name: times[name]["seconds_per_step"] for name in times}
    assert math.isclose(
        costs["adaptive_over_fixed"], seconds["kfac_adaptive_empirical"] / seconds["kfac_fixed"]
    )
    assert math.isclose(costs["default_over_fixed"], seconds["kfac"] / seconds["kfac_fixed"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kfac_costs"] == costs
