"""One knob's effect as a smooth curve between the observed points, and the range it allows.

The sensitivity report's robust range used to be the span of the observed
values among the near-best trials: a 7-rate grid then had one trial near the
best, and a range of one value. Here the objective is fitted against the
knob's value with a local-linear smoother (a Gaussian kernel, its bandwidth
chosen by leave-one-out error), evaluated on a fine grid between the smallest
and largest observed values, and the robust range is the interval around the
curve's minimum where the curve stays within a tolerance of it::

    f(g) = argmin_{a, b} sum_j K((x_j - g) / h) (y_j - a - b (x_j - g))^2,  read off a
    range = the connected set {g : f(g) <= min f + tol (+ 2·se)} that holds argmin f

``x`` is the knob on its analysis scale (log10 for log-sampled knobs and for
grids of positive numbers spanning a decade or more). The uncertainty of each
end is the 5th–95th percentile over bootstrap resamples of the trials, refitted
with the same bandwidth; ``se`` is the median over the grid of the resampled
curves' standard deviation, added when the noise is unknown and other knobs
varied in the same trials, so that a dip within the curve's own uncertainty
(a knob that does nothing) does not make a narrow range. Over a random search of several knobs the curve is the
knob's marginal effect: the other knobs' effects average out into it.

This module does not extrapolate beyond the observed values, and it does not
fit choices that are not numbers (``categorical_range`` keeps them as a list).
"""

import dataclasses
import math

import numpy as np

GRID_POINTS = 201
BANDWIDTHS = (0.04, 0.06, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)  # fractions of the observed width
N_BOOTSTRAP = 100
SE_MULTIPLIER = 2.0
INTERVAL = (5.0, 95.0)


@dataclasses.dataclass(frozen=True)
class Curve:
    """A fitted curve of one knob: ``x`` on the analysis scale, ``fit`` the oriented objective."""

    x: np.ndarray
    fit: np.ndarray
    bandwidth: float
    log: bool


@dataclasses.dataclass(frozen=True)
class RobustRange:
    """A robust range on the knob's own scale, with the bootstrap interval of each end."""

    low: float
    high: float
    low_interval: tuple  # (5th, 95th) percentile of the lower end over resamples
    high_interval: tuple
    open_low: bool  # the range reaches the smallest observed value (may go further)
    open_high: bool
    curve: Curve


def numeric_values(spec):
    """Whether the knob's values are numbers on an axis (floats, ints, a grid of numbers)."""
    if spec["type"] in ("float", "int"):
        return True
    values = spec.get("values") or []
    return (
        spec["type"] == "choice"
        and len(values) >= 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)
    )


def uses_log(spec, values):
    """log10 for log-sampled knobs, and for grids of positive numbers spanning >= a decade."""
    if spec["type"] in ("float", "int"):
        return spec["sampling"] == "log"
    values = np.asarray(values, dtype=float)
    return bool(len(values) and values.min() > 0 and values.max() / values.min() >= 10)


def _moments(x, y, at, h):
    d = x[None, :] - at[:, None]
    w = np.exp(-0.5 * (d / h) ** 2)
    s0, s1, s2 = w.sum(1), (w * d).sum(1), (w * d * d).sum(1)
    t0, t1 = (w * y).sum(1), (w * d * y).sum(1)
    return s0, s1, s2, t0, t1


def _local_linear(x, y, at, h):
    s0, s1, s2, t0, t1 = _moments(x, y, at, h)
    det = s0 * s2 - s1 * s1
    with np.errstate(invalid="ignore", divide="ignore"):
        linear = (s2 * t0 - s1 * t1) / det
        mean = t0 / s0
    # Where the weights sit on one point the line is undetermined: fall back to their mean.
    good = det > 1e-9 * np.maximum(s0 * s2, 1e-300)
    return np.where(good & np.isfinite(linear), linear, mean)


def loo_errors(x, y, h):
    """Leave-one-out residuals of the local-linear fit at bandwidth ``h``."""
    d = x[None, :] - x[:, None]
    w = np.exp(-0.5 * (d / h) ** 2)
    np.fill_diagonal(w, 0.0)
    s0, s1, s2 = w.sum(1), (w * d).sum(1), (w * d * d).sum(1)
    t0, t1 = (w * y).sum(1), (w * d * y).sum(1)
    det = s0 * s2 - s1 * s1
    with np.errstate(invalid="ignore", divide="ignore"):
        linear = (s2 * t0 - s1 * t1) / det
        mean = t0 / s0
    good = det > 1e-9 * np.maximum(s0 * s2, 1e-300)
    predicted = np.where(good & np.isfinite(linear), linear, mean)
    return y - predicted


def choose_bandwidth(x, y):
    """The widest bandwidth (from ``BANDWIDTHS`` × width) whose leave-one-out error is within
    one standard error of the least (the one-standard-error rule).

    The rule keeps a knob that does nothing from getting a wiggly curve that
    chance fits best; bandwidths under half the widest gap between distinct
    observed values are not tried: they would turn the curve into steps.
    """
    distinct = np.unique(x)
    width = float(distinct[-1] - distinct[0])
    gap = float(np.max(np.diff(distinct)))
    candidates = [f * width for f in BANDWIDTHS if f * width >= 0.5 * gap] or [0.5 * gap]
    means, errors = [], []
    for h in candidates:
        squared = loo_errors(x, y, h) ** 2
        squared = squared[np.isfinite(squared)]
        means.append(float(squared.mean()) if len(squared) else math.inf)
        errors.append(float(squared.std() / math.sqrt(len(squared))) if len(squared) else 0.0)
    best = int(np.argmin(means))
    if not math.isfinite(means[best]):
        return candidates[-1]
    within = [i for i, m in enumerate(means) if m <= means[best] + errors[best]]
    return candidates[max(within)]


def fit_curve(x, y, *, log, bandwidth=None):
    """The local-linear curve of ``y`` against ``x`` (already on the analysis scale)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    h = choose_bandwidth(x, y) if bandwidth is None else bandwidth
    grid = np.linspace(x.min(), x.max(), GRID_POINTS)
    return Curve(grid, _local_linear(x, y, grid, h), h, log)


def _interval(curve, tol):
    best = int(np.argmin(curve.fit))
    inside = curve.fit <= curve.fit[best] + tol
    return _around(inside, best)


def _around(inside, best):
    lo = best
    while lo > 0 and inside[lo - 1]:
        lo -= 1
    hi = best
    while hi < len(inside) - 1 and inside[hi + 1]:
        hi += 1
    return lo, hi


def robust_range(values, objectives, tol, *, log, seed=0, n_bootstrap=N_BOOTSTRAP, widen=False):
    """The robust range of one knob, or ``None`` when fewer than 3 distinct values were tried.

    ``objectives`` are oriented (lower is better); ``tol`` is how far above the
    curve's minimum still counts as good; ``widen`` adds ``2·se`` to it (the
    report does when the noise is unknown and other knobs varied in the same
    trials: their effects are noise to this knob's curve).
    """
    values = np.asarray(values, dtype=float)
    y = np.asarray(objectives, dtype=float)
    x = np.log10(values) if log else values
    if len(np.unique(x)) < 3:
        return None
    curve = fit_curve(x, y, log=log)
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(n_bootstrap):
        picked = rng.integers(len(x), size=len(x))
        if len(np.unique(x[picked])) < 2:
            continue
        # Same bandwidth and the same grid: the spread is the data's, not the smoother's.
        fits.append(_local_linear(x[picked], y[picked], curve.x, curve.bandwidth))
    # A dip smaller than the curve's own uncertainty is not a preference: widen the
    # tolerance by twice the median (over the grid) bootstrap standard deviation of the fit,
    # so a knob that does nothing gets its whole range.
    spread = float(np.median(np.nanstd(np.array(fits), axis=0))) if len(fits) > 1 else 0.0
    if widen and math.isfinite(spread):
        tol = tol + SE_MULTIPLIER * spread
    lo, hi = _interval(curve, tol)
    ends = []
    for fit in fits:
        a, b = _interval(Curve(curve.x, fit, curve.bandwidth, log), tol)
        ends.append((curve.x[a], curve.x[b]))
    back = (lambda u: 10.0**u) if log else (lambda u: u)
    if ends:
        ends = np.array(ends)
        low_iv = tuple(float(back(e)) for e in np.percentile(ends[:, 0], INTERVAL))
        high_iv = tuple(float(back(e)) for e in np.percentile(ends[:, 1], INTERVAL))
    else:
        low_iv = high_iv = (math.nan, math.nan)
    return RobustRange(
        low=float(back(curve.x[lo])),
        high=float(back(curve.x[hi])),
        low_interval=low_iv,
        high_interval=high_iv,
        open_low=lo == 0,
        open_high=hi == len(curve.x) - 1,
        curve=curve,
    )


def categorical_range(values, objectives, tol, order):
    """The choices whose mean objective is within ``tol`` of the best choice's mean."""
    means = {}
    for value, y in zip(values, objectives, strict=True):
        means.setdefault(repr(value), (value, []))[1].append(y)
    best = min(float(np.mean(ys)) for _, ys in means.values())
    good = [value for value, ys in means.values() if float(np.mean(ys)) <= best + tol]
    rank = {repr(v): i for i, v in enumerate(order)}
    return sorted(good, key=lambda v: (rank.get(repr(v), len(rank)), repr(v)))


def tolerance(objectives, sigma, multiplier, fraction):
    """How far above the best still counts as good: ``multiplier``·σ, or, with the noise
    unknown, ``fraction`` of the gap between the median trial and the best."""
    if sigma is not None:
        return multiplier * sigma
    objectives = np.asarray(objectives, dtype=float)
    return fraction * float(np.median(objectives) - np.min(objectives))
