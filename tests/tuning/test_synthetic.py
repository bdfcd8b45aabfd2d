"""Correctness check of the sensitivity report on a synthetic objective with known importance.

Six hyperparameters; the objective is a sum of one term per knob plus Gaussian
noise, so each knob's share of the variance has a closed form (computed below
with numpy, independently of the report). Most of the variance comes from the
learning rate, then the weight decay, little from the rest. With 100
random-search trials the report's top two must be the true top two (in order)
in at least 19 of 20 seeds, and at 20 trials it must warn "low confidence"
instead of ranking.

Measured (fANOVA, 32 trees, this objective): top two recovered in 20/20 seeds
at 100 trials and 13/20 at 50 (the issue reports 12/20 and 20/20); with Optuna's
own log distributions instead of log10 values, 11/20 at 100 trials.
"""

import math

import numpy as np
import pytest

from nnkit.tuning import sensitivity_report
from nnkit.tuning._synthetic import write_random_study

SPECS = [
    {"name": "learning_rate", "type": "float", "min": 1e-4, "max": 1e-1, "sampling": "log"},
    {"name": "weight_decay", "type": "float", "min": 1e-6, "max": 1e-2, "sampling": "log"},
    {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5},
    {"name": "units", "type": "int", "min": 16, "max": 256, "sampling": "log"},
    {"name": "optimizer", "type": "choice", "values": ["sgd", "adam", "adamw"]},
    {"name": "batch_size", "type": "choice", "values": [32, 64, 128, 256]},
]
A_LR, B_WD, C_DROPOUT, E_UNITS, NOISE = 1.155, 0.46, 0.98, 0.49, 0.14
OPTIMIZER = {"sgd": 0.2, "adam": -0.1, "adamw": -0.1}
BATCH = {32: 0.2, 64: 0.0, 128: 0.0, 256: -0.2}
TRUE_TOP_TWO = ["learning_rate", "weight_decay"]


def objective(v, rng):
    u = math.log10(v["learning_rate"]) + 2.5  # optimum at 10**-2.5, mid-range
    w = math.log10(v["weight_decay"]) + 4.0  # optimum at 1e-4, mid-range
    return (
        A_LR * u**2
        + B_WD * w**2
        + C_DROPOUT * v["dropout"]
        + E_UNITS * math.log2(v["units"] / 16) / 4
        + OPTIMIZER[v["optimizer"]]
        + BATCH[v["batch_size"]]
        + rng.normal(0.0, NOISE)
    )


def _uniform_var_of_square(half_width):
    # x ~ U[-h, h]: Var(x^2) = E[x^4] - E[x^2]^2 = h^4/5 - h^4/9.
    return half_width**4 / 5 - half_width**4 / 9


def _true_variance_shares():
    choice_var = lambda offsets: float(np.var(list(offsets.values())))  # noqa: E731
    terms = {
        "learning_rate": A_LR**2 * _uniform_var_of_square(1.5),  # log10 lr ~ U[-4, -1]
        "weight_decay": B_WD**2 * _uniform_var_of_square(2.0),  # log10 wd ~ U[-6, -2]
        "dropout": C_DROPOUT**2 * 0.5**2 / 12,
        "units": E_UNITS**2 / 12,  # log2(units/16)/4 ~ U[0, 1] (up to rounding)
        "optimizer": choice_var(OPTIMIZER),
        "batch_size": choice_var(BATCH),
    }
    total = sum(terms.values()) + NOISE**2
    return {k: v / total for k, v in terms.items()}


def test_ground_truth_is_what_the_issue_describes():
    shares = _true_variance_shares()
    ranked = sorted(shares, key=shares.get, reverse=True)
    assert ranked[:2] == TRUE_TOP_TWO
    assert shares["learning_rate"] > 0.5  # most of the variance
    assert shares["weight_decay"] > 2 * max(shares[k] for k in ranked[2:])
    assert all(shares[k] < 0.05 for k in ranked[2:])  # little from the rest


@pytest.mark.slow
def test_top_two_recovered_from_100_random_trials(tmp_path):
    hits = 0
    for seed in range(20):
        study_dir = tmp_path / f"seed{seed}"
        write_random_study(study_dir, SPECS, objective, n_trials=100, seed=seed)
        # The ranking is the point estimate on all trials; the bootstrap (intervals)
        # and the plots do not change it, so they are skipped to keep the test fast.
        report = sensitivity_report(study_dir, n_bootstrap=0, plots=False)
        assert not report.low_confidence
        assert "fANOVA" in report.path.read_text()
        hits += report.ranking[:2] == TRUE_TOP_TWO
    assert hits >= 19, f"top two recovered in {hits}/20 seeds"


def test_low_confidence_at_20_trials(tmp_path):
    for seed in range(20):
        study_dir = tmp_path / f"seed{seed}"
        write_random_study(study_dir, SPECS, objective, n_trials=20, seed=seed)
        report = sensitivity_report(study_dir, n_bootstrap=0, plots=False)
        assert report.ranking is None and report.importance is None
        assert any("Too few trials: 20" in reason for reason in report.low_confidence)
        text = report.path.read_text()
        assert "Low confidence" in text and "| rank |" not in text
