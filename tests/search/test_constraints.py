"""Cost limits: infeasible architectures are never evaluated, every searcher, closed-form counts."""

import csv
import json

import keras
import numpy as np
import pytest

from nnkit.search import (
    ArchitectureSpace,
    Choice,
    TabularBenchmark,
    make_searcher,
    residual_mlp_space,
    search_architectures,
    simulate,
)
from nnkit.search.constraints import ConstrainedSearcher, check_limits, violation

EPOCHS = 3


def _none(arch, shape, classes):
    return None


def _space():
    # 4 widths × 3 depths × 2 heads = 24 architectures
    return ArchitectureSpace(
        [Choice("width", [1, 2, 3, 4]), Choice("depth", [1, 2, 3]), Choice("head", ["a", "b"])],
        build=_none,
    )


def _params(arch):
    return 10 * arch["width"] * arch["depth"] + (5 if arch["head"] == "b" else 0)


def _table():
    space = _space()
    rows = []
    for arch in space.architectures():
        final = 0.5 + 0.01 * _params(arch)  # bigger is better: the limit binds
        rows.append(
            {
                "arch": arch,
                "val_accuracy": [[final * (e + 1) / EPOCHS for e in range(EPOCHS)]] * 2,
                "params": _params(arch),
                "flops": 2 * _params(arch),
                "seconds_per_epoch": 1.0,
            }
        )
    return TabularBenchmark(rows, space)


def _feasible(limit):
    """The feasible set by counting: width·depth·10 (+5 for head b) <= limit."""
    return {
        (w, d, h)
        for w in (1, 2, 3, 4)
        for d in (1, 2, 3)
        for h in ("a", "b")
        if 10 * w * d + (5 if h == "b" else 0) <= limit
    }


def test_violation_is_a_pure_decision():
    limits = check_limits(max_params=100, max_latency_ms=2.0)
    assert violation({"params": 100, "latency_ms": 1.0}, limits) is None
    assert violation({"params": 101, "latency_ms": 1.0}, limits) == "params 101 > max_params=100"
    assert "max_latency_ms=2" in violation({"params": 1, "latency_ms": 2.5}, limits)
    with pytest.raises(ValueError, match="no 'latency_ms'"):
        violation({"params": 1}, limits)
    with pytest.raises(ValueError, match="max_params=0"):
        check_limits(max_params=0)


@pytest.mark.parametrize("name", ["random", "evolution", "local", "asha", "pareto_evolution"])
@pytest.mark.parametrize("limit", [25, 60])
def test_every_searcher_evaluates_only_feasible_architectures(name, limit):
    table = _table()
    feasible = _feasible(limit)
    # 25: width·depth 1 or 2 ((1,1), (1,2), (2,1)), either head: 6.
    # 60: width·depth <= 5 with head b (7 pairs), <= 6 with head a (9 pairs): 16.
    assert len(feasible) == (6 if limit == 25 else 16)
    history = simulate(table, name, budget=len(table), seed=1, max_params=limit)
    evaluated = {(s["arch"]["width"], s["arch"]["depth"], s["arch"]["head"]) for s in history}
    assert evaluated <= feasible
    rejected = {
        (r["arch"]["width"], r["arch"]["depth"], r["arch"]["head"]) for r in history.rejected
    }
    assert not rejected & feasible
    assert all(r["reason"].endswith(f"> max_params={limit}") for r in history.rejected)
    if name in ("random", "local", "evolution", "pareto_evolution"):
        # a budget as large as the space: every feasible architecture is found, once
        assert evaluated == feasible
        assert len(evaluated) + len(rejected) == len(table)


@pytest.mark.parametrize("name", ["bayesian", "hyperband"])
def test_keras_tuner_searchers_never_evaluate_an_infeasible_architecture(name):
    table = _table()
    history = simulate(table, name, budget=4, seed=0, max_flops=50)
    assert history and all(s["cost"]["flops"] <= 50 for s in history)
    assert all(r["cost"]["flops"] > 50 for r in history.rejected)


def test_nothing_feasible_is_a_clear_error():
    with pytest.raises(ValueError, match="No architecture of the space is within max_params=5"):
        simulate(_table(), "random", budget=3, seed=0, max_params=5)
    searcher = make_searcher("evolution", _space(), cost_fn=lambda a: {"params": 1000},
                             max_params=5)  # fmt: skip
    with pytest.raises(ValueError, match="smallest costs"):
        searcher.ask()


def test_rejections_in_a_row_are_bounded():
    inner = make_searcher("random", _space(), seed=0)
    searcher = ConstrainedSearcher(
        inner, {"params": 10}, lambda a: {"params": _params(a)}, max_rejections=2
    )
    proposals = 0
    with pytest.raises(ValueError, match="2 proposals in a row"):
        while searcher.ask() is not None:
            proposals += 1
    assert proposals <= 1  # only {width 1, depth 1, head a} has 10 params


def test_a_limit_needs_a_cost_function():
    with pytest.raises(ValueError, match="cost_fn"):
        make_searcher("random", _space(), max_params=10)
    with pytest.raises(ValueError, match="cost='size'"):
        make_searcher("random", _space(), cost="size")


@pytest.mark.slow
def test_real_search_never_trains_an_architecture_over_the_limit(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    space = residual_mlp_space(
        stages=(1,), depths=(1,), widths=(4, 64), activations=("relu",),
        normalizations=("none",), dropouts=(0.0,),
    )  # fmt: skip
    # plain: 6·w + w + w·2 + 2 params; residual adds W2 (w·w + w) and a projection (6·w)
    limit = 6 * 64 + 64 + 64 * 2 + 2  # the plain 64-wide one fits, no residual 64-wide one
    # 10 architectures: plain × 2 widths, residual × 2 widths × pre_activation × drop_path;
    # the 4 residual 64-wide ones are over the limit, so 6 trials exhaust the feasible ones.
    tuner = search_architectures(
        space, x, y, validation_data=(x, y), directory=tmp_path, searcher="random",
        max_trials=6, epochs=1, seed=0, max_params=limit,
    )  # fmt: skip
    trained = [json.loads(p.read_text()) for p in (tmp_path / "trials").glob("*/cost.json")]
    assert len(trained) == 6 and all(c["params"] <= limit for c in trained)
    assert all(c["latency_ms"] > 0 and c["flops_source"] in ("xla", "analytic") for c in trained)
    rejected = json.loads((tmp_path / "rejected.json").read_text())
    assert len(rejected) == 4 and all(r["cost"]["params"] > limit for r in rejected)
    assert len(tuner.oracle.searcher.rejected) == len(rejected)
    keras.backend.clear_session()


@pytest.mark.slow
def test_a_keras_tuner_oracle_never_trains_an_architecture_over_the_limit(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    space = residual_mlp_space(
        stages=(1,), depths=(1,), widths=(4, 64), activations=("relu",),
        normalizations=("none",), dropouts=(0.0,),
    )  # fmt: skip
    limit = 6 * 64 + 64 + 64 * 2 + 2  # as above: only the residual 64-wide ones are over
    search_architectures(
        space, x, y, validation_data=(x, y), directory=tmp_path, searcher="bayesian",
        max_trials=6, epochs=1, seed=0, max_params=limit,
    )  # fmt: skip
    trials = [json.loads(p.read_text()) for p in (tmp_path / "trials").glob("*/trial.json")]
    rows = {
        r["trial_id"]: r for r in csv.DictReader((tmp_path / "trials.csv").read_text().splitlines())
    }
    # The residual 64-wide ones add W2 (64·64 + 64) and the projection (6·64).
    over_params = limit + 64 * 64 + 64 + 6 * 64
    for trial in trials:
        hp = trial["hyperparameters"]
        over = hp["skip"] == "residual" and hp["stage_0_width"] == 64
        assert (trial["executions"] == []) == over  # never trained when over the limit
        row = rows[trial["trial_id"]]
        if over:  # scored 0 for the oracle, recorded as infeasible with its reason
            assert trial["status"] == row["status"] == "infeasible"
            assert row["message"] == f"Never trained: params {over_params} > max_params={limit}."
            assert row["objective"] == ""
        else:
            assert row["status"] == "completed"
    assert any(row["status"] == "infeasible" for row in rows.values())
    rejected_path = tmp_path / "rejected.json"
    rejected = json.loads(rejected_path.read_text()) if rejected_path.exists() else []
    assert all(r["cost"]["params"] > limit for r in rejected)
    keras.backend.clear_session()
