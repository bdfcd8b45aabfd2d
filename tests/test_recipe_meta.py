"""recipes/meta_sinusoid.py in its quick mode: every method scored, every output written."""

import importlib.util
import json
import pathlib

import matplotlib.image
import pytest

RECIPES = pathlib.Path(__file__).resolve().parents[1] / "recipes"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_meta_sinusoid_quick_run(tmp_path, capsys):
    recipe = _load("meta_sinusoid")
    metrics = recipe.main(["--quick", "--out", str(tmp_path)])
    assert set(metrics["results"]) == set(recipe.METHODS)
    for by_steps in metrics["results"].values():
        assert set(by_steps) == {"0", "1", "10"}
        for score in by_steps.values():
            assert len(score["seeds"]) == 1 and score["mean"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["best"] == metrics["best"]
    assert matplotlib.image.imread(tmp_path / "adapted.png").ndim == 3
    out = capsys.readouterr().out
    assert "after 10 steps:" in out and "pretrained" in out
