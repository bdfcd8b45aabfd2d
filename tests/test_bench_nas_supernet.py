"""Smoke test of bench/nas_supernet.py at a tiny size: ends with the JSON line of its figures."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "nas_supernet.py"

pytest.importorskip("mnist1d")
pytest.importorskip("scipy")


def load_bench():
    spec = importlib.util.spec_from_file_location("nas_supernet", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kendall_tau_of_a_hand_worked_example():
    bench = load_bench()
    # 4 items, 6 pairs: (1,2,3,4) against (1,3,2,4) has 5 concordant and 1 discordant pair.
    assert bench.tau([1, 2, 3, 4], [1, 3, 2, 4]) == round((5 - 1) / 6, 4)
    assert bench.tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert bench.tau([1, 1, 1], [1, 2, 3]) is None  # undefined: one list is constant


def test_table_ranks_give_one_to_the_best_and_share_ties():
    bench = load_bench()
    np.testing.assert_array_equal(bench.table_ranks([0.5, 0.9, 0.7, 0.9]), [4, 1, 3, 1])


def test_a_tiny_run_ends_with_one_json_object(capsys):
    bench = load_bench()
    figures = bench.main(
        ["--epochs", "1", "--limit", "6", "--runs", "2", "--train-rows", "128", "--threads", "0"]
    )
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    assert figures["architectures"] == 6 and figures["steps"] == 2
    assert 1 <= figures["top_pick_rank"] <= 312
    assert 0 <= figures["top10_overlap"] <= 6
    assert figures["random_search_same_seconds"]["runs"] == 2
    assert figures["random_search_train_and_eval_seconds"]["runs"] == 2
    assert -1 <= figures["tau_params"] <= 1
    assert figures["tau_short_vs_full"] is not None and -1 <= figures["tau_short_vs_full"] <= 1
