"""The result of ``diagnose``: a per-layer table, flags, suggestions and a heatmap."""

import math
import os
from typing import NamedTuple

import numpy as np

#: Flag kinds, most severe first.
KINDS = (
    "nonfinite",
    "exploding",
    "vanishing",
    "no_gradient",
    "high_update_ratio",
    "low_update_ratio",
)


class Flag(NamedTuple):
    """One finding: which layer (``None`` for the whole model), what, from which step, why."""

    layer: object
    kind: str
    first_step: int
    message: str


def _plain(x):
    """A float for JSON: ``None`` for NaN/inf/missing."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _fmt(x):
    return "-" if x is None or not math.isfinite(x) else f"{x:.2e}"


def _step_ticks(steps, most=8):
    """Column positions and labels of regularly spaced step ticks (0, 50, 100, ...).

    Samples need not be evenly spaced (every ``N``-th step plus an epoch's
    last one), so the ticks are round step values placed between the columns
    of the samples around them, not every ``k``-th column's step.
    """
    from matplotlib.ticker import MaxNLocator

    steps = np.asarray(steps, dtype=np.float64)
    if len(steps) < 2 or not np.all(np.diff(steps) > 0):
        stride = max(1, math.ceil(len(steps) / most))
        columns = np.arange(0, len(steps), stride)
        return columns, [str(int(steps[i])) for i in columns]
    first, last = steps[0], steps[-1]
    values = MaxNLocator(nbins=most, integer=True, steps=[1, 2, 2.5, 5, 10]).tick_values(
        first, last
    )
    values = values[(values >= first) & (values <= last)]
    return np.interp(values, steps, np.arange(len(steps))), [str(int(v)) for v in values]


class GradientReport:
    """What ``diagnose`` found: per-layer statistics, flags and suggestions.

    Use ``str(report)`` for a compact table in a log, ``report.to_dict()``
    for JSON, and ``report.plot(path)`` for a heatmap of every layer's
    gradient norm over time. Built by ``nnkit.diagnostics.diagnose``.

    Attributes:
        steps: int array ``[T]``, the step of each sample.
        layers: Tuple of the ``G`` group (layer) names, in forward order.
        grad_norms: float array ``[T, G]`` of gradient norms.
        rows: One dict per layer: ``layer``, ``median_grad_norm``,
            ``max_grad_norm``, ``median_update_ratio`` (``None`` without
            update ratios), ``nonfinite`` (total count) and ``flags`` (kinds).
        flags: List of ``Flag(layer, kind, first_step, message)``, most
            severe kind first; ``layer`` is ``None`` for ``"exploding"``,
            which concerns the global norm. Kinds: ``"nonfinite"``,
            ``"exploding"``, ``"vanishing"``, ``"no_gradient"``,
            ``"high_update_ratio"``, ``"low_update_ratio"``.
        suggestions: List of strings, one per cause found.
        rules: The ``DiagnosisRules`` used.
        global_norms: float array ``[T]`` of global norms.

    Example:
    >>> from nnkit.diagnostics import diagnose
    >>> report = diagnose([0, 10], ["a", "b"], [[1.0, 1.0], [30.0, 1.0]])
    >>> [(f.layer, f.kind, f.first_step) for f in report.flags]
    [(None, 'exploding', 10)]
    >>> report.to_dict()["layers"][0]["max_grad_norm"]
    30.0
    """

    def __init__(self, *, steps, layers, grad_norms, global_norms, rows, flags, suggestions, rules):
        self.steps = steps
        self.layers = tuple(layers)
        self.grad_norms = grad_norms
        self.global_norms = global_norms
        self.rows = rows
        self.flags = flags
        self.suggestions = suggestions
        self.rules = rules

    @property
    def healthy(self):
        """True when nothing was flagged."""
        return not self.flags

    def flagged(self, kind):
        """Names of the layers flagged with ``kind``, in forward order."""
        names = {f.layer for f in self.flags if f.kind == kind}
        return [name for name in self.layers if name in names]

    def to_dict(self):
        """The report as plain JSON types (NaN and inf become ``None``)."""
        finite = self.global_norms[np.isfinite(self.global_norms)]
        return {
            "samples": len(self.steps),
            "first_step": int(self.steps[0]) if len(self.steps) else None,
            "last_step": int(self.steps[-1]) if len(self.steps) else None,
            "median_global_norm": _plain(np.median(finite)) if finite.size else None,
            "max_global_norm": _plain(np.max(finite)) if finite.size else None,
            "layers": [
                {
                    k: (_plain(val) if k.startswith(("median", "max")) else val)
                    for k, val in row.items()
                }
                for row in self.rows
            ],
            "flags": [f._asdict() for f in self.flags],
            "suggestions": list(self.suggestions),
            "rules": self.rules.get_config(),
        }

    def __str__(self):
        header = ("layer", "median |g|", "max |g|", "median Δw/w", "flags")
        cells = [
            (
                row["layer"],
                _fmt(row["median_grad_norm"]),
                _fmt(row["max_grad_norm"]),
                _fmt(row["median_update_ratio"]),
                ",".join(row["flags"]) or "-",
            )
            for row in self.rows
        ]
        widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
        lines = [
            "  ".join(
                c.ljust(w) if i in (0, len(header) - 1) else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
            for line in [header, *cells]
        ]
        summary = self.to_dict()
        if summary["samples"]:
            lines.append(
                f"global norm: median {_fmt(summary['median_global_norm'])}, max "
                f"{_fmt(summary['max_global_norm'])} over {summary['samples']} samples "
                f"(steps {summary['first_step']}-{summary['last_step']})"
            )
        else:
            lines.append("no samples")
        lines.append("flags:" if self.flags else "flags: none")
        lines += [
            f"  [{f.kind}] {f.layer or '(global)'} from step {f.first_step}: {f.message}"
            for f in self.flags
        ]
        if self.suggestions:
            lines.append("suggestions:")
            lines += [f"  - {s}" for s in self.suggestions]
        return "\n".join(lines)

    def __repr__(self):
        kinds = sorted({f.kind for f in self.flags}, key=KINDS.index)
        return (
            f"<GradientReport: {len(self.layers)} layers, {len(self.steps)} samples, flags={kinds}>"
        )

    def plot(self, path):
        """Write a PNG heatmap of ``log10`` gradient norm, layers × samples; return ``path``.

        Layers are rows in forward order (first layer on top), samples are
        columns labelled by step. Flagged layers have their kinds appended
        to the label, in red. Cells that are zero or non-finite are drawn in
        magenta. Uses matplotlib's Agg canvas (no display, no global state).

        Args:
            path: File path (str or ``os.PathLike``) to write the PNG to.

        Returns:
            ``path`` as a string.

        Raises:
            TypeError: If ``path`` is not a str or ``os.PathLike``.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"`path` must be a file path (str or os.PathLike), not {type(path).__name__}. "
                f"Received: path={path!r}"
            )
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = os.fspath(path)
        data = np.asarray(self.grad_norms, dtype=np.float64).T  # [G, T]
        ok = np.isfinite(data) & (data > 0)
        image = np.ma.masked_array(np.log10(np.where(ok, data, 1.0)), mask=~ok)
        rows = max(len(self.layers), 1)
        figure = Figure(figsize=(8.0, 1.5 + 0.3 * rows), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        cmap = colormaps["viridis"].with_extremes(bad="magenta")
        shown = axes.imshow(
            image if data.size else np.zeros((1, 1)),
            aspect="auto",
            cmap=cmap,
            interpolation="nearest",
        )
        figure.colorbar(shown, ax=axes, label="log10 gradient norm")
        kinds = {name: [f.kind for f in self.flags if f.layer == name] for name in self.layers}
        axes.set_yticks(range(len(self.layers)))
        axes.set_yticklabels(
            [f"{name} [{', '.join(kinds[name])}]" if kinds[name] else name for name in self.layers]
        )
        for label, name in zip(axes.get_yticklabels(), self.layers, strict=True):
            if kinds[name]:
                label.set_color("red")
        positions, labels = _step_ticks(self.steps)
        axes.set_xticks(positions)
        axes.set_xticklabels(labels)
        axes.set_xlabel("step")
        global_kinds = sorted({f.kind for f in self.flags if f.layer is None})
        title = "gradient norm per layer"
        axes.set_title(f"{title} ({', '.join(global_kinds)})" if global_kinds else title)
        figure.savefig(path, format="png")
        return path
