"""Render docs/composition.md from the composition matrix's table (``_parts.py``).

``python -m tests.composition.render`` rewrites the page (``make
composition-docs``); ``test_matrix.py`` fails when the page differs from
what this renders, so the page cannot drift from the tests.
"""

import pathlib
import sys

from tests.composition import _parts as P

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "composition.md"

HEADER = """# Composition: which parts work together

nnkit's training-time parts are tested in pairs (and in a few triples that
users write), in one small run each: a Dense 4→3→2 model, 2 steps of 8 rows
per epoch, 3 epochs. A **supported** pair runs both parts' checks with the
other part in place: each check asserts what its part *means* after the fit,
against a closed form written in the test (not only that the loss falls). A
**refused** pair raises an error naming both parts at construction, `compile`
or the first step. **Not a pair**: the two cannot be in one `fit`. A **known
bug** is a pair that is silently wrong on this version; its test is a strict
expected failure until the fix named there lands.

This page is generated from `tests/composition/_parts.py` by
`python -m tests.composition.render` (`make composition-docs`);
`tests/composition/test_matrix.py` fails when it differs.

## What each part's check asserts

| part | kind | checked after the fit |
|---|---|---|
"""

RULES = """
## Rules that decide a pair

- `StochasticWeightAveraging` with `EarlyStopping(restore_best_weights=True)`:
  the model ends on SWA's average, in either callback order, with one warning
  (see [generalization](generalization.md#swa-and-its-neighbours)).
- Callbacks that stop training (`EarlyStopping`, `MedianStopping`) end the run
  after epoch 1 here; the other parts' checks then read the epochs that ran.
- Under `MirroredStrategy`, SAM's ε is per replica: two replicas equal one
  device with `num_batch_splits=2`. Parts with per-row randomness (`MixUp`,
  `DropPath`) draw per replica, so only their own checks apply there.
- Meta-learners (`MAML`) train on task batches: a data-batch wrapper around
  one (`SharpnessAwareMinimization(MAML(m))`, `MixUp(MAML(m))`) is refused, and
  so is `MAML(MixUp(m))` (it would mix whole tasks); `MAML(SharpnessAwareMinimization(m))`
  takes sharpness-aware steps on the meta-loss (tested against a closed form in
  `tests/models/test_wrapper.py`; here, with task batches, only the parts' own
  checks apply).
- "A known first gradient": checks that need the first step's closed-form
  gradient (the monitor's norm, SAM's step, a preconditioner's first step)
  apply where the run has no `MixUp`, `DropPath` or task batches; SAM's
  formula also needs plain SGD (no KFAC, Shampoo or SOAP).
"""


def _verdict(names):
    refusal = P.lookup(P.REFUSED, names)
    if refusal is not None:
        error, _, advice = refusal
        return "refused", f"`{error.__name__}`: {advice}"
    reason = P.lookup(P.NOT_A_PAIR, names)
    if reason is not None:
        return "not a pair", reason
    reason = P.lookup(P.XFAIL, names)
    if reason is not None:
        return "known bug", reason
    warning = P.lookup(P.WARNS, names)
    checked = "; ".join(f"{name}: {P.BY_NAME[name].checks}" for name in names)
    note = f" Warns: “{warning}…”." if warning else ""
    return "supported", checked + "." + note


def page():
    lines = [HEADER.rstrip("\n")]
    for part in P.PARTS:
        lines.append(f"| `{part.name}` | {part.kind} | {part.checks} |")
    lines.append(RULES.rstrip("\n"))
    lines += ["", "## Pairs", "", "| first | second | verdict | what is checked, or why |"]
    lines.append("|---|---|---|---|")
    seen = set()
    for names in P.combinations():
        if len(names) != 2 or P.key(names) in seen:
            continue
        seen.add(P.key(names))
        verdict, detail = _verdict(names)
        lines.append(f"| `{names[0]}` | `{names[1]}` | {verdict} | {detail} |")
    lines += ["", "## Triples", "", "| parts | verdict | what is checked, or why |"]
    lines.append("|---|---|---|")
    for names in P.TRIPLES:
        verdict, detail = _verdict(names)
        lines.append(f"| {' + '.join(f'`{n}`' for n in names)} | {verdict} | {detail} |")
    return "\n".join(lines) + "\n"


def main():
    PAGE.write_text(page(), encoding="utf-8")
    print(f"wrote {PAGE}", file=sys.stderr)


if __name__ == "__main__":
    main()
