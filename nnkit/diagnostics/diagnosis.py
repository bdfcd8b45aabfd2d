"""Turn sampled gradient norms into flags and concrete suggestions (host-side, numpy)."""

import numpy as np

from nnkit import _validation as v
from nnkit.diagnostics.report import KINDS, Flag, GradientReport
from nnkit.diagnostics.rules import DiagnosisRules

_SATURATING = ("sigmoid", "tanh", "hard_sigmoid", "hard_tanh", "softsign", "log_sigmoid")
#: Variance-scaling initializers: anything else (e.g. RandomNormal(0.01)) is suspect.
_SCALED_INIT = (
    "HeNormal",
    "HeUniform",
    "GlorotNormal",
    "GlorotUniform",
    "LecunNormal",
    "LecunUniform",
    "VarianceScaling",
    "Orthogonal",
)
_DEEP = 5  # layers with weights from which a stack counts as deep


def _matrix(name, value, shape, dtype=np.float64):
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be an array of numbers with shape {shape}. Received: {name}={value!r}"
        ) from None
    if array.shape != shape:
        raise ValueError(
            f"`{name}` must have shape {shape} (samples, groups), not {array.shape}. "
            f"Received: {name}={value!r}"
        )
    return array


def _median(values):
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def _max(values):
    finite = values[np.isfinite(values)]
    return float(np.max(finite)) if finite.size else float("nan")


def _first_run(low, window):
    """Index where ``low`` first holds for ``window`` consecutive samples, or -1."""
    run = 0
    for t, is_low in enumerate(low):
        run = run + 1 if is_low else 0
        if run == window:
            return t - window + 1
    return -1


def _check_layer_info(layer_info):
    if layer_info is None:
        return {}
    if not isinstance(layer_info, dict) or not all(
        isinstance(k, str) and isinstance(val, dict) for k, val in layer_info.items()
    ):
        raise TypeError(
            "`layer_info` must be a dict from layer path to a dict of facts, as returned by "
            f"nnkit.diagnostics.describe_layers. Received: layer_info={layer_info!r}"
        )
    return layer_info


def _list(names, limit=3):
    """``"a, b, c and 4 more"``."""
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def _vanishing_advice(names, layer_info):
    infos = list(layer_info.values())
    weighted = [i for i in infos if not i.get("normalization") or i.get("activation")]
    saturating = [i for i in weighted if i.get("activation") in _SATURATING]
    kinds = "/".join(sorted({str(i["activation"]) for i in saturating}))
    advice = [f"Gradients vanish in {_list(names)}."]
    if len(saturating) >= 2 and len(weighted) >= _DEEP:
        advice.append(
            f"{len(saturating)} of the model's {len(weighted)} layers use {kinds}, whose "
            "derivative is at most 0.25 (sigmoid) or 1 (tanh) and near 0 when units saturate, "
            "so the gradient shrinks at every layer: use ReLU with He initialization "
            "(DenseBlock(units, activation='relu') or "
            "kernel_initializer=nnkit.initializers.for_activation('relu'))"
        )
    else:
        advice.append(
            "Keep the signal's scale through depth: use ReLU-family activations with "
            "He initialization (nnkit.initializers.for_activation)"
        )
    odd_init = sorted(
        {
            str(i["initializer"])
            for i in infos
            if i.get("initializer") and i["initializer"] not in _SCALED_INIT
        }
    )
    if odd_init:
        advice[-1] += (
            f"; {'/'.join(odd_init)} initialization does not scale with the layer "
            "width: initialize for the activation or with nnkit.initializers.lsuv"
        )
    if not any(i.get("normalization") for i in infos):
        advice[-1] += ", add batch normalization (DenseBlock(..., normalization='batch'))"
    advice[-1] += ", or add residual connections (nnkit.layers.ResidualBlock)."
    return " ".join(advice)


def _suggestions(found, layer_info, rules):
    """One suggestion per kind found, most severe first."""
    text = {
        "nonfinite": lambda names: (
            "Non-finite gradients: look for log(0), division by zero or exp overflow in the "
            "loss (prefer from_logits=True), lower the learning rate and clip gradients "
            "(global_clipnorm=1.0); in float16 use a LossScaleOptimizer."
        ),
        "exploding": lambda names: (
            "Gradients explode: lower the learning rate (try 10x lower), clip gradients "
            "(optimizer global_clipnorm=1.0), and warm the learning rate up "
            "(nnkit.schedules.Warmup)"
            + (
                ""
                if any(i.get("normalization") for i in layer_info.values()) or not layer_info
                else "; normalization layers also keep activations in range"
            )
            + "."
        ),
        "vanishing": lambda names: _vanishing_advice(names, layer_info),
        "no_gradient": lambda names: (
            f"{_list(names)} received no gradient at all: check that the layer is connected "
            "to the loss and is not behind a stop_gradient or an integer cast."
        ),
        "high_update_ratio": lambda names: (
            f"Updates of {_list(names)} are above {rules.update_ratio_range[1]:g} of the "
            "weights per step (rule of thumb ~1e-3): the learning rate is probably too high."
        ),
        "low_update_ratio": lambda names: (
            f"Updates of {_list(names)} are below {rules.update_ratio_range[0]:g} of the "
            "weights per step (rule of thumb ~1e-3): the learning rate is probably too low "
            "(unless these layers' gradients vanish, see above)."
        ),
    }
    return [text[kind](found[kind]) for kind in KINDS if kind in found]


def _nonfinite_flags(steps, names, bad, g, total):
    samples = np.flatnonzero(bad.any(axis=1) | ~np.isfinite(total))
    if not samples.size:
        return []
    t = int(samples[0])
    where = np.flatnonzero(bad[t])
    if where.size:
        cause = "NaN/inf gradient elements"
    else:  # finite elements whose sum of squares overflowed float32
        where = np.flatnonzero(~np.isfinite(g[t]))
        cause = "a non-finite norm (finite elements whose squares overflow float32)"
    layer = names[int(where[0])] if where.size else None
    message = (
        f"{cause}; {int((bad | ~np.isfinite(g)).any(axis=0).sum())} of {len(names)} layers "
        f"and {samples.size} of {steps.size} samples affected"
    )
    return [Flag(layer, "nonfinite", int(steps[t]), message)]


def _exploding_flags(steps, names, g, total, rules):
    ok = np.isfinite(total)
    spikes = np.zeros(steps.size, dtype=bool)
    if rules.exploding_threshold is not None:
        spikes |= ok & (total > rules.exploding_threshold)
    reference = np.full(steps.size, np.nan)
    if rules.jump_factor is not None:
        for t in range(1, steps.size):
            recent = total[max(0, t - rules.window) : t]
            recent = recent[np.isfinite(recent) & (recent > 0)]
            if recent.size:
                reference[t] = np.median(recent)
        usable = ok & np.isfinite(reference)
        spikes |= usable & (total > rules.jump_factor * np.where(usable, reference, np.inf))
    if not spikes.any():
        return []
    t = int(np.flatnonzero(spikes)[0])
    top = names[int(np.argmax(np.where(np.isfinite(g[t]), g[t], -1.0)))] if names else "-"
    before = f" from a recent median of {reference[t]:.3g}" if np.isfinite(reference[t]) else ""
    message = (
        f"global norm {total[t]:.3g}{before} (largest in {top}); "
        f"{int(spikes.sum())} of {steps.size} samples break the rules"
    )
    return [Flag(None, "exploding", int(steps[t]), message)]


def _vanishing_flags(steps, names, g, rules):
    finite = np.isfinite(g)
    largest = np.max(np.where(finite, g, 0.0), axis=1, initial=0.0)
    low = finite & (
        (g < rules.vanishing_threshold) | (g < rules.relative_threshold * largest[:, None])
    )
    window = min(rules.window, steps.size)
    flags = []
    for k, name in enumerate(names):
        if steps.size and np.all(g[:, k] == 0):
            flags.append(Flag(name, "no_gradient", int(steps[0]), "norm 0 in every sample"))
            continue
        start = _first_run(low[:, k], window) if window else -1
        if start >= 0:
            share = _median(g[:, k] / np.where(largest > 0, largest, np.nan))
            message = (
                f"norm below {rules.vanishing_threshold:g} or {rules.relative_threshold:g}x "
                f"the largest layer's for {window}+ samples (median {_median(g[:, k]):.2e}, "
                f"{share:.1e}x the largest)"
            )
            flags.append(Flag(name, "vanishing", int(steps[start]), message))
    return flags


def _ratio_flags(steps, names, ratios, rules):
    if ratios is None or rules.update_ratio_range is None:
        return []
    lo, hi = rules.update_ratio_range
    flags = []
    for name, column in zip(names, ratios.T, strict=True):
        m = _median(column)
        if np.isfinite(m) and (m > hi or m < lo):
            kind = "high_update_ratio" if m > hi else "low_update_ratio"
            first = int(steps[np.flatnonzero(np.isfinite(column))[0]])
            flags.append(Flag(name, kind, first, f"median update ratio {m:.2e}"))
    return flags


def diagnose(
    steps,
    group_names,
    grad_norms,
    update_ratios=None,
    weight_norms=None,
    global_norms=None,
    nonfinite=None,
    *,
    rules=None,
    layer_info=None,
):
    """Flag vanishing/exploding/non-finite gradients and off learning rates from sampled norms.

    Use it at the end of training, or at any time, on the norms sampled
    with ``gradient_norms`` (and optionally ``update_ratios``) every few
    steps: it returns a ``GradientReport`` with a per-layer table, the flags
    raised and a suggestion tied to each cause. Everything runs on the host
    with numpy. The rules and their defaults are those of ``DiagnosisRules``;
    the first step of a flag is the step of the first sample of the run or
    spike that raised it. ``"nonfinite"`` names the lowest layer (forward
    order) with a NaN/inf at the first such sample; ``"no_gradient"`` is a
    layer whose norm is exactly 0 in every sample (flagged instead of
    ``"vanishing"``).

    Args:
        steps: The ``T`` steps at which the samples were taken, strictly
            increasing ints. Required.
        group_names: The ``G`` group (layer) names, e.g.
            ``group_variables(...).names``. Required.
        grad_norms: ``[T, G]`` gradient norms. Required.
        update_ratios: ``[T, G]`` update-to-weight ratios, or ``None``.
            Defaults to ``None``.
        weight_norms: ``[T, G]`` weight norms, or ``None``; reported as each
            layer's median. Defaults to ``None``.
        global_norms: ``[T]`` global norms, or ``None`` to compute
            ``sqrt(Σ_k grad_norms[t, k]²)``. Defaults to ``None``.
        nonfinite: ``[T, G]`` counts of non-finite gradient elements, or
            ``None`` to use the non-finite entries of ``grad_norms``.
            Defaults to ``None``.
        rules: A ``DiagnosisRules``; ``None`` uses the defaults.
            Defaults to ``None``.
        layer_info: ``describe_layers(model)``, or ``None``; lets the
            suggestions name the cause (activation, initializer, missing
            normalization). Defaults to ``None``.

    Returns:
        A ``GradientReport``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If the arrays' shapes disagree or ``steps`` is not
            strictly increasing.

    Example:
    >>> import numpy as np
    >>> from nnkit.diagnostics import diagnose
    >>> steps = np.arange(0, 60, 10)
    >>> norms = np.stack([1e-8 * np.ones(6), np.ones(6)], axis=1)  # layer "a" starves
    >>> report = diagnose(steps, ["a", "b"], norms)
    >>> [(f.layer, f.kind, f.first_step) for f in report.flags]
    [('a', 'vanishing', 0)]
    >>> diagnose(steps, ["a", "b"], np.ones((6, 2))).healthy
    True

    References:
        Glorot & Bengio, "Understanding the difficulty of training deep
        feedforward neural networks", AISTATS 2010; Pascanu et al., "On the
        difficulty of training recurrent neural networks", ICML 2013;
        Karpathy, "CS231n: Neural Networks Part 3" (update/weight ratio).
    """
    rules = DiagnosisRules() if rules is None else rules
    v.check_instance("rules", rules, DiagnosisRules, "a DiagnosisRules or None")
    layer_info = _check_layer_info(layer_info)
    group_names = v.check_sequence("group_names", group_names, "a list of strings")
    names = [v.check_str(f"group_names[{k}]", n) for k, n in enumerate(group_names)]
    steps = np.asarray(steps)
    if steps.ndim != 1 or not (steps.size == 0 or np.issubdtype(steps.dtype, np.integer)):
        raise ValueError(f"`steps` must be a 1-D array of ints. Received: steps={steps!r}")
    if np.any(np.diff(steps) <= 0):
        raise ValueError(f"`steps` must be strictly increasing. Received: steps={steps!r}")
    shape = (steps.size, len(names))
    g = _matrix("grad_norms", grad_norms, shape)
    ratios = None if update_ratios is None else _matrix("update_ratios", update_ratios, shape)
    weights = None if weight_norms is None else _matrix("weight_norms", weight_norms, shape)
    if global_norms is None:
        total = np.sqrt(np.sum(np.square(g), axis=1))
    else:
        total = _matrix("global_norms", global_norms, shape[:1])
    if nonfinite is None:
        counts = (~np.isfinite(g)).astype(np.int64)
    else:
        counts = np.nan_to_num(_matrix("nonfinite", nonfinite, shape), nan=0.0, posinf=0.0)
        counts = counts.astype(np.int64)

    flags = [
        *_nonfinite_flags(steps, names, counts > 0, g, total),
        *_exploding_flags(steps, names, g, total, rules),
        *_vanishing_flags(steps, names, g, rules),
        *_ratio_flags(steps, names, ratios, rules),
    ]
    flags.sort(key=lambda f: (KINDS.index(f.kind), -1 if f.layer is None else names.index(f.layer)))
    rows = []
    for k, name in enumerate(names):
        row = {
            "layer": name,
            "median_grad_norm": _median(g[:, k]),
            "max_grad_norm": _max(g[:, k]),
            "median_update_ratio": None if ratios is None else _median(ratios[:, k]),
        }
        if weights is not None:
            row["median_weight_norm"] = _median(weights[:, k])
        row["nonfinite"] = int(counts[:, k].sum())
        row["flags"] = [f.kind for f in flags if f.layer == name]
        rows.append(row)
    found = {}
    for f in flags:
        layers = found.setdefault(f.kind, [])
        if f.layer is not None and f.layer not in layers:
            layers.append(f.layer)
    return GradientReport(
        steps=steps.astype(np.int64),
        layers=names,
        grad_norms=g,
        global_norms=total,
        rows=rows,
        flags=flags,
        suggestions=_suggestions(found, layer_info, rules),
        rules=rules,
    )
