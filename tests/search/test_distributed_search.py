"""ASHA in keras-tuner's distributed mode: a chief oracle and two worker processes on 127.0.0.1.

Three processes run ``tests/search/_distributed_search.py`` (the same
``search_architectures(..., searcher="asha")`` call, through
``tests/tuning/_distributed.py``): the workers train, the chief's
``SearcherOracle`` serves their asks and tells over gRPC and keeps ASHA's
journal in its state (``tuner/oracle.json``). The journal, the study directory
and the reported best are checked against each other and against ASHA's rule
written here: a trial asked at rung ``k + 1`` had, at that point of the
journal, a result at rung ``k`` in the top ``floor(n / eta)`` of the ``n``
results told there.
"""

import csv
import json
import pathlib

import numpy as np
import pytest

from tests.search import _distributed_search as child
from tests.tuning._distributed import failure_text, run_chief_and_workers

SCRIPT = pathlib.Path(child.__file__)
TIMEOUT = 150  # seconds for the whole search (about 30 s on two busy cores)
ETA = 3
RUNGS = (1, 3)  # child.EPOCHS / eta, child.EPOCHS


def _key(arch):
    return json.dumps(arch, sort_keys=True)


def _check_journal(events):
    """Replay the journal by ASHA's rule; ``{trial: (arch, epochs, score, epochs_run)}``."""
    asked, told, results = {}, {}, {rung: [] for rung in RUNGS}
    for event in events:
        if "ask" in event:
            trial, key, epochs = event["ask"], _key(event["arch"]), event["epochs"]
            assert trial not in asked, event
            assert epochs in RUNGS, event
            if epochs == RUNGS[0]:  # a new architecture: never asked before
                assert all(_key(a) != key for a, _ in asked.values()), event
            else:  # a promotion: in the top floor(n / eta) of the rung below, now
                below = results[RUNGS[RUNGS.index(epochs) - 1]]
                mine = [score for score, k in below if k == key]
                assert mine, (event, below)  # it has a result there
                better = sum(score > mine[0] for score, _ in below)
                assert better < len(below) // ETA, (event, below)
                assert (key, epochs) not in [(_key(a), e) for a, e in asked.values()]
            asked[trial] = (event["arch"], epochs)
        else:
            trial = event["tell"]
            assert trial in asked and trial not in told, event  # told once, after its ask
            arch, epochs = asked[trial]
            run = event.get("epochs_run", epochs)
            told[trial] = (arch, epochs, event["score"], run)
            reached = [rung for rung in RUNGS if rung <= run]
            if reached and all(k != _key(arch) for _, k in results[reached[-1]]):
                results[reached[-1]].append((event["score"], _key(arch)))
    assert sorted(told) == sorted(asked)  # every trial asked was told: none lost
    return told, results


def _check_study(directory, told):
    rows = list(csv.DictReader((directory / "trials.csv").read_text().splitlines()))
    assert sorted(r["trial_id"] for r in rows) == sorted(told)  # one row per trial
    assert sorted(int(t) for t in told) == list(range(child.MAX_TRIALS))
    seeds = []
    for row in rows:
        arch, epochs, score, run = told[row["trial_id"]]
        assert row["status"] in ("completed", "stopped"), row
        assert float(row["objective"]) == pytest.approx(score)  # the journal's score
        for name, value in arch.items():  # the journal's architecture
            assert row[f"hp:{name}"] == str(value), (name, row)
        trial = directory / "trials" / row["trial_id"]
        record = json.loads((trial / "trial.json").read_text())
        (execution,) = record["executions"]  # trained once
        # The seed of execution 0 of trial t of a sweep seeded 0 (nnkit.tuning's rule).
        seed = int(np.random.SeedSequence([0, int(row["trial_id"]), 0]).generate_state(1)[0])
        assert execution["seed"] == seed
        seeds.append(seed)
        curves = list(csv.DictReader((trial / "curves.csv").read_text().splitlines()))
        assert [c["execution"] for c in curves] == ["0"] * run
        assert [int(c["epoch"]) for c in curves] == list(range(run))
        cost = json.loads((trial / "cost.json").read_text())
        assert cost["architecture"] == arch and cost["epochs"] == epochs
    assert len(set(seeds)) == len(seeds)
    # Both workers trained: each saved its tuner state in keras-tuner's project.
    assert (directory / "tuner" / "tuner0.json").exists()
    assert (directory / "tuner" / "tuner1.json").exists()


def _run(tmp_path, *args):
    pytest.importorskip("grpc")
    directory = tmp_path / "study"
    codes, output = run_chief_and_workers(SCRIPT, [directory, *args], tmp_path, TIMEOUT)
    assert codes == {"chief": 0, "tuner0": 0, "tuner1": 0}, failure_text(codes, output)
    state = json.loads((directory / "tuner" / "oracle.json").read_text())
    told, results = _check_journal(state["nnkit_searcher_events"])
    _check_study(directory, told)
    # The reported best is the best result at the highest budget reached (not a
    # lucky low-rung score): a trial counts at the highest rung <= the epochs it ran.
    budgets = {t: max(r for r in (0, *RUNGS) if r <= run) for t, (*_, run) in told.items()}
    top = max(budgets.values())
    best = json.loads((directory / "best.json").read_text())
    assert budgets[best["trial_id"]] == top
    assert best["score"] == pytest.approx(max(told[t][2] for t in told if budgets[t] == top))
    return told, results


@pytest.mark.slow
def test_asha_with_a_chief_and_two_workers_follows_its_rule(tmp_path):
    told, results = _run(tmp_path)
    assert all(run == epochs for _, epochs, _, run in told.values())  # nothing stopped
    assert results[RUNGS[-1]]  # the top rung is reached (once 3 results are in at rung 1)


@pytest.mark.slow
def test_asha_and_median_stopping_with_a_chief_and_two_workers(tmp_path):
    # MedianStopping's runs share their curves through files in the study
    # (tuner/median_stopping: one per run that finished unstopped, written by
    # either worker); a trial it stops is told with the epochs it ran, counts at
    # the rung it reached (checked in _run) and is recorded as stopped.
    told, _ = _run(tmp_path, "median")
    directory = tmp_path / "study"
    rows = {
        r["trial_id"]: r
        for r in csv.DictReader((directory / "trials.csv").read_text().splitlines())
    }
    for trial, (_, epochs, _, run) in told.items():
        if run < epochs:
            assert rows[trial]["status"] == "stopped", rows[trial]
    references = sorted(p.stem for p in (directory / "tuner" / "median_stopping").glob("*.json"))
    assert references == sorted(f"{t}-0" for t, r in rows.items() if r["status"] == "completed")
