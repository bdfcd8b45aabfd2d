"""Bad-input conformance: every public nnkit name, every parameter, a table of wrong values.

The harness is ``tests/_bad_input.py`` (discovery, the value tables, the
classification); ``bench/bad_input.py`` prints its figures. The target, met
here: no unclear error, no silent acceptance, no hang, no valid numpy
number rejected. ``EXPECTED_FAILURES`` would list, with a reason, any probe
that is known to fail; it is empty.
"""

import keras
import pytest

from tests import _bad_input as harness

# (name, parameter, probe label) -> why it is accepted as a known failure.
EXPECTED_FAILURES = {}

FUZZED = sorted(harness.BASELINES)


def test_every_public_name_is_fuzzed_or_excluded_with_a_reason():
    names = set(harness.public_names())
    covered = set(harness.BASELINES) | set(harness.RESULT_TYPES) | set(harness.ABSTRACT)
    assert names - covered == set(), "add a valid call to BASELINES in tests/_bad_input.py"
    assert covered - names == set(), "the harness names something that is not public"


@pytest.mark.parametrize("key", FUZZED)
def test_bad_input_gets_a_clear_error(key, tmp_path):
    backend = harness.BACKEND_ONLY.get(key)
    if backend and keras.backend.backend() != backend:
        pytest.skip(f"{key} runs on the {backend} backend only")
    assert harness.baseline_works(key, str(tmp_path)) is None
    rows = harness.fuzz(key, str(tmp_path))
    parameters = harness.inspect.signature(harness.resolve(key)).parameters
    if parameters:
        assert rows, f"{key} has parameters but no probe ran"
    failures = {
        (name, label): outcome
        for name, label, role, outcome in rows
        if outcome.split(":")[0] in ("unclear", "silent", "hang", "rejected")
        and (key, name, label) not in EXPECTED_FAILURES
    }
    assert failures == {}


# -- the harness itself tells clear from unclear, silent and hang ---------------------


def test_the_harness_classifies_errors():
    value = 10**400
    from nnkit import _validation as v

    with pytest.raises(ValueError) as raised:
        v.check_number("rate", value)
    assert harness.judge_error(raised.value, "rate", value) == "clear"
    assert harness.judge_error(KeyError("rate"), "rate", 1) == "unclear: KeyError"
    assert harness.judge_error(ValueError("bad value 1"), "rate", 1) == (
        "unclear: argument not named"
    )
    assert harness.judge_error(ValueError("`rate` is bad"), "rate", 1.5) == (
        "unclear: value not echoed"
    )
    outside = ValueError("`rate` is bad. Received: rate=2")  # raised here, not in nnkit
    try:
        raise outside
    except ValueError as error:
        assert harness.judge_error(error, "rate", 2) == "unclear: raised outside nnkit"
    assert harness.judge_error(harness.Hang("slow"), "rate", 1) == "hang"


def test_the_harness_finds_silent_acceptance_and_hangs(monkeypatch):
    import time

    def accepts_anything(rate=0.5):
        return rate

    def hangs(rate=0.5):
        if rate != 0.5:
            time.sleep(5)
        return rate

    monkeypatch.setattr(harness, "TIME_LIMIT", 0.2)
    monkeypatch.setattr(
        harness, "resolve", lambda key: {"fake.a": accepts_anything, "fake.h": hangs}[key]
    )
    monkeypatch.setitem(harness.BASELINES, "fake.a", lambda c: {"rate": 0.5})
    monkeypatch.setitem(harness.BASELINES, "fake.h", lambda c: {"rate": 0.5})
    silent = {(n, label): o for n, label, _, o in harness.fuzz("fake.a")}
    hung = {(n, label): o for n, label, _, o in harness.fuzz("fake.h")}
    # NaN comes back and fails the exercise (a non-finite result); None passes it.
    assert silent[("rate", "nan")].startswith("silent: accepted, then Broken")
    assert silent[("rate", "None")] == "silent: accepted"
    assert silent[("rate", "numpy")] == "accepted"
    assert hung[("rate", "nan")] == "hang"
    counts = harness.summary(o for o in silent.values())
    assert counts["tried"] == len(silent) and counts["silent"] > 0 and counts["clear"] == 0


def test_the_time_limit_waits_for_a_finalizer_to_finish():
    # Raised inside ``__del__``, the alarm would be lost as an unraisable
    # exception (a CI failure once, while garbage collection ran); it is
    # postponed and fires in the call itself.
    import time

    finished = []

    class SlowToCollect:
        def __del__(self):
            time.sleep(0.3)
            finished.append(True)

    with pytest.raises(harness.Hang):
        with harness.time_limit(0.1):
            SlowToCollect()
            while True:
                time.sleep(0.01)
    assert finished == [True]
