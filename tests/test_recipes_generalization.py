"""recipes/generalization.py in its quick mode: every technique runs and every output is written."""

import importlib.util
import json
import pathlib

import matplotlib.image
import numpy as np
import pytest

RECIPES = pathlib.Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("generalization", RECIPES / "generalization.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_every_output(recipe, tmp_path, capsys):
    out = tmp_path / "generalization"
    metrics = recipe.main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "baseline learning rate" in printed and "mean ± std" in printed
    assert "baseline wins" in printed or "helped" in printed or "no clear winner" in printed
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert set(written["runs"]["clean"]) == set(recipe.TECHNIQUES)
    assert set(written["runs"]["noisy"]) == set(recipe.NOISY_TECHNIQUES)
    for scenario in written["runs"].values():
        for accuracies in scenario.values():
            assert len(accuracies) == 1 and all(0.0 <= a <= 1.0 for a in accuracies)
    row = written["summary"]["clean"]["sam"]
    want = np.mean(written["runs"]["clean"]["sam"]) - np.mean(written["runs"]["clean"]["baseline"])
    assert row["vs_baseline"] == pytest.approx(want)
    assert matplotlib.image.imread(out / "accuracy.png").shape[0] > 100


def test_noisy_labels_flip_a_fifth_to_another_class(recipe):
    data = recipe.load_data(0.5)
    (_, clean), (_, noisy) = data["train"], data["noisy"]
    flipped = clean != noisy
    assert abs(flipped.mean() - recipe.NOISE) < 0.04
    assert len(data["test"][0]) + len(clean) == 1797


def test_help_and_bad_arguments(recipe, capsys):
    with pytest.raises(SystemExit):
        recipe.parse_args(["--help"])
    assert "--rho" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        recipe.parse_args(["--epochs", "0"])
