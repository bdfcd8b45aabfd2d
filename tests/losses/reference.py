"""Numpy references shared by the loss tests (no nnkit code here)."""

import numpy as np

REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None]


def keras_reduction(per_sample, sample_weight, reduction):
    """What Keras's reductions mean, written out in numpy (float64)."""
    values = np.asarray(per_sample, "float64")
    weights = (
        np.ones_like(values) if sample_weight is None else np.asarray(sample_weight, "float64")
    )
    weighted = values * weights
    if reduction in ("none", None):
        return weighted
    if reduction == "sum":
        return weighted.sum()
    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        return weighted.sum() / weights.sum()
    return weighted.sum() / values.size  # "sum_over_batch_size", "mean"
