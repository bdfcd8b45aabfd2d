"""Is a knob's apparent effect only its correlation with another knob in the sampled trials?

Random search draws knobs independently, but a small sweep, a conditional knob
seen in a few trials, or a hand-made or model-based set of trials can leave
two knobs correlated by chance. The knob that does nothing then "explains" the
objective through the one that does (the issue's ``sam_rho`` ranked second
because its high values fell on very low learning rates).

For each pair ``(a, b)`` of numeric or boolean knobs, over the trials where
both are active::

    rho      = Spearman correlation of a and b
    R2(a)    = 1 - sum (y - f_a(a))^2 / sum (y - mean y)^2
    R2(a|b)  = R2(f_a + f_b) - R2(b): what a explains beyond b, from the additive
               fit y ~ f_a(a) + f_b(b) (backfitting, 10 rounds)

``a`` is flagged as confounded with ``b`` when |rho| >= max(0.3, 2.5/sqrt(n))
(a correlation chance would rarely give), a has an apparent effect
(R2(a) >= 0.05), most of it vanishes once b is accounted for
(R2(a|b) < 0.25 R2(a)), and b keeps its effect once a is accounted for
(R2(b|a) >= 0.5 (1 - R2(a)), half of what a leaves unexplained). When both vanish, neither can be told apart from the
other; the one that explains less alone is reported as confounded with the other. ``f`` is the local-linear curve of
``nnkit.tuning._surrogate`` for numbers and the mean per value for booleans.

It does not look at choices that are not numbers or booleans.
"""

import dataclasses
import math

import numpy as np

from nnkit.tuning import _surrogate

MIN_RHO = 0.3
RHO_Z = 2.5  # |rho| must also exceed RHO_Z / sqrt(n): chance gives sd ~ 1/sqrt(n)
MIN_APPARENT = 0.05
VANISHES = 0.25
SURVIVES = 0.5
MIN_PAIRS = 8
BACKFIT_ITERATIONS = 10


@dataclasses.dataclass(frozen=True)
class Confounding:
    """``knob``'s apparent effect is explained by ``by`` over ``n`` trials (both active)."""

    knob: str
    by: str
    rho: float
    n: int
    apparent: float  # R2(knob), leave-one-out
    beyond: float  # R2(knob | by)
    mutual: bool  # neither knob's effect survives the other's


def axis(spec, values):
    """A knob's values on its analysis scale, or None for a non-numeric choice."""
    if spec["type"] == "boolean":
        return np.array([float(bool(v)) for v in values])
    if not _surrogate.numeric_values(spec):
        return None
    values = np.asarray(values, dtype=float)
    return np.log10(values) if _surrogate.uses_log(spec, values) else values


class _Smoother:
    """A 1-D fit of a knob: group means for <= 3 values, else local-linear (bandwidth by
    leave-one-out error on the objective itself)."""

    def __init__(self, x, y):
        self.x = x
        self.groups = np.unique(x) if len(np.unique(x)) <= 3 else None
        self.h = None if self.groups is not None else _surrogate.choose_bandwidth(x, y)

    def __call__(self, target):
        if self.groups is not None:
            fit = np.empty_like(target)
            for value in self.groups:
                same = self.x == value
                fit[same] = target[same].mean()
            return fit
        fit = _surrogate._local_linear(self.x, target, self.x, self.h)
        return np.where(np.isfinite(fit), fit, target.mean())


def _r2(residual, total):
    return 1.0 - float(np.sum(residual**2)) / total


def _spearman(a, b):
    def ranks(u):
        order = np.argsort(u, kind="stable")
        r = np.empty(len(u))
        r[order] = np.arange(len(u))
        # Average ties so a boolean gets one rank per value.
        for value in np.unique(u):
            same = u == value
            r[same] = r[same].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def pair(a, b, y):
    """``(rho, R2(a), R2(b), R2(a|b), R2(b|a))`` over matched arrays (in-sample fits)."""
    total = float(np.sum((y - y.mean()) ** 2))
    rho = _spearman(a, b)
    if total <= 0:
        return rho, 0.0, 0.0, 0.0, 0.0
    y = y - y.mean()
    fa_, fb_ = _Smoother(a, y), _Smoother(b, y)
    r2a, r2b = _r2(y - fa_(y), total), _r2(y - fb_(y), total)
    # Backfitting of the additive model y ~ f_a(a) + f_b(b) (Hastie & Tibshirani).
    fa, fb = np.zeros_like(y), np.zeros_like(y)
    for _ in range(BACKFIT_ITERATIONS):
        fa = fa_(y - fb)
        fa -= fa.mean()
        fb = fb_(y - fa)
        fb -= fb.mean()
    both = _r2(y - fa - fb, total)
    beyond_a, beyond_b = both - r2b, both - r2a
    return rho, r2a, r2b, beyond_a, beyond_b


def find(study, rows, names, objectives):
    """The confounded knobs among ``names``: a list of ``Confounding``, strongest first."""
    objectives = np.asarray(objectives, dtype=float)
    found = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            keep = [
                k
                for k, row in enumerate(rows)
                if row["hyperparameters"].get(a) is not None
                and row["hyperparameters"].get(b) is not None
            ]
            n = len(keep)
            if n < MIN_PAIRS:
                continue
            xa = axis(study.spec(a), [rows[k]["hyperparameters"][a] for k in keep])
            xb = axis(study.spec(b), [rows[k]["hyperparameters"][b] for k in keep])
            if xa is None or xb is None:
                continue
            y = objectives[keep]
            rho, r2a, r2b, beyond_a, beyond_b = pair(xa, xb, y)
            if abs(rho) < max(MIN_RHO, RHO_Z / math.sqrt(n)):
                continue
            a_gone = r2a >= MIN_APPARENT and beyond_a < VANISHES * r2a
            b_gone = r2b >= MIN_APPARENT and beyond_b < VANISHES * r2b
            # Partial R^2: the share of what the other leaves unexplained.
            a_stays = beyond_a >= SURVIVES * max(1.0 - r2b, 0.0)
            b_stays = beyond_b >= SURVIVES * max(1.0 - r2a, 0.0)
            if a_gone and b_stays:
                found.append(Confounding(a, b, rho, n, r2a, beyond_a, False))
            elif b_gone and a_stays:
                found.append(Confounding(b, a, rho, n, r2b, beyond_b, False))
            elif a_gone and b_gone:  # named after the weaker one: the likelier bystander
                if r2a <= r2b:
                    found.append(Confounding(a, b, rho, n, r2a, beyond_a, True))
                else:
                    found.append(Confounding(b, a, rho, n, r2b, beyond_b, True))
    return sorted(found, key=lambda c: -c.apparent)


def sentence(c, best_value):
    """The report's warning for one ``Confounding``."""
    shown = f"{best_value:.3g}" if isinstance(best_value, float) else str(best_value)
    if c.mutual:
        return (
            f"`{c.knob}` and `{c.by}` are confounded: they are correlated in the sampled trials "
            f"(Spearman ρ = {c.rho:+.2f} over {c.n} trials where both are active) and neither's "
            f"effect survives the other's, so their importances cannot be told apart; "
            f"`{c.knob}` explains less alone ({c.apparent:.0%}). Rerun with `{c.by}` fixed "
            f"(e.g. `SearchSpace.fixed({c.by}={shown})`) to measure `{c.knob}` on its own."
        )
    return (
        f"`{c.knob}`'s apparent importance is explained by its correlation with `{c.by}` in "
        f"the sampled trials (Spearman ρ = {c.rho:+.2f} over {c.n} trials where both are "
        f"active): it explains {c.apparent:.0%} of the objective's variance alone but "
        f"{max(c.beyond, 0.0):.0%} beyond `{c.by}`. Rerun with `{c.by}` fixed "
        f"(e.g. `SearchSpace.fixed({c.by}={shown})`) to measure `{c.knob}` on its own."
    )
