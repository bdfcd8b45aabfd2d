"""Smoke test of bench/accumulation.py: ``--quick`` ends with the JSON line, accumulation exact."""

import importlib.util
import json
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "accumulation.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("accumulation_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_ends_with_one_json_object(capsys):
    figures = load_bench().main(["--quick"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    assert set(figures["time"]) == {"mirrored", "one_device"}
    for differences in figures["max_weight_difference_20_updates"].values():
        assert max(differences.values()) < 1e-5


@pytest.mark.parametrize("argv", [["--updates", "0"], ["--repeats", "0"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        load_bench().parse_args(argv)
    assert capsys.readouterr().err
