"""Pareto ranks and the front's plot against brute force; the Pareto-rank evolution's tournament."""

import numpy as np
import pytest

from nnkit.search import ArchitectureSpace, Choice, make_searcher, plot_pareto, simulate
from nnkit.search.pareto import pareto_ranks
from tests.search.test_constraints import _params, _space, _table


def _dominated(i, j, accuracy, cost):
    """Whether point j dominates point i."""
    return (
        accuracy[j] >= accuracy[i]
        and cost[j] <= cost[i]
        and (accuracy[j] > accuracy[i] or cost[j] < cost[i])
    )


def _brute_ranks(accuracy, cost):
    ranks, remaining, rank = {}, set(range(len(accuracy))), 0
    while remaining:
        front = {
            i for i in remaining if not any(_dominated(i, j, accuracy, cost) for j in remaining)
        }
        ranks.update(dict.fromkeys(front, rank))
        remaining -= front
        rank += 1
    return [ranks[i] for i in range(len(accuracy))]


@pytest.mark.parametrize("seed", range(4))
def test_ranks_are_the_brute_force_non_dominated_sorting(seed):
    rng = np.random.default_rng(seed)
    accuracy = rng.integers(0, 6, size=15).astype(float).tolist()
    cost = rng.integers(0, 6, size=15).astype(float).tolist()
    assert pareto_ranks(accuracy, cost) == _brute_ranks(accuracy, cost)


def test_the_plot_is_written_and_returns_the_brute_force_front(tmp_path):
    rng = np.random.default_rng(7)
    accuracy = rng.uniform(0.5, 0.9, size=30).tolist()
    cost = rng.integers(100, 100_000, size=30).tolist()
    path = tmp_path / "figs" / "front.png"
    front = plot_pareto(accuracy, cost, path, cost_name="flops", labels=["a", "b"] * 15)
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    expected = {
        i for i in range(30) if not any(_dominated(i, j, accuracy, cost) for j in range(30))
    }
    assert set(front) == expected
    assert [cost[i] for i in front] == sorted(cost[i] for i in front)
    with pytest.raises(ValueError, match="labels"):
        plot_pareto(accuracy, cost, path, labels=["a"])


def test_the_front_of_a_search_on_the_table_is_its_non_dominated_set(tmp_path):
    table = _table()
    history = simulate(table, "random", budget=len(table), seed=0)
    accuracy = [step["mean"] for step in history]
    cost = [step["cost"]["params"] for step in history]
    front = plot_pareto(accuracy, cost, tmp_path / "table.png")
    # On the synthetic table accuracy rises with params, so every distinct params value
    # is on the front exactly once (the equal-cost architectures tie).
    assert sorted({cost[i] for i in front}) == sorted(set(cost))


def test_the_tournament_is_won_by_the_lowest_pareto_rank():
    space = _space()
    searcher = make_searcher(
        "pareto_evolution",
        space,
        seed=0,
        population=4,
        tournament=4,
        cost_fn=lambda a: {"params": _params(a)},
    )
    # A small, poor architecture and a big, good one are both on the front; a
    # middling one (dominated by neither) also; a bad, big one is dominated.
    members = [
        ({"width": 1, "depth": 1, "head": "a"}, 0.6),  # 10 params
        ({"width": 4, "depth": 3, "head": "b"}, 0.9),  # 125 params
        ({"width": 4, "depth": 3, "head": "a"}, 0.5),  # 120 params: dominated by the first
        ({"width": 2, "depth": 2, "head": "a"}, 0.7),  # 40 params
    ]
    searcher.population = list(members)
    winner = searcher.select_parent(np.array([2, 0]))
    assert winner == members[0][0]  # rank 0 beats rank 1 though both were drawn
    winner = searcher.select_parent(np.array([0, 1, 3]))
    assert winner == members[1][0]  # all rank 0: the higher accuracy


def test_pareto_evolution_needs_a_cost():
    space = ArchitectureSpace([Choice("w", [1, 2])], build=lambda a, s, c: None)
    with pytest.raises(ValueError, match="cost_fn"):
        make_searcher("pareto_evolution", space)
