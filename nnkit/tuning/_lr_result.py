"""The result of ``lr_find``: the curve, the suggestions with their rules, the plot."""

import dataclasses
import math

import numpy as np

RULES = {
    "steepest": "the rate where the smoothed loss falls fastest against log(rate), "
    "after the first tenth of the curve and before the smoothed minimum",
    "minimum": "the rate of the smoothed loss's minimum, divided by 10",
    "valley": "fastai's valley: the longest decreasing run of the smoothed loss, "
    "at half its length",
}

# Which suggestion becomes ``LRFinderResult.suggestion``: the first rule that has one.
PREFERENCE = ("minimum", "steepest", "valley")


def _ema(values, beta):
    average, out = 0.0, []
    for k, value in enumerate(values):
        average = beta * average + (1.0 - beta) * value
        out.append(average / (1.0 - beta ** (k + 1)))
    return out


def ceiling(losses):
    """The starting loss: the mean of the first tenth of the finite losses (at least one)."""
    finite = [loss for loss in losses if math.isfinite(loss)]
    return float(np.mean(finite[: max(1, len(finite) // 10)])) if finite else math.nan


def zero_phase(losses, beta):
    """The bias-corrected moving average run forwards, then backwards: no lag.

    The forward pass alone (what the stop rule sees, online) trails the
    rate by about ``1/(1 − β)`` steps, which would shift every suggestion
    towards larger rates; running it back over its own output cancels the
    shift. Before smoothing, each loss is capped at the starting loss
    (``ceiling``): a rate that leaves the loss above where the test began
    has undone all training, and an exploding loss (say 65 against a start
    of 2.3) must not leak, through the backward pass, into the points
    before it: uncapped, one such batch lifted the whole curve of a small
    CNN above its start and moved its minimum four decades down. Points
    after the first non-finite loss are ``nan``.
    """
    finite = 0
    while finite < len(losses) and math.isfinite(losses[finite]):
        finite += 1
    cap = ceiling(losses[:finite])
    capped = [min(loss, cap) for loss in losses[:finite]]
    smooth = _ema(_ema(capped, beta)[::-1], beta)[::-1]
    return smooth + [math.nan] * (len(losses) - finite)


def steepest(rates, smoothed):
    """Index of the most negative slope d(smoothed)/d(log rate), after the first tenth
    of the curve (the smoothing's edge) and up to the minimum."""
    end = int(np.nanargmin(smoothed)) + 1
    start = max(1, len(smoothed) // 10)
    if end - start < 3:
        return None
    slopes = np.gradient(np.asarray(smoothed[:end]), np.log(np.asarray(rates[:end])))
    return start + int(np.argmin(slopes[start:]))


def minimum_over_ten(smoothed):
    """Index of the smoothed minimum (the rate is divided by 10 by the caller)."""
    return int(np.nanargmin(smoothed))


def valley(smoothed):
    """fastai's ``valley``: the longest decreasing subsequence, at (1/3 + 1/6) of its span."""
    n = len(smoothed)
    if n < 3:
        return None
    longest = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[max_end] < longest[i]:
            max_end = i
            max_start = max_end - longest[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def suggest(rates, smoothed):
    """``{rule name: rate or None}`` for the rules of ``RULES``."""
    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    rates = [rates[i] for i in finite]
    smoothed = [smoothed[i] for i in finite]
    if len(smoothed) < 3:
        return dict.fromkeys(RULES)
    index = steepest(rates, smoothed)
    low = valley(smoothed)
    return {
        "steepest": None if index is None else rates[index],
        "minimum": rates[minimum_over_ten(smoothed)] / 10.0,
        "valley": None if low is None else rates[low],
    }


@dataclasses.dataclass(frozen=True)
class LRFinderResult:
    """What ``lr_find`` measured: the curve, the suggestions and the rule of each.

    Attributes:
        learning_rates: The rate of each step run (for a schedule-valued
            rate: the schedule's value times the sweep's factor).
        losses: The loss of each step's batch (not a running mean).
        smoothed: ``losses`` smoothed with no lag: the bias-corrected
            moving average run forwards, then backwards, over the losses
            capped at the starting loss (the suggestions read this curve;
            the stop rule reads the forward pass online).
        suggestions: ``{"steepest", "minimum", "valley"}`` → a rate, or
            ``None`` where the curve is too short for the rule.
        rules: The rule behind each suggestion, in words.
        suggestion: The rate to start from: the suggestion of the first rule
            of ``PREFERENCE`` that has one (``"minimum"``, ``"steepest"``,
            ``"valley"``).
        rule: The name of the rule behind ``suggestion``, or ``None``.
        scale: For a schedule-valued rate, the factor that turns the schedule
            into ``suggestion`` at the step the test began
            (``Scaled(schedule, scale)``); ``None`` for a float rate.
        stop_reason: ``"diverged"``, ``"nonfinite"`` or ``None`` (ran all
            steps).
    """

    learning_rates: list
    losses: list
    smoothed: list
    suggestions: dict
    rules: dict
    suggestion: float
    rule: str
    scale: float
    stop_reason: str

    def plot(self, path=None):
        """Draw loss against rate (log axis), the suggestions marked; save a PNG at ``path``.

        Returns the matplotlib ``Figure``.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6, 3.6), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots()
        axes.plot(self.learning_rates, self.losses, alpha=0.35, label="loss (per batch)")
        axes.plot(self.learning_rates, self.smoothed, label="smoothed")
        colors = {"steepest": "tab:red", "minimum": "tab:green", "valley": "tab:purple"}
        for name, rate in self.suggestions.items():
            if rate is not None:
                axes.axvline(rate, color=colors[name], linestyle="--",
                             label=f"{name}: {rate:.3g}")  # fmt: skip
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("training loss")
        finite = [s for s in self.smoothed if math.isfinite(s)]
        if finite:
            raw = [loss for loss in self.losses if math.isfinite(loss)]
            low, high = min(finite + raw), max(finite[:1] + [min(finite) * 4.0])
            axes.set_ylim(low - 0.1 * (high - low), high + 0.1 * (high - low))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        axes.set_title(f"Learning-rate range test ({len(self.losses)} steps)", fontsize=10)
        if path is not None:
            figure.savefig(path, dpi=90, metadata={"Software": None})
        return figure
