"""Smoke test of bench/schedule_overhead.py: ``--quick`` runs and ends with the JSON line."""

import importlib.util
import json
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "schedule_overhead.py"
# A schedule, a combinator and the callbacks (the full run covers every configuration).
CONFIGS = "cosine,epoch,callbacks+backup"


def load_bench():
    spec = importlib.util.spec_from_file_location("schedule_overhead", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_ends_with_one_json_object(capsys):
    figures = load_bench().main(["--quick", "--repeats", "1", "--configs", CONFIGS])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    assert {
        "configs",
        "target_ratio",
        "all_within_target",
        "worst",
        "settings",
        "environment",
    } <= set(figures)
    expected = {"baseline", *CONFIGS.split(",")}
    assert set(figures["configs"]) == expected
    for name, result in figures["configs"].items():
        assert result["steps_per_second"] > 0, name
        assert result["ratio"] > 0, name
    assert figures["configs"]["baseline"]["ratio"] == 1.0
    assert figures["environment"]["cpu_count"] >= 1
    assert figures["environment"]["keras"]


def test_unknown_config_is_refused(capsys):
    with pytest.raises(SystemExit):
        load_bench().parse_args(["--configs", "cosine,nope"])
    assert "nope" in capsys.readouterr().err
