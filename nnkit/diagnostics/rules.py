"""The thresholds that turn measured norms into vanishing/exploding flags."""

import keras

from nnkit import _validation as v

#: The update-to-weight ratio per step that the rule of thumb aims for.
UPDATE_RATIO_TARGET = 1e-3


@keras.saving.register_keras_serializable(package="nnkit")
class DiagnosisRules:
    """Thresholds for flagging vanishing and exploding gradients and an off learning rate.

    Use the defaults first; pass your own rules to ``diagnose`` when a model
    legitimately runs with very small or very large gradients (e.g. a huge
    model whose global norm is in the thousands, or a layer that is meant to
    learn slowly). A rule set is a small value object: validated here,
    saveable with ``get_config``/``from_config``.

    Rules, for ``n`` samples ``g[t, k]`` of the norm of layer ``k`` and the
    global norm ``G[t] = sqrt(Σ_k g[t, k]²)``:

    - *vanishing*: layer ``k`` is low at sample ``t`` when
      ``g[t, k] < vanishing_threshold`` or
      ``g[t, k] < relative_threshold · max_j g[t, j]``, and is flagged when it
      is low for ``min(window, n)`` consecutive samples. ``1e-6`` is far
      below the norms of a layer that learns (float32 rounding makes
      updates smaller than ``~1e-7`` of a weight vanish anyway), and a layer
      1000× below the largest one learns 1000× more slowly under SGD.
      ``window=5`` ignores the odd quiet batch.
    - *exploding*: flagged at the first sample with ``G[t] > exploding_threshold``
      or ``G[t] > jump_factor · median(G[t−window:t])`` (the median of the
      finite, positive norms of up to ``window`` previous samples). Healthy
      networks train with global norms of ``1e-2`` to ``1e2``; ``1e3`` is
      beyond that, and a 10× jump over the recent typical norm is a spike,
      not drift. The median, not the previous sample, is the reference: a
      nearly converged model sees the odd batch with a tiny gradient, and a
      normal batch after it is not an explosion.
    - *non-finite*: any NaN/inf gradient is always flagged.
    - *update ratio*: the median of ``‖Δw‖/‖w‖`` per layer is flagged high
      above ``1e-3 · update_ratio_band`` and low below
      ``1e-3 / update_ratio_band``, around the ``~1e-3`` per step rule of
      thumb; the default band of 100 (two orders of magnitude) flags only
      rates that are clearly off.

    Args:
        vanishing_threshold: Absolute norm below which a layer is low, a
            float ``>= 0`` (``0`` turns the absolute rule off).
            Defaults to ``1e-6``.
        relative_threshold: Fraction of the largest layer's norm at the same
            sample below which a layer is low, in ``[0, 1)`` (``0`` turns the
            relative rule off). Defaults to ``1e-3``.
        window: Consecutive low samples needed to flag a layer, an int
            ``>= 1``. Defaults to ``5``.
        exploding_threshold: Global norm above which gradients explode, a
            float ``> 0``, or ``None`` for no absolute rule.
            Defaults to ``1e3``.
        jump_factor: Growth of the global norm over the median of the
            previous ``window`` samples that counts as exploding, a float
            ``> 1``, or ``None`` for no jump rule. Defaults to ``10.0``.
        update_ratio_band: Factor around ``1e-3`` outside which the median
            update ratio is flagged, a float ``>= 1``, or ``None`` to not
            judge update ratios. Defaults to ``100.0``.

    Raises:
        TypeError: If an argument is not a number (bools are rejected).
        ValueError: If an argument is NaN, inf or out of range.

    Example:
    >>> from nnkit.diagnostics import DiagnosisRules
    >>> rules = DiagnosisRules(window=3, jump_factor=20.0)
    >>> rules.window, rules.vanishing_threshold, rules.exploding_threshold
    (3, 1e-06, 1000.0)
    >>> DiagnosisRules.from_config(rules.get_config()) == rules
    True

    References:
        Bengio, Simard & Frasconi, "Learning long-term dependencies with
        gradient descent is difficult", 1994; Pascanu, Mikolov & Bengio, "On
        the difficulty of training recurrent neural networks", ICML 2013;
        Karpathy, "CS231n: Neural Networks Part 3" (update/weight ratio ~1e-3).
    """

    def __init__(
        self,
        vanishing_threshold=1e-6,
        relative_threshold=1e-3,
        window=5,
        exploding_threshold=1e3,
        jump_factor=10.0,
        update_ratio_band=100.0,
    ):
        self.vanishing_threshold = v.check_non_negative_number(
            "vanishing_threshold", vanishing_threshold
        )
        self.relative_threshold = v.check_number(
            "relative_threshold",
            relative_threshold,
            minimum=0.0,
            maximum=1.0,
            max_inclusive=False,
        )
        self.window = v.check_positive_int("window", window)
        self.exploding_threshold = v.check_optional_number(
            "exploding_threshold", exploding_threshold, minimum=0.0, min_inclusive=False
        )
        self.jump_factor = v.check_optional_number(
            "jump_factor", jump_factor, minimum=1.0, min_inclusive=False
        )
        self.update_ratio_band = v.check_optional_number(
            "update_ratio_band", update_ratio_band, minimum=1.0
        )

    @property
    def update_ratio_range(self):
        """``(low, high)`` bounds of a healthy median update ratio, or ``None``."""
        if self.update_ratio_band is None:
            return None
        return (
            UPDATE_RATIO_TARGET / self.update_ratio_band,
            UPDATE_RATIO_TARGET * self.update_ratio_band,
        )

    def get_config(self):
        return {
            "vanishing_threshold": self.vanishing_threshold,
            "relative_threshold": self.relative_threshold,
            "window": self.window,
            "exploding_threshold": self.exploding_threshold,
            "jump_factor": self.jump_factor,
            "update_ratio_band": self.update_ratio_band,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        if not isinstance(other, DiagnosisRules):
            return NotImplemented
        return self.get_config() == other.get_config()

    def __hash__(self):
        return hash(tuple(self.get_config().items()))

    def __repr__(self):
        args = ", ".join(f"{k}={val!r}" for k, val in self.get_config().items())
        return f"DiagnosisRules({args})"
