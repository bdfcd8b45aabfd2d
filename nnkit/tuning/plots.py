"""PNG plots of the sensitivity report, drawn with matplotlib's object API (Agg).

``matplotlib.pyplot`` is never imported, so making a report changes neither the
global backend nor any open figure of the caller.
"""

import math

import numpy as np

from nnkit.tuning._surrogate import numeric_values, uses_log
from nnkit.tuning.analysis import is_numeric

SIZE = (6.0, 4.0)
DPI = 100


def _figure(size=SIZE):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path, left=0.13):
    # Fixed margins: tight_layout would draw every figure twice.
    figure.subplots_adjust(left=left, right=0.97, bottom=0.13, top=0.96)
    figure.savefig(path)
    return path


def _log_y(axes, values):
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() / values.min() > 100:
        axes.set_yscale("log")


def _positions(spec, values, rng):
    """x positions: the values themselves, or a jittered index for choices."""
    if is_numeric(spec):
        return np.asarray(values, dtype=float), None
    labels = list(spec["values"] or [])
    labels += [v for v in dict.fromkeys(values) if v not in labels]
    index = {repr(v): i for i, v in enumerate(labels)}
    x = np.array([index[repr(v)] for v in values], dtype=float)
    return x + rng.uniform(-0.15, 0.15, size=len(x)), labels


def _axis(axes, spec, labels, which="x"):
    if labels is not None:
        set_ticks = axes.set_xticks if which == "x" else axes.set_yticks
        set_ticks(range(len(labels)), [str(v) for v in labels])
    elif spec["sampling"] == "log":
        from matplotlib.ticker import NullFormatter

        (axes.set_xscale if which == "x" else axes.set_yscale)("log")
        # Minor labels (2x10^1, 3x10^1, ...) overlap on short ranges such as 16..256.
        (axes.xaxis if which == "x" else axes.yaxis).set_minor_formatter(NullFormatter())


def importance(result, path):
    """Horizontal bars: importance on all trials, whiskers the bootstrap interval."""
    names = list(reversed(result.names))
    point = np.array([result.point[n] for n in names])
    low = np.array([result.low[n] for n in names])
    high = np.array([result.high[n] for n in names])
    figure = _figure((6.0, 0.45 * len(names) + 1.5))
    axes = figure.add_subplot()
    axes.barh(names, point, color="tab:blue", alpha=0.7)
    if result.n_bootstrap:
        err = np.vstack([np.clip(point - low, 0, None), np.clip(high - point, 0, None)])
        axes.errorbar(point, names, xerr=err, fmt="none", ecolor="black", capsize=3)
    axes.set_xlabel("importance (90 % bootstrap interval)")
    axes.set_xlim(0, max(1.0, float(np.nanmax(high, initial=0.0))))
    longest = max((len(n) for n in names), default=1)
    return _save(figure, path, left=min(0.5, 0.05 + 0.014 * longest))


def knob(study, name, rows, objectives, sign, threshold, robust, path, label, *, noise=None,
         curve=None):  # fmt: skip
    """Objective against one knob's value, the robust range shaded; write it to ``path``.

    ``sign`` is 1 when lower is better, -1 when higher is; ``curve`` the fitted
    ``_surrogate.Curve`` (on the oriented objective) or None.
    """
    figure = knob_figure(
        study, name, rows, objectives, sign, threshold, robust, label, noise=noise, curve=curve
    )
    return _save(figure, path)


def knob_figure(study, name, rows, objectives, sign, threshold, robust, label, *, noise=None,
                curve=None):  # fmt: skip
    """The figure of ``knob``, not yet saved; every line and marker set has a legend entry."""
    spec = study.spec(name)
    pairs = [
        (row["hyperparameters"][name], y)
        for row, y in zip(rows, objectives, strict=True)
        if row["hyperparameters"].get(name) is not None
    ]
    figure = _figure()
    axes = figure.add_subplot()
    if pairs:
        values, ys = zip(*pairs, strict=True)
        ys = np.array(ys)
        grid = spec["type"] == "choice" and numeric_values(spec)  # a grid of numbers: an axis
        if grid:
            x, labels = np.asarray(values, dtype=float), None
        else:
            x, labels = _positions(spec, values, np.random.default_rng(0))
        axes.scatter(x, ys, s=14, alpha=0.6, color="tab:blue", label="trials")
        best = int(np.argmin(sign * ys))
        axes.scatter([x[best]], [ys[best]], marker="*", s=150, color="tab:red", label="best")
        if robust is not None and labels is None:
            axes.axvspan(robust[0], robust[1], color="tab:green", alpha=0.15, label="robust range")
        if curve is not None and labels is None:
            xs = 10.0**curve.x if curve.log else curve.x
            axes.plot(xs, sign * curve.fit, color="tab:orange", linewidth=1.5, label="fitted curve")
        if math.isfinite(threshold):
            axes.axhline(
                threshold, color="tab:green", linestyle="--", linewidth=1,
                label="within 2σ of the best" if noise is not None else "best 10 % cut-off",
            )  # fmt: skip
        if grid:
            if uses_log(spec, values):
                axes.set_xscale("log")
        else:
            _axis(axes, spec, labels)
        _log_y(axes, ys)
        axes.legend(loc="best", fontsize="small")
    axes.set_xlabel(name + (" (log scale)" if spec.get("sampling") == "log" else ""))
    axes.set_ylabel(label)
    return figure


def pair(study, names, rows, objectives, sign, path, label):
    """The two top knobs against each other, each trial coloured by its objective."""
    first, second = (study.spec(n) for n in names)
    kept = [
        (row["hyperparameters"][names[0]], row["hyperparameters"][names[1]], y)
        for row, y in zip(rows, objectives, strict=True)
        if row["hyperparameters"].get(names[0]) is not None
        and row["hyperparameters"].get(names[1]) is not None
    ]
    figure = _figure((6.0, 4.8))
    axes = figure.add_subplot()
    if kept:
        a, b, ys = zip(*kept, strict=True)
        rng = np.random.default_rng(0)
        x, x_labels = _positions(first, a, rng)
        y, y_labels = _positions(second, b, rng)
        ys = np.array(ys)
        # Colour by rank, so that one diverged trial does not wash out the rest.
        ranks = np.argsort(np.argsort(sign * ys)) / max(len(ys) - 1, 1)
        points = axes.scatter(x, y, c=ranks, cmap="viridis_r", s=22)
        best = int(np.argmin(sign * ys))
        axes.scatter([x[best]], [y[best]], marker="*", s=200, color="tab:red", label="best")
        axes.legend(loc="best", fontsize="small")
        colorbar = figure.colorbar(points, ax=axes)
        colorbar.set_label(f"rank of {label} (0 = best)")
        _axis(axes, first, x_labels, "x")
        _axis(axes, second, y_labels, "y")
    axes.set_xlabel(names[0])
    axes.set_ylabel(names[1])
    return _save(figure, path)


def budget(values, running, sign, path, label):
    """Best-so-far against trial number; trials without an objective marked at the top."""
    figure = _figure()
    axes = figure.add_subplot()
    n = np.arange(1, len(values) + 1)
    finite = np.isfinite(values)
    axes.scatter(n[finite], values[finite], s=10, color="tab:gray", alpha=0.6, label="trial")
    axes.step(n, running, where="post", color="tab:blue", label="best so far")
    if (~finite).any() and finite.any():
        top = np.nanmax(values[finite]) if sign > 0 else np.nanmin(values[finite])
        axes.scatter(
            n[~finite], np.full((~finite).sum(), top), marker="x", color="tab:red",
            label="failed",
        )  # fmt: skip
    _log_y(axes, values)
    axes.set_xlabel("trials run")
    axes.set_ylabel(label)
    axes.legend(loc="best", fontsize="small")
    return _save(figure, path)
