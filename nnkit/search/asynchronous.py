"""Several workers at once on one searcher, journaled so that a killed search resumes exactly.

A searcher of ``nnkit.search`` is a sequential ask/tell object. With several
workers, trials are asked before earlier ones are told; what the searcher
does then is its own rule (ASHA promotes from the completed results of a rung
and never waits for a full rung). Two things are shared here:

- the **journal**: every ask (trial id, architecture, epochs) and every tell
  (trial id, score, epochs run) in the order they happened. Replaying it into
  a fresh searcher with the same seed reproduces the searcher's state
  exactly (its generator included), since a searcher is deterministic given
  its seed and the order of asks and tells; a proposal that differs from the
  journal's raises (another seed, space or searcher).
- the **pending** trials: asked, never told. On resume they are handed out
  again first, under their own trial id, so a trial killed mid-run is neither
  lost nor run twice (a told trial is never handed out again, and a second
  tell of one trial raises).

``AsyncSearch`` keeps the journal in a JSON-lines file (each line flushed
and fsynced; a torn last line, a kill mid-write, is ignored) and serializes
asks and tells with a lock, so threads can share it; keras-tuner's
distributed mode serializes them in the chief's oracle
(``search_architectures`` keeps the same journal in the oracle's state).
"""

import json
import math
import os
import pathlib
import threading

from nnkit import _validation as v
from nnkit.search.searchers import Searcher


def _same(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _tell(searcher, arch, epochs, score, epochs_run):
    if epochs_run is None:
        searcher.tell(arch, epochs, score)
    else:
        searcher.tell(arch, epochs, score, epochs_run=epochs_run)


def replay(searcher, events):
    """Feed a journal's asks and tells to a fresh ``searcher``; the pending trials.

    Args:
        searcher: A fresh searcher (``make_searcher``) with the journal's
            space and seed. Required.
        events: The journal, dicts ``{"ask": id, "arch": ..., "epochs": e}``
            and ``{"tell": id, "score": s, "epochs_run": r}`` in order.
            Required.

    Returns:
        ``(asked, pending)``: every trial id's ``(arch, epochs)``, and the ids
        asked and not told, in ask order.

    Raises:
        ValueError: If the searcher proposes something else than the journal
            (another seed, space or searcher), or a trial is told twice or
            before it was asked.
    """
    asked, told = {}, set()
    for event in events:
        if "ask" in event:
            proposal = searcher.ask()
            if proposal is None or not (
                _same(proposal[0], event["arch"]) and proposal[1] == event["epochs"]
            ):
                raise ValueError(
                    "The journal does not match this searcher (another seed, space or "
                    f"searcher?): trial {event['ask']} was {event['arch']!r} for "
                    f"{event['epochs']} epochs. Received: proposal={proposal!r}"
                )
            asked[event["ask"]] = (proposal[0], proposal[1])
        else:
            trial = event["tell"]
            if trial not in asked or trial in told:
                raise ValueError(
                    f"The journal tells trial {trial!r} twice or before it was asked. "
                    f"Received: event={event!r}"
                )
            arch, epochs = asked[trial]
            _tell(searcher, arch, epochs, event["score"], event.get("epochs_run"))
            told.add(trial)
    return asked, [trial for trial in asked if trial not in told]


class AsyncSearch:
    """A searcher shared by several workers, with a kill-safe journal.

    Use it to run a searcher's trials on several workers at once (threads or
    a scheduler of your own): each worker loops ``ask()`` / train /
    ``tell(trial, score)`` until ``ask()`` returns ``None``. Asks and tells
    are serialized by a lock and journaled; constructing it again on the
    same journal (after a kill) replays it into the fresh searcher and hands
    out the trials that were running first.

    Args:
        searcher: A fresh searcher from ``make_searcher``. Required.
        journal: Path of the JSON-lines journal (created if missing), or
            ``None`` to keep it in memory only. Defaults to ``None``.

    Raises:
        TypeError: If ``searcher`` is not a searcher of ``nnkit.search``.
        ValueError: If the journal does not match ``searcher`` (see `replay`).

    Example:
    >>> from nnkit.search import ArchitectureSpace, AsyncSearch, Choice, make_searcher
    >>> space = ArchitectureSpace([Choice("w", [1, 2, 3])], build=lambda a, s, c: None)
    >>> search = AsyncSearch(make_searcher("random", space, seed=0))
    >>> first, second = search.ask(), search.ask()  # two workers, nothing told yet
    >>> first[0], second[0]
    (0, 1)
    >>> search.tell(1, 0.5); search.tell(0, 0.7); sorted(search.scores)
    [0, 1]

    References:
        Li et al., "A System for Massively Parallel Hyperparameter Tuning"
        (ASHA), MLSys 2020.
    """

    def __init__(self, searcher, journal=None):
        if not isinstance(searcher, Searcher):
            raise TypeError(
                "`searcher` must be a searcher of nnkit.search (make_searcher). "
                f"Received: searcher={searcher!r}"
            )
        self.searcher = searcher
        self.journal = None if journal is None else pathlib.Path(v.check_path("journal", journal))
        self.events = self._read() if self.journal is not None else []
        self.asked, pending = replay(searcher, self.events)
        self.retry = list(pending)
        self.running = set(pending)
        self.scores = {e["tell"]: e["score"] for e in self.events if "tell" in e}
        self._lock = threading.Lock()

    def _read(self):
        if not self.journal.exists():
            return []
        events = []
        for line in self.journal.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                break  # a torn last line: the kill came mid-write
        return events

    def _append(self, event):
        self.events.append(event)
        if self.journal is None:
            return
        with open(self.journal, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def ask(self):
        """``(trial_id, arch, epochs)`` for a free worker, or ``None`` when nothing is left."""
        with self._lock:
            if self.retry:
                trial = self.retry.pop(0)
                return (trial, *self.asked[trial])
            proposal = self.searcher.ask()
            if proposal is None:
                return None
            trial = len(self.asked)
            arch, epochs = proposal
            self.asked[trial] = (arch, epochs)
            self.running.add(trial)
            self._append({"ask": trial, "arch": arch, "epochs": int(epochs)})
            return trial, arch, epochs

    def tell(self, trial, score, epochs_run=None):
        """Report ``trial``'s ``score`` (higher is better); ``epochs_run`` if it stopped early."""
        with self._lock:
            if trial not in self.running:
                raise ValueError(
                    f"Trial {trial!r} is not running (never asked, or told already). "
                    f"Received: trial={trial!r}"
                )
            score = float(score)
            arch, epochs = self.asked[trial]
            event = {"tell": trial, "score": score if math.isfinite(score) else -math.inf}
            if epochs_run is not None:
                event["epochs_run"] = v.check_positive_int("epochs_run", epochs_run)
            _tell(self.searcher, arch, epochs, event["score"], event.get("epochs_run"))
            self.running.discard(trial)
            self.scores[trial] = event["score"]
            self._append(event)
