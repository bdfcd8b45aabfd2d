"""The meta-learning recipes in their quick modes, and the digits recipe's baseline by hand."""

import importlib.util
import json
import pathlib

import matplotlib.image
import numpy as np
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


@pytest.mark.slow
def test_meta_digits_quick_run(tmp_path, capsys):
    recipe = _load("meta_digits")
    metrics = recipe.main(["--quick", "--out", str(tmp_path)])
    assert set(metrics["results"]) == {"1", "5"}
    for by_method in metrics["results"].values():
        assert set(by_method) == set(recipe.METHODS)
        for score in by_method.values():
            assert len(score["seeds"]) == 1 and 0 <= score["mean"] <= 1
    assert set(metrics["best"].values()) <= set(recipe.METHODS)
    assert json.loads((tmp_path / "metrics.json").read_text())["best"] == metrics["best"]
    assert matplotlib.image.imread(tmp_path / "accuracy.png").ndim == 3
    out = capsys.readouterr().out
    assert "1-shot:" in out and "5-shot:" in out and "wins" in out


def test_meta_digits_centroid_baseline_against_a_hand_computed_task():
    recipe = _load("meta_digits")
    # One 5-way task in 2-D: class c has its two support points at (4c, ±1), mean (4c, 0).
    support = np.array([[[4.0 * c, sign] for c in range(5) for sign in (1.0, -1.0)]])
    y_support = np.repeat(np.arange(5), 2)[None]
    # Midway between classes 1 and 2 lies x = 6: 5.9 is nearest class 1, 6.1 class 2.
    query = np.array([[[5.9, 0.0], [6.1, 0.0], [16.5, 3.0], [-3.0, 0.0]]])
    truth = np.array([[1, 2, 4, 3]])  # the last is nearest class 0: wrong on purpose
    assert recipe.centroid_accuracy(support, y_support, query, truth) == pytest.approx(3 / 4)
