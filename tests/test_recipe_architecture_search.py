"""Smoke test of recipes/architecture_search.py (``--quick``): ends with the JSON summary."""

import importlib.util
import json
import pathlib

import pytest

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "architecture_search.py"


@pytest.mark.slow
def test_quick_run_ends_with_the_summary(tmp_path, capsys):
    pytest.importorskip("mnist1d")
    spec = importlib.util.spec_from_file_location("architecture_search", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.main(["--quick", "--out", str(tmp_path)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
    assert set(summary["searchers"]) == {"random", "evolution"}
    assert summary["pareto_front"] and (tmp_path / "pareto.png").exists()
    for result in [*summary["searchers"].values(), summary["hand_designed"]]:
        assert 0.0 <= result["test_accuracy_mean"] <= 1.0 and result["params"] > 0
