import json
import struct

import numpy as np
import pytest

from nnkit.diagnostics import GradientReport, diagnose

STEPS = np.arange(0, 100, 10)
NAMES = ["model/dense", "model/dense_1", "model/dense_2"]


def _report():
    g = np.ones((10, 3))
    g[:, 0] = 1e-8
    g[6:, 2] = 50.0  # the global norm jumps > 10x at step 60
    g[9, 1] = np.nan
    ratios = np.full((10, 3), 1e-3)
    return diagnose(STEPS, NAMES, g, update_ratios=ratios)


def test_to_dict_is_plain_json():
    report = _report()
    data = report.to_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["samples"] == 10 and (data["first_step"], data["last_step"]) == (0, 90)
    assert [row["layer"] for row in data["layers"]] == NAMES
    assert data["layers"][0]["flags"] == ["vanishing"]
    kinds = [flag["kind"] for flag in data["flags"]]
    assert kinds == ["nonfinite", "exploding", "vanishing"]
    assert data["flags"][1]["layer"] is None and data["rules"]["window"] == 5


def test_str_is_a_table_with_flags_and_suggestions():
    text = str(_report())
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "median", "|g|", "max", "|g|", "median", "Δw/w", "flags"]
    assert lines[1].startswith("model/dense ") and lines[1].endswith("vanishing")
    assert "1.00e-08" in lines[1] and "1.00e-03" in lines[1]
    assert "[exploding] (global) from step 60" in text
    assert "[vanishing] model/dense from step 0" in text
    assert "suggestions:" in text and "global_clipnorm" in text
    assert "flags=['nonfinite', 'exploding', 'vanishing']" in repr(_report())


def test_healthy_report_says_so():
    report = diagnose(STEPS, NAMES, np.ones((10, 3)))
    assert isinstance(report, GradientReport)
    assert "flags: none" in str(report) and "suggestions" not in str(report)


def _png_size(path):
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "norms.png"
    assert _report().plot(path) == str(path)
    width, height = _png_size(path)
    assert 400 <= width <= 2000 and 150 <= height <= 2000


def test_plot_of_an_empty_report(tmp_path):
    report = diagnose(np.zeros((0,), int), NAMES, np.zeros((0, 3)))
    width, height = _png_size(report.plot(str(tmp_path / "empty.png")))
    assert width > 0 and height > 0


def test_plot_rejects_a_non_path():
    with pytest.raises(TypeError, match="Received: path=3"):
        _report().plot(3)


def _heatmap_ticks(monkeypatch, tmp_path, steps):
    """The step ticks of ``report.plot``'s figure: ``[(column, label), ...]``."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig

    def keep(figure, *args, **kwargs):
        figures.append(figure)
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    diagnose(steps, NAMES, np.ones((len(steps), 3))).plot(tmp_path / "norms.png")
    axes = figures[0].axes[0]
    labels = axes.get_xticklabels()
    return [(float(x), t.get_text()) for x, t in zip(axes.get_xticks(), labels, strict=True)]


@pytest.mark.parametrize(
    "steps",
    [
        np.arange(0, 100, 10),  # the run: ticks were 0 10 20 30 50 60 70 90
        np.arange(0, 330, 10),
        # every 10th step plus each epoch's last one (25 steps per epoch, sample_every=10)
        np.array([0, 10, 20, 24, 30, 40, 49, 50, 60, 70, 74]),
    ],
)
def test_heatmap_step_ticks_are_regular(monkeypatch, tmp_path, steps):
    ticks = _heatmap_ticks(monkeypatch, tmp_path, steps)
    values = np.array([int(label) for _, label in ticks])
    assert 3 <= len(values) <= 9
    gaps = np.diff(values)
    assert np.all(gaps == gaps[0]) and gaps[0] > 0, values
    assert values[0] >= steps[0] and values[-1] <= steps[-1]
    # each tick sits where its step falls between the sampled columns
    for column, label in ticks:
        below = int(np.floor(column + 1e-9))
        above = min(below + 1, len(steps) - 1)
        assert steps[below] <= int(label) <= steps[above]
        if int(label) in steps:
            assert column == pytest.approx(int(np.flatnonzero(steps == int(label))[0]))


def test_heatmap_of_one_sample_has_its_step(monkeypatch, tmp_path):
    assert _heatmap_ticks(monkeypatch, tmp_path, np.array([40])) == [(0.0, "40")]
