"""Smoke test of bench/bad_input.py: two names, ends with one JSON object of the figures."""

import importlib.util
import json
import pathlib

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bad_input.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bad_input_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_names_end_with_one_json_object(capsys):
    figures = load_bench().main(["--only", "schedules.StepDecay,losses.SmoothL1"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    assert figures["names"] == 2 and set(figures["per_name"]) == {
        "schedules.StepDecay",
        "losses.SmoothL1",
    }
    counts = ("clear", "unclear", "silent", "hang", "accepted", "rejected")
    assert figures["tried"] == sum(figures[k] for k in counts) > 20
    assert figures["unclear"] == figures["silent"] == figures["hang"] == 0, figures["problems"]
    assert figures["problems"] == []
