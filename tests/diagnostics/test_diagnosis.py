"""``diagnose`` on scripted norm series: a table of cases and the flags they must raise."""

import numpy as np
import pytest

from nnkit.diagnostics import DiagnosisRules, diagnose

T = 10
STEPS = np.arange(0, 10 * T, 10)  # samples every 10 steps
NAMES = ["l0", "l1", "l2"]


def _healthy():
    rng = np.random.default_rng(0)
    return rng.uniform(0.5, 2.0, size=(T, 3))


def _decaying():
    g = _healthy()
    g[:, 0] = 10.0 ** -np.arange(T)  # 1, 0.1, ... below 1e-3 x largest from sample 4
    g[:, 1] = 1e-7  # below the absolute threshold all along
    return g


def _jump():
    g = np.ones((T, 3))
    g[6:] *= 20.0  # global norm jumps 20x at sample 6
    return g


def _quiet_batch():
    g = np.ones((T, 3))
    g[5] = 0.01  # one batch with a tiny gradient, then the usual level again
    return g


def _nan():
    g = _healthy()
    g[3:, 2] = np.nan
    g[5:, 1] = np.inf
    return g


def _short_low_run():
    g = _healthy()
    g[2:6, 0] = 1e-9  # 4 low samples: shorter than the window of 5
    return g


CASES = [
    # name, norms, rules, expected [(layer, kind, first_step)]
    ("healthy", _healthy, None, []),
    ("decaying", _decaying, None, [("l0", "vanishing", 40), ("l1", "vanishing", 0)]),
    ("jump", _jump, None, [(None, "exploding", 60)]),
    ("jump_below_factor", _jump, DiagnosisRules(jump_factor=25.0), []),
    # The reference is the median of the window, not the previous sample (100x below).
    ("quiet_batch_is_not_a_jump", _quiet_batch, None, []),
    ("quiet_batch_window_1", _quiet_batch, DiagnosisRules(window=1), [(None, "exploding", 60)]),
    ("nan", _nan, None, [("l2", "nonfinite", 30)]),
    ("short_low_run", _short_low_run, None, []),
    ("short_low_run_window_4", _short_low_run, DiagnosisRules(window=4), [("l0", "vanishing", 20)]),
    ("absolute_explosion", lambda: np.full((T, 3), 1e3), None, [(None, "exploding", 0)]),
    ("no_gradient", lambda: np.c_[np.zeros(T), np.ones((T, 2))], None, [("l0", "no_gradient", 0)]),
]


@pytest.mark.parametrize("name, norms, rules, expected", CASES, ids=[c[0] for c in CASES])
def test_flags_on_scripted_norms(name, norms, rules, expected):
    report = diagnose(STEPS, NAMES, norms(), rules=rules)
    assert [(f.layer, f.kind, f.first_step) for f in report.flags] == expected
    assert report.healthy == (not expected)
    for layer, kind, _ in expected:
        if layer is not None:
            assert kind in report.rows[NAMES.index(layer)]["flags"]
            assert report.flagged(kind) == [n for n, k, _ in expected if k == kind]
    assert len(report.suggestions) == len({kind for _, kind, _ in expected})


def test_the_absolute_and_relative_rules_alone():
    g = np.ones((T, 3))
    g[:, 0] = 5e-4  # relative: 5e-4 of the largest; absolute: far above 1e-6
    assert diagnose(STEPS, NAMES, g).flagged("vanishing") == ["l0"]
    off = DiagnosisRules(relative_threshold=0.0)
    assert diagnose(STEPS, NAMES, g, rules=off).healthy
    g[:, 0] = 1e-7
    assert diagnose(STEPS, NAMES, g, rules=off).flagged("vanishing") == ["l0"]


def test_exploding_from_given_global_norms_and_nonfinite_counts():
    g = np.ones((T, 3))
    total = np.full(T, 2.0)
    total[8] = 2e3
    counts = np.zeros((T, 3))
    counts[9, 1] = 4
    report = diagnose(STEPS, NAMES, g, global_norms=total, nonfinite=counts)
    assert [(f.layer, f.kind, f.first_step) for f in report.flags] == [
        ("l1", "nonfinite", 90),
        (None, "exploding", 80),
    ]
    assert [row["nonfinite"] for row in report.rows] == [0, 4, 0]


def test_overflowing_norm_is_nonfinite_without_counts():
    g = np.ones((T, 3))
    g[4:, 2] = np.inf
    counts = np.zeros((T, 3))  # the elements were finite; only their squares overflowed
    report = diagnose(STEPS, NAMES, g, nonfinite=counts)
    flag = report.flags[0]
    assert (flag.layer, flag.kind, flag.first_step) == ("l2", "nonfinite", 40)
    assert "overflow" in flag.message


@pytest.mark.parametrize(
    "ratio, kind",
    [(1e-3, None), (2e-5, None), (0.5, "high_update_ratio"), (1e-7, "low_update_ratio")],
)
def test_update_ratio_band(ratio, kind):
    ratios = np.full((T, 3), 1e-3)
    ratios[:, 2] = ratio
    report = diagnose(STEPS, NAMES, np.ones((T, 3)), update_ratios=ratios)
    assert [(f.layer, f.kind) for f in report.flags] == ([] if kind is None else [("l2", kind)])
    assert report.rows[2]["median_update_ratio"] == pytest.approx(ratio)
    off = DiagnosisRules(update_ratio_band=None)
    assert diagnose(STEPS, NAMES, np.ones((T, 3)), update_ratios=ratios, rules=off).healthy


def test_rows_hold_closed_form_statistics():
    g = _healthy()
    weights = np.full((T, 3), 2.0)
    report = diagnose(STEPS, NAMES, g, weight_norms=weights)
    for k, row in enumerate(report.rows):
        assert row["layer"] == NAMES[k]
        assert row["median_grad_norm"] == pytest.approx(np.median(g[:, k]))
        assert row["max_grad_norm"] == pytest.approx(np.max(g[:, k]))
        assert row["median_update_ratio"] is None and row["median_weight_norm"] == 2.0
    np.testing.assert_allclose(report.global_norms, np.linalg.norm(g, axis=1))


def test_suggestions_are_tied_to_the_cause():
    info = {f"m/d{k}": {"activation": "sigmoid", "normalization": False,
                        "initializer": "RandomNormal"} for k in range(6)}  # fmt: skip
    report = diagnose(STEPS, ["m/d0", "m/d1", "m/d2"], _decaying(), layer_info=info)
    text = report.suggestions[0]
    for phrase in ("sigmoid", "He initialization", "batch normalization", "residual",
                   "RandomNormal"):  # fmt: skip
        assert phrase in text
    relu = {k: {**v, "activation": "relu", "normalization": True} for k, v in info.items()}
    text = diagnose(STEPS, NAMES, _decaying(), layer_info=relu).suggestions[0]
    assert "sigmoid" not in text and "batch normalization" not in text
    text = diagnose(STEPS, NAMES, _jump()).suggestions[0]
    for phrase in ("learning rate", "global_clipnorm", "Warmup"):
        assert phrase in text


def test_empty_series_is_healthy():
    report = diagnose(np.zeros((0,), int), NAMES, np.zeros((0, 3)))
    assert report.healthy and len(report.rows) == 3
    assert np.isnan(report.rows[0]["median_grad_norm"]) and "no samples" in str(report)
    assert report.to_dict()["layers"][0]["median_grad_norm"] is None


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"steps": [0, 0, 1]}, ValueError, "strictly increasing"),
        ({"steps": [0.5, 1.0, 2.0]}, ValueError, "1-D array of ints"),
        ({"grad_norms": np.ones((3, 2))}, ValueError, r"shape \(3, 3\)"),
        ({"grad_norms": [["a"] * 3] * 3}, TypeError, "array of numbers"),
        ({"group_names": "abc"}, TypeError, "list of strings"),
        ({"group_names": ["a", "", "c"]}, ValueError, "group_names\\[1\\]"),
        ({"rules": {"window": 2}}, TypeError, "DiagnosisRules"),
        ({"layer_info": ["a"]}, TypeError, "describe_layers"),
        ({"global_norms": np.ones(2)}, ValueError, "global_norms"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, match):
    arguments = {"steps": [0, 1, 2], "group_names": ["a", "b", "c"], "grad_norms": np.ones((3, 3))}
    with pytest.raises(error, match=match):
        diagnose(**{**arguments, **kwargs})
