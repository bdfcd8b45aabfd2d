"""Smoke test of bench/preemption_latency.py: one real SIGTERM per policy, ends with the JSON line."""

import importlib.util
import json
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "preemption_latency.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("preemption_latency", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_one_signal_per_policy_ends_with_one_json_object(capsys):
    figures = load_bench().main(["--trials", "1", "--epoch-seconds", "0.5"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    for policy in ("next_step", "grace_30s"):
        (run,) = figures[policy]["runs"]
        assert 0 <= run["stop_s"] <= run["exit_s"] and run["resume_epoch"] >= 1
    assert figures["hook_call_us"] > 0 and set(figures["fit_step_us"]) == {"with", "without"}


@pytest.mark.parametrize("argv", [["--trials", "0"], ["--epoch-seconds", "0"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        load_bench().parse_args(argv)
    assert capsys.readouterr().err
