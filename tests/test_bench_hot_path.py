"""Smoke test of bench/hot_path.py: ``--quick`` runs and ends with the JSON line."""

import importlib.util
import json
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "hot_path.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("hot_path", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(figures, backends):
    assert figures["benchmark"] == "hot_path"
    assert set(figures["backends"]) == set(backends)
    for backend in backends:
        (model,) = figures["backends"][backend]["models"].values()
        assert {
            "ratio",
            "noise",
            "fit_ratio",
            "cpu_ratio",
            "first_epoch",
            "backup_ms_per_save",
        } <= set(model)
        assert model["backup_saves"] == 3  # one per epoch
        assert model["ratio"] > 0 and model["backup_ms_per_save"] > 0
    assert figures["settings"]["stack"] == [
        "EarlyStopping",
        "ReduceLROnPlateau",
        "LearningRateMonitor",
        "GradientNormMonitor",
    ]


def test_quick_run_ends_with_one_json_object(capsys):
    figures = load_bench().main(["--quick", "--models", "mlp", "--backends", "tensorflow"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    _check(figures, ["tensorflow"])


@pytest.mark.slow
def test_quick_run_on_jax_in_a_subprocess(capsys):
    pytest.importorskip("jax")
    figures = load_bench().main(["--quick", "--models", "mlp", "--backends", "jax"])
    _check(figures, ["jax"])
    assert figures["backends"]["jax"]["environment"]["backend"] == "jax"
