"""The composition matrix (issue 21 item 1): every pair of training-time parts, and three triples.

Each case builds one small run from its parts (``_parts.PARTS``), trains it
and runs every part's check, so what a part *means* (what the monitor
measures, what SWA averages, what is restored, what resumes) is checked
with its neighbour in place. A refused pair must raise its error, naming
both parts, before or at the first step. The JAX column runs in one
subprocess (``KERAS_BACKEND=jax``) for all its cases; the parametrized tests
read its outcomes. ``docs/composition.md`` is rendered from the same table
and compared here.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.composition import _parts as P
from tests.composition import render

ROOT = pathlib.Path(__file__).resolve().parents[2]


#: Parts whose cases train more than once (resumed; one device beside two replicas).
SLOW = ("BackupAndRestore", "MirroredStrategy")


def _marks(names):
    reason = P.lookup(P.XFAIL, names)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return marks + ([pytest.mark.slow] if any(n in SLOW for n in names) else [])


def _cases(jax):
    return [
        pytest.param(names, id=P.case_id(names), marks=_marks(names))
        for names in P.combinations()
        if ("JAX" in names) == jax and P.lookup(P.NOT_A_PAIR, names) is None
    ]


def _judge(names, outcome):
    """Assert an outcome string of ``_column.outcome``: passed, warned as expected, or refused."""
    refusal = P.lookup(P.REFUSED, names)
    if refusal is not None:
        error, fragment, _ = refusal
        assert outcome.startswith(f"raised: {error.__name__}:") and fragment in outcome, outcome
        return
    expected = P.lookup(P.WARNS, names)
    if expected is None:
        assert outcome == "passed", outcome
    else:
        assert outcome.startswith("warned: ") and expected in outcome, outcome


@pytest.mark.parametrize("names", _cases(jax=False))
def test_pair(names, tmp_path):
    from tests.composition._column import outcome

    _judge(names, outcome(names, tmp_path))


@pytest.fixture(scope="module")
def jax_column(tmp_path_factory):
    pytest.importorskip("jax")
    out = tmp_path_factory.mktemp("jax") / "column.json"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.composition._column", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("names", _cases(jax=True))
def test_jax_pair(names, jax_column):
    _judge(names, jax_column[P.case_id(names)])


def test_every_pair_has_a_verdict():
    """Every unordered pair is run, refused or not a combination; tables name real pairs."""
    names = {part.name for part in P.PARTS}
    for table in (P.NOT_A_PAIR, P.REFUSED, P.XFAIL, P.WARNS):
        for key in table:
            assert key <= names, key
    assert not set(P.NOT_A_PAIR) & (set(P.REFUSED) | set(P.XFAIL))
    for error, fragment, advice in P.REFUSED.values():
        assert issubclass(error, Exception) and fragment and advice


def test_docs_table_is_rendered_from_the_table():
    page = ROOT / "docs" / "composition.md"
    assert page.read_text(encoding="utf-8") == render.page(), (
        "docs/composition.md differs from tests/composition/_parts.py; regenerate it with "
        "`python -m tests.composition.render` (make composition-docs)"
    )


@pytest.mark.parametrize("outer", ["SharpnessAwareMinimization", "MixUp"])
def test_a_data_batch_wrapper_refuses_a_meta_learner(outer):
    """The reverse nesting of the refused pairs: SAM(MAML(m)) and MixUp(MAML(m))."""
    import keras

    import nnkit.models
    from nnkit.meta import MAML

    net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    learner = MAML(net)
    with pytest.raises(ValueError, match=f"{outer} cannot wrap MAML: MAML trains on batches"):
        getattr(nnkit.models, outer)(learner)
