"""Throw a table of wrong values at every parameter of every public nnkit name; count the outcomes.

Question: when a user passes a wrong value (``None``, a bool, NaN, ±inf, 0,
−1, 1e308, ``10**400``, an empty or unknown string, a list, a dict, an
object that is no array), does nnkit answer with a clear error, that is a
``ValueError``/``TypeError`` (``FileNotFoundError`` for a missing path)
raised in nnkit's own code whose message names the argument and echoes the
value? And does it accept numpy scalars and 0-d arrays wherever a Python
number is? The harness is ``tests/_bad_input.py`` (its docstring gives the
tables and the rules); ``tests/test_bad_input.py`` asserts the targets.

Outcomes per probe: ``clear``; ``unclear`` (another exception, or one
without the argument's name, the value, or raised outside nnkit);
``silent`` (a wrong value accepted, or a range value accepted whose result
then fails or gives non-finite numbers); ``hang`` (no answer within the
time limit); ``accepted`` (a range or valid value accepted, and the result
works); ``rejected`` (a valid numpy number refused).

Usage::

    python bench/bad_input.py                 # every public name (about a minute)
    python bench/bad_input.py --only schedules.StepDecay,losses.SmoothL1

The last line of stdout is one JSON object: the totals, the counts per
name, and every probe that is not clear or accepted.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import _bad_input as harness  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated names (default: all)")
    args = parser.parse_args(argv)

    import keras

    names = [n for n in args.only.split(",") if n] or sorted(harness.BASELINES)
    unknown = [n for n in names if n not in harness.BASELINES]
    if unknown:
        parser.error(f"--only: unknown names {unknown}; choose from {sorted(harness.BASELINES)}")
    backend = keras.backend.backend()
    per_name, problems, skipped = {}, [], {}
    start = time.perf_counter()
    for name in names:
        if name in harness.BACKEND_ONLY and harness.BACKEND_ONLY[name] != backend:
            skipped[name] = f"{harness.BACKEND_ONLY[name]} backend only"
            continue
        with tempfile.TemporaryDirectory() as root:
            error = harness.baseline_works(name, root)
            if error:
                problems.append(
                    {"name": name, "parameter": None, "outcome": f"valid call: {error}"}
                )
                continue
            rows = harness.fuzz(name, root)
        counts = harness.summary(outcome for *_, outcome in rows)
        per_name[name] = counts
        print(f"{name:45s} " + " ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
        for parameter, label, _role, outcome in rows:
            if outcome.split(":")[0] not in ("clear", "accepted"):
                problems.append(
                    {"name": name, "parameter": parameter, "probe": label, "outcome": outcome}
                )
    totals = harness.summary([])
    for counts in per_name.values():
        for key, value in counts.items():
            totals[key] += value
    figures = {
        **totals,
        "names": len(per_name),
        "parameters": sum(
            len(harness.inspect.signature(harness.resolve(n)).parameters) for n in per_name
        ),
        "seconds": round(time.perf_counter() - start, 1),
        "backend": backend,
        "keras": keras.__version__,
        "skipped": skipped,
        "per_name": per_name,
        "problems": problems,
    }
    print(
        f"tried {totals['tried']}: clear {totals['clear']}, unclear {totals['unclear']}, "
        f"silent {totals['silent']}, hang {totals['hang']}, accepted {totals['accepted']}, "
        f"rejected {totals['rejected']}"
    )
    print(json.dumps(figures, sort_keys=True))
    return figures


if __name__ == "__main__":
    main()
