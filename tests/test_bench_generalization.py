"""Smoke test of bench/generalization.py: ``--quick`` runs and ends with the JSON line."""

import importlib.util
import json
import pathlib

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "generalization.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("generalization_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_ends_with_one_json_object(capsys):
    figures = load_bench().main(["--quick"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    assert figures["benchmark"] == "generalization"
    assert set(figures["ratios"]) == {"sam", "swa", "drop_path", "mixup"}
    assert set(figures["configs"]) == {"baseline", "sam", "swa", "drop_path", "mixup"}
    assert figures["configs"]["baseline"]["ratio"] == 1.0
    for name, ratio in figures["ratios"].items():
        assert ratio > 0 and figures["within_target"][name] == (ratio <= figures["targets"][name])
    assert {"environment", "settings", "params"} <= set(figures)
