"""Searchers on a synthetic table whose means are closed forms: seeded, budgeted, no repeats."""

import numpy as np
import pytest

from nnkit.search import (
    ArchitectureSpace,
    Choice,
    TabularBenchmark,
    evaluations_to_reach,
    make_searcher,
    simulate,
    stage_choices,
)

EPOCHS = 9


def _none(arch, shape, classes):
    return None


def _space():
    choices = stage_choices([1, 2], {"width": [1, 2, 3]}) + [Choice("head", ["a", "b"])]
    return ArchitectureSpace(choices, build=_none, name="toy")


def _final(arch):
    widths = sum(arch[f"stage_{i}_width"] for i in range(arch["stages"]))
    return 0.5 + 0.05 * widths + 0.02 * (arch["head"] == "b")


def _table():
    space = _space()
    rows = []
    for arch in space.architectures():
        final = _final(arch)
        curve = [final * (1 - 0.5 ** (e + 1)) for e in range(EPOCHS)]
        noise = [0.0, 0.002, -0.002]
        rows.append(
            {
                "arch": arch,
                "val_accuracy": [[c + n for c in curve] for n in noise],
                "params": 1,
                "seconds_per_epoch": 0.5,
            }
        )
    return TabularBenchmark(rows, space)


def test_table_best_mean_is_the_closed_form():
    table = _table()
    # best: two stages of width 3 and head "b"; the seed noises average to 0
    expected = (0.5 + 0.05 * 6 + 0.02) * (1 - 0.5**EPOCHS)
    assert table.best_mean == pytest.approx(expected)
    assert len(table) == (3 + 9) * 2


def test_query_reads_the_budget_and_costs_epochs_times_seconds():
    table = _table()
    arch = table.archs[0]
    score, seconds = table.query(arch, 3, np.random.default_rng(0))
    final = _final(arch) * (1 - 0.5**3)
    assert min(abs(score - final - n) for n in (0.0, 0.002, -0.002)) < 1e-12
    assert seconds == pytest.approx(1.5)


@pytest.mark.parametrize("name", ["random", "evolution", "local", "asha"])
def test_a_searcher_is_seeded_budgeted_and_never_repeats(name):
    table = _table()
    first = simulate(table, name, budget=10, seed=3)
    again = simulate(table, name, budget=10, seed=3)
    assert [(s["arch"], s["epochs"]) for s in first] == [(s["arch"], s["epochs"]) for s in again]
    assert first[-1]["spent"] <= 10 + 1e-9 + 1
    pairs = [(table.space.key(s["arch"]), s["epochs"]) for s in first]
    assert len(pairs) == len(set(pairs))


@pytest.mark.parametrize("name", ["random", "evolution", "local"])
def test_a_full_budget_searcher_finds_the_best_when_the_budget_covers_the_space(name):
    table = _table()
    history = simulate(table, name, budget=len(table), seed=0)
    assert evaluations_to_reach(history, table.best_mean, EPOCHS) <= len(table)


def test_asha_rungs_and_promotion():
    searcher = make_searcher("asha", _space(), seed=0, max_epochs=EPOCHS)
    assert searcher.rungs == [1, 3, 9]
    scores = {}
    for _ in range(3):  # three on rung 0: the best of them is promoted to 3 epochs
        arch, epochs = searcher.ask()
        assert epochs == 1
        scores[_space().key(arch)] = _final(arch)
        searcher.tell(arch, epochs, _final(arch))
    arch, epochs = searcher.ask()
    assert epochs == 3
    assert _final(arch) == max(scores.values())


def test_evolution_mutates_the_tournament_winner():
    space = _space()
    searcher = make_searcher("evolution", space, seed=0, population=4, tournament=4)
    members = []
    for _ in range(4):
        arch, epochs = searcher.ask()
        searcher.tell(arch, epochs, _final(arch))
        members.append(arch)
    best = max(members, key=_final)
    child, _ = searcher.ask()
    assert space.key(child) in {space.key(n) for n in space.neighbours(best)}


@pytest.mark.parametrize("name", ["bayesian", "hyperband"])
def test_keras_tuner_searchers_run_on_the_table(name):
    table = _table()
    history = simulate(table, name, budget=3, seed=0)
    assert history and history[-1]["spent"] <= 3 + 1
    assert all(s["arch"] in table for s in history)


def test_unknown_searcher_is_named():
    with pytest.raises(ValueError, match="searcher='grid'"):
        simulate(_table(), "grid")


def test_local_search_moves_to_the_best_neighbour_then_restarts_at_an_optimum():
    space = ArchitectureSpace([Choice("a", [0, 1, 2])], build=_none)
    searcher = make_searcher("local", space, seed=0)
    score = {0: 0.1, 1: 0.5, 2: 0.3}
    order = []
    while (proposal := searcher.ask()) is not None:
        arch, epochs = proposal
        order.append(arch["a"])
        searcher.tell(arch, epochs, score[arch["a"]])
    assert sorted(order) == [0, 1, 2]  # every architecture once, then nothing left
    # after the first and its two neighbours, the search sits on the optimum a=1
    assert searcher.current is None or searcher.current[0] == {"a": 1}
