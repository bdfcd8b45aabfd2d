"""Importance from Optuna's evaluators, fed with a study's trials."""

import math

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nnkit.tuning import importance as imp
from nnkit.tuning._study import study_header, write_study
from nnkit.tuning._study_read import read_study
from nnkit.tuning._synthetic import write_random_study

SPECS = [
    {"name": "lr", "type": "float", "min": 1e-4, "max": 1e-1, "sampling": "log"},
    {"name": "noise_knob", "type": "float", "min": 0.0, "max": 1.0},
    {"name": "act", "type": "choice", "values": ["relu", "tanh"]},
    {"name": "epochs", "type": "fixed", "default": 3},
]


def _lr_only(v, rng):
    return (math.log10(v["lr"]) + 2.5) ** 2 + 0.01 * rng.normal()


@pytest.fixture
def study(tmp_path):
    write_random_study(tmp_path, SPECS, _lr_only, n_trials=40, seed=0)
    return read_study(tmp_path)


def test_encode_puts_log_knobs_on_log10():
    spec = study_header(SPECS)["hyperparameters"]
    assert imp.encode(spec[0], 1e-3) == pytest.approx(-3.0)
    assert imp.encode(spec[1], 0.25) == 0.25
    assert imp.encode(spec[2], "relu") == "relu"


def test_distributions_follow_study_json(study):
    dists = imp._distributions(study, ["lr", "noise_knob", "act"])
    assert dists["lr"] == FloatDistribution(-4.0, -1.0)
    assert dists["noise_knob"] == FloatDistribution(0.0, 1.0)
    assert dists["act"] == CategoricalDistribution(["relu", "tanh"])


def test_distributions_widen_to_recorded_values(tmp_path):
    specs = [{"name": "units", "type": "int", "min": 8, "max": 16}]
    header = study_header(specs)
    trials = [
        {"trial_id": str(i), "status": "completed", "hyperparameters": {"units": u},
         "executions": [], "objective": float(u)}
        for i, u in enumerate([8, 12, 32])
    ]  # fmt: skip
    write_study(tmp_path, header, trials)
    dists = imp._distributions(read_study(tmp_path), ["units"])
    assert dists["units"] == IntDistribution(8, 32)


def test_fixed_and_single_valued_knobs_are_not_analysed(study):
    assert imp.analysed_names(study) == ["lr", "noise_knob", "act"]


@pytest.mark.parametrize("method, word", [("fanova", "fANOVA"), ("ped-anova", "PED-ANOVA")])
def test_the_knob_that_matters_ranks_first(study, method, word):
    result = imp.importance(study, method=method, n_bootstrap=4, seed=0, n_trees=8)
    assert result.names[0] == "lr"
    assert word in result.method
    assert result.n_trials == 40 and result.n_bootstrap == 4
    for name in result.names:
        assert 0.0 <= result.low[name] <= result.high[name] <= 1.0 + 1e-9
        assert 0.0 <= result.top_two_share[name] <= 1.0
    assert result.top_two_share["lr"] == 1.0
    # Normalised importances sum to one.
    assert sum(result.point.values()) == pytest.approx(1.0)


def test_seeded_and_direction_free(tmp_path, study):
    a = imp.importance(study, n_bootstrap=2, seed=3, n_trees=8)
    b = imp.importance(study, n_bootstrap=2, seed=3, n_trees=8)
    assert a == b
    # Maximising the negated objective: same variance decomposition.
    header = dict(study.header, objective={"name": "val_loss", "direction": "max"})
    trials = []
    for row in study.trials:
        trials.append(
            {"trial_id": row["trial_id"], "status": row["status"],
             "hyperparameters": row["hyperparameters"], "executions": [],
             "objective": -row["objective"]}
        )  # fmt: skip
    write_study(tmp_path / "max", header, trials)
    flipped = imp.importance(read_study(tmp_path / "max"), n_bootstrap=0, seed=3, n_trees=8)
    assert flipped.names == a.names
    for name in a.names:
        assert flipped.point[name] == pytest.approx(a.point[name], abs=1e-6)


def test_usable_trials(tmp_path):
    header = study_header([{"name": "x", "type": "float", "min": 0.0, "max": 1.0}])
    statuses = [("completed", 1.0), ("stopped", 2.0), ("failed", None), ("invalid", None),
                ("completed", float("nan"))]  # fmt: skip
    trials = [
        {"trial_id": str(i), "status": s, "hyperparameters": {"x": 0.1 * i}, "executions": [],
         "objective": v}
        for i, (s, v) in enumerate(statuses)
    ]  # fmt: skip
    write_study(tmp_path, header, trials)
    usable = imp.usable_trials(read_study(tmp_path))
    assert [t["trial_id"] for t in usable] == ["0", "1"]


def test_inactive_conditional_knobs_get_their_default_for_fanova(tmp_path):
    specs = [
        {"name": "optimizer", "type": "choice", "values": ["sgd", "adam"]},
        {"name": "momentum", "type": "float", "min": 0.0, "max": 0.9, "default": 0.5,
         "conditions": [{"parent": "optimizer", "values": ["sgd"]}]},
    ]  # fmt: skip

    def objective(v, rng):
        return v.get("momentum", 0.0) ** 2 + (v["optimizer"] == "adam") * 0.2

    write_random_study(tmp_path, specs, objective, n_trials=30, seed=1)
    study = read_study(tmp_path)
    rows = imp.usable_trials(study)
    names = imp.analysed_names(study)
    dists = imp._distributions(study, names)
    frozen = imp._frozen_trials(study, rows, names, dists, fill_inactive=True)
    for row, trial in zip(rows, frozen, strict=True):
        expected = row["hyperparameters"].get("momentum", 0.5)
        assert trial.params["momentum"] == expected
    sparse = imp._frozen_trials(study, rows, names, dists, fill_inactive=False)
    assert {("momentum" in t.params) for t in sparse} == {True, False}
    for method in imp.METHODS:
        result = imp.importance(study, method=method, n_bootstrap=0, n_trees=8)
        assert set(result.names) == {"optimizer", "momentum"}


def test_too_few_trials_give_zeros(tmp_path):
    write_random_study(tmp_path, SPECS, _lr_only, n_trials=1, seed=0)
    result = imp.importance(read_study(tmp_path), n_bootstrap=3)
    assert result.n_bootstrap == 0 and result.n_trials == 1
    assert set(result.point.values()) <= {0.0}


def test_bad_arguments(study):
    with pytest.raises(ValueError, match="method='rf'"):
        imp.importance(study, method="rf")
    with pytest.raises(ValueError, match="n_bootstrap=-1"):
        imp.importance(study, n_bootstrap=-1)
    with pytest.raises(TypeError, match="n_trees"):
        imp.importance(study, n_trees=2.5j)


def test_optuna_verbosity_is_restored(study):
    import optuna

    before = optuna.logging.get_verbosity()
    imp.importance(study, n_bootstrap=0, n_trees=4)
    assert optuna.logging.get_verbosity() == before
    assert np.isfinite(list(imp.importance(study, n_bootstrap=0, n_trees=4).point.values())).all()
