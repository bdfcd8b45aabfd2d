"""Run a list of matrix cases in this process and write ``{case id: outcome}`` as JSON.

``python -m tests.composition._column OUT.json [CASE_ID ...]`` (no ids: every
case with JAX, which needs ``KERAS_BACKEND=jax``). An outcome is
``"passed"``, ``"warned: ..."`` or ``"raised: Type: message"``.
"""

import json
import pathlib
import sys
import tempfile
import traceback

from tests.composition import _parts as P


def outcome(names, tmp_path=None):
    """What running the case gave: ``passed``, ``warned: ...`` or ``raised: Type: ...``."""
    if tmp_path is None:
        with tempfile.TemporaryDirectory() as tmp:
            return outcome(names, pathlib.Path(tmp))
    try:
        warned = P.run_case(names, tmp_path)
    except Exception as error:  # noqa: BLE001 - reported to the test, which judges it
        detail = "".join(traceback.format_exception_only(error)).strip()
        return f"raised: {type(error).__name__}: {detail[:1500]}"
    return "passed" if not warned else "warned: " + " | ".join(warned)[:1500]


def main(out, ids):
    cases = {P.case_id(c): c for c in P.combinations()}
    if not ids:
        ids = [i for i, c in cases.items() if "JAX" in c and P.key(c) not in P.NOT_A_PAIR]
    results = {}
    for case in ids:
        results[case] = outcome(cases[case])
        pathlib.Path(out).write_text(json.dumps(results, indent=1))
        print(case, results[case][:200], flush=True)


if __name__ == "__main__":
    import os

    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        from tests.conftest import pytest_configure

        pytest_configure(None)  # two logical CPU devices, as in the suite
    main(sys.argv[1], sys.argv[2:])
