"""ASHA with several workers at once: the promotion rule, no trial lost or run twice, exact resume.

The objective is scripted (a table of scores per architecture and epochs), so
every test runs in milliseconds; the rule is checked against closed forms
on known orderings and, for concurrent threads, against the journal.
"""

import copy
import heapq
import json
import threading

import keras_tuner
import pytest

from nnkit.search import ArchitectureSpace, AsyncSearch, Choice, make_searcher
from nnkit.search.asynchronous import replay
from nnkit.search.training import SearcherOracle

WIDTHS = list(range(27))


def _space():
    return ArchitectureSpace([Choice("w", WIDTHS)], build=lambda a, s, c: None)


def _score(arch, epochs):
    # A known ordering: larger w is better at every budget; more epochs help.
    return arch["w"] / 100 + epochs / 1000


def _asha(seed=0):
    return make_searcher("asha", _space(), seed=seed, max_epochs=9, eta=3)  # rungs 1, 3, 9


def test_sequential_asha_promotes_by_the_closed_form_on_an_increasing_ordering():
    # One worker; the i-th new architecture is better than all before it. The
    # rule (promote any unpromoted member of the top floor(n/3) of a rung, top
    # rung first, else start a new one), worked by hand: 3 new ones, then #3 to
    # 3 epochs; from then on the newest is the top of rung 0 and goes up at once,
    # and rung 1 promotes its newest to 9 epochs once it holds 3 results (#5).
    search = _asha()
    order, news = [], []
    scores = {}
    for _ in range(13):
        arch, epochs = search.ask()
        if epochs == 1:
            news.append(arch["w"])
            scores[arch["w"]] = len(news)  # increasing by arrival
        order.append((news.index(arch["w"]) + 1, epochs))
        search.tell(arch, epochs, scores[arch["w"]] + epochs / 1000)
    assert order == [
        (1, 1), (2, 1), (3, 1), (3, 3),
        (4, 1), (4, 3),
        (5, 1), (5, 3), (5, 9),
        (6, 1), (6, 3), (6, 9),
        (7, 1),
    ]  # fmt: skip


def test_sequential_asha_on_a_decreasing_ordering_promotes_the_oldest_first():
    # The first architecture is the best: after 3 results the top 1 is #1, after 6
    # the top 2 are #1, #2 (#2 unpromoted), after 9 the top 3 add #3.
    search = _asha()
    news, promoted = [], []
    for _ in range(11):
        arch, epochs = search.ask()
        if epochs == 1:
            news.append(arch["w"])
        else:
            promoted.append(news.index(arch["w"]) + 1)
        search.tell(arch, epochs, -news.index(arch["w"]) + epochs / 1000)
    assert promoted == [1, 2]  # after the 3rd and the 6th new one; the 9th comes at ask 12


def _check_rule(events, eta=3, rungs=(1, 3, 9)):
    """Each promotion, at its point in the journal, is in the top floor(n/eta) of its rung."""
    asked, results = {}, {r: [] for r in rungs}
    for event in events:
        if "ask" in event:
            key, epochs = event["arch"]["w"], event["epochs"]
            asked[event["ask"]] = (key, epochs)
            if epochs != rungs[0]:
                below = results[rungs[rungs.index(epochs) - 1]]
                top = sorted(below, key=lambda item: -item[0])[: len(below) // eta]
                assert key in [k for _, k in top], (event, below)
        else:
            key, epochs = asked[event["tell"]]
            if event.get("epochs_run", epochs) >= epochs:
                results[epochs].append((event["score"], key))
    return asked


def test_threads_share_one_asha_and_no_trial_is_lost_or_run_twice(tmp_path):
    search = AsyncSearch(_asha(), tmp_path / "journal.jsonl")
    done = []

    def worker():
        while True:
            proposal = search.ask()
            if proposal is None or len(done) >= 60:
                return
            trial, arch, epochs = proposal
            search.tell(trial, _score(arch, epochs))
            done.append(trial)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    asked = _check_rule(events)
    told = [e["tell"] for e in events if "tell" in e]
    assert sorted(told) == sorted(set(told)) == sorted(asked)  # each asked trial told once
    pairs = list(asked.values())
    assert len(pairs) == len(set(pairs))  # no (architecture, epochs) twice
    assert any(epochs > 1 for _, epochs in pairs)


def _scheduled_run(search, workers, until, durations=None):
    """Workers as an event queue: a trial of ``e`` epochs ends ``e`` time units later."""
    clock, running, log = 0.0, [], []
    for _ in range(workers):
        proposal = search.ask()
        if proposal is not None:
            heapq.heappush(running, (clock + proposal[2], proposal[0], proposal))
    while running and len(log) < until:
        clock, _, (trial, arch, epochs) = heapq.heappop(running)
        search.tell(trial, _score(arch, epochs))
        log.append(trial)
        proposal = search.ask()
        if proposal is not None:
            heapq.heappush(running, (clock + proposal[2], proposal[0], proposal))
    return log


def test_asynchronous_promotions_never_wait_for_a_full_rung():
    # Three workers, the lowest rung (1 epoch) ends first: the first promotion is
    # asked as soon as 3 results are in, while other trials still run.
    search = AsyncSearch(_asha())
    _scheduled_run(search, workers=3, until=40)
    _check_rule(search.events)
    first = next(i for i, e in enumerate(search.events) if "ask" in e and e["epochs"] == 3)
    told_before = sum(1 for e in search.events[:first] if "tell" in e)
    running = sum(1 for e in search.events[:first] if "ask" in e) - told_before
    assert told_before == 3 and running == 2  # promoted while two trials were running


@pytest.mark.parametrize("kill_at", [1, 2, 7, 12, 25])
def test_a_killed_search_resumes_exactly(tmp_path, kill_at):
    # One worker: the resumed journal equals the uninterrupted one event for event.
    def sequential(search, steps):
        for _ in range(steps):
            proposal = search.ask()
            if proposal is None:
                return
            trial, arch, epochs = proposal
            search.tell(trial, _score(arch, epochs))

    whole = AsyncSearch(_asha(seed=3))
    sequential(whole, 30)
    path = tmp_path / "journal.jsonl"
    killed = AsyncSearch(_asha(seed=3), path)
    sequential(killed, kill_at // 2)
    if kill_at % 2:
        killed.ask()  # killed mid-trial: asked, never told
    resumed = AsyncSearch(_asha(seed=3), path)
    assert resumed.retry == ([kill_at // 2] if kill_at % 2 else [])
    sequential(resumed, 30 - kill_at // 2)
    assert resumed.events == whole.events


def test_resume_with_several_workers_reproduces_the_searchers_state(tmp_path):
    path = tmp_path / "journal.jsonl"
    search = AsyncSearch(_asha(seed=1), path)
    _scheduled_run(search, workers=4, until=17)
    running = sorted(search.running)
    resumed = AsyncSearch(_asha(seed=1), path)
    assert sorted(resumed.retry) == running  # the running trials come back, none other
    assert [resumed.ask()[0] for _ in running] == sorted(running)
    assert resumed.ask() == search.ask()  # then the same next proposal as the unkilled one


def test_a_torn_last_line_is_ignored_and_a_foreign_journal_raises(tmp_path):
    path = tmp_path / "journal.jsonl"
    search = AsyncSearch(_asha(), path)
    _scheduled_run(search, workers=2, until=5)
    with open(path, "a") as handle:
        handle.write('{"ask": 99, "ar')
    assert AsyncSearch(_asha(), path).events == search.events
    with pytest.raises(ValueError, match="does not match"):
        AsyncSearch(_asha(seed=7), path)


def test_told_twice_or_never_asked_raises():
    search = AsyncSearch(_asha())
    trial, arch, epochs = search.ask()
    search.tell(trial, 0.5)
    with pytest.raises(ValueError, match="not running"):
        search.tell(trial, 0.5)
    with pytest.raises(ValueError, match="twice or before"):
        replay(_asha(), [{"tell": 0, "score": 0.1}])
    with pytest.raises(TypeError, match="searcher"):
        AsyncSearch("asha")


def test_a_trial_stopped_early_counts_at_the_rung_it_reached():
    # MedianStopping ends a trial after `epochs_run` epochs. Rungs 1, 3, 9: a trial
    # asked for 3 epochs and stopped after 2 reached rung 1 (which it holds: no
    # second entry); one asked for 9 and stopped after 5 reached rung 3 and is not
    # promoted from there; one stopped after 0 epochs reached no rung.
    search = _asha()
    assert [search.rung_reached(e) for e in (0, 1, 2, 3, 8, 9)] == [None, 0, 0, 1, 1, 2]
    a, b, c = ({"w": w} for w in (1, 2, 3))
    for arch in (a, b, c):
        search.tell(arch, 1, _score(arch, 1))
    search.tell(c, 3, 0.9, epochs_run=2)  # stopped before rung 3: stays at rung 1
    key = _space().key
    assert [k for _, k, _ in search.results[0]] == [key(a), key(b), key(c)]
    assert search.results[1] == []
    search.tell(b, 9, 0.8, epochs_run=5)  # reached rung 3 (index 1) on its way to 9
    assert [k for _, k, _ in search.results[1]] == [key(b)]
    assert key(b) in search.promoted[1]  # stopped there: not promoted again
    search.tell({"w": 4}, 3, 0.1, epochs_run=0)
    assert len(search.stopped) == 1


class _Tuner(keras_tuner.Tuner):
    def run_trial(self, trial, *args, **kwargs):
        return {"val_accuracy": 0.0}


def _oracle(searcher):
    return SearcherOracle(
        searcher,
        objective=keras_tuner.Objective("val_accuracy", "max"),
        max_trials=40,
        hyperparameters=searcher.space.hyperparameters(),
        seed=1,
    )


def test_keras_tuner_oracle_with_concurrent_workers_and_a_stopped_trial(tmp_path):
    # keras-tuner's own create_trial/update_trial/end_trial with four trials
    # running at once (the chief's oracle of a distributed sweep sees the same),
    # interleaved in one thread so that the test is deterministic (an error
    # inside keras-tuner's lock in a thread leaves the lock held); trial 5 is "stopped by
    # MedianStopping" after 1 of its epochs.
    oracle = _oracle(_asha())
    _Tuner(oracle=oracle, directory=str(tmp_path), project_name="p")  # gives it a directory
    told, running = [], []

    def start(name):
        trial = oracle.create_trial(name)
        if trial.status == "RUNNING":
            running.append((name, trial))

    for i in range(4):
        start(f"tuner{i}")
    while running:
        name, trial = running.pop(0)
        values = trial.hyperparameters.values
        arch, epochs = {"w": values["w"]}, values["tuner/epochs"]
        run = 1 if trial.trial_id == "05" and epochs > 1 else epochs
        metrics = {"val_accuracy": _score(arch, run), "search/epochs_run": run}
        oracle.update_trial(trial.trial_id, metrics, step=run - 1)
        ended = copy.deepcopy(trial)  # what a worker sends back (a copy, as over gRPC)
        ended.status = "COMPLETED"
        oracle.end_trial(ended)
        told.append(trial.trial_id)
        start(name)
    assert sorted(told) == sorted(oracle.trials) and len(told) == len(set(told)) == 40
    tells = [e for e in oracle.events if "tell" in e]
    assert len(tells) == 40
    stopped = [e for e in tells if e["tell"] == "05"]
    assert len(stopped) == 1 and stopped[0].get("epochs_run", 1) == 1
    events = [
        {**e, "ask": int(e["ask"])} if "ask" in e else {**e, "tell": int(e["tell"])}
        for e in oracle.events
    ]
    _check_rule(events)


def test_budget_is_the_rung_a_result_counts_at():
    # Rungs 1, 3, 9: a full result counts at its own rung; one stopped after e
    # epochs at the highest rung <= e, 0 below the lowest; full-budget searchers
    # count the epochs asked.
    search = _asha()
    assert [search.budget(e) for e in (1, 3, 9)] == [1, 3, 9]
    assert [search.budget(9, epochs_run=e) for e in (0, 1, 2, 3, 8, 9)] == [0, 1, 1, 3, 3, 9]
    assert make_searcher("evolution", _space(), max_epochs=9).budget(9, epochs_run=4) == 9


def test_the_oracles_best_trial_is_the_best_at_the_top_rung_reached(tmp_path):
    # Scores fall with the epochs here, so every one-epoch result beats every
    # longer one: keras-tuner's ranking by score alone would report a rung-0
    # trial. The best reported is the best of the highest budget reached.
    oracle = _oracle(_asha())
    _Tuner(oracle=oracle, directory=str(tmp_path), project_name="p")
    scores = {}
    for _ in range(20):
        trial = oracle.create_trial("tuner0")
        values = trial.hyperparameters.values
        epochs = values["tuner/epochs"]
        score = values["w"] / 100 - epochs / 10
        oracle.update_trial(trial.trial_id, {"val_accuracy": score}, step=epochs - 1)
        ended = copy.deepcopy(trial)
        ended.status = "COMPLETED"
        oracle.end_trial(ended)
        scores[trial.trial_id] = (epochs, score)
    top = max(epochs for epochs, _ in scores.values())
    assert top == 9
    best = max(score for epochs, score in scores.values() if epochs == top)
    assert max(score for _, score in scores.values()) > best  # a lower rung scored more
    (reported,) = oracle.get_best_trials(1)
    assert scores[reported.trial_id] == (top, best)
    ranked = [scores[t.trial_id][0] for t in oracle.get_best_trials(20)]
    assert ranked == sorted(ranked, reverse=True)  # budget first, then score
