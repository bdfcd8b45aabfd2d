"""Regularizers with explicit conventions, and applying one to a whole model."""

# -- public regularizers and functions (one import line per module) --
from nnkit.regularizers.apply import apply_regularization
from nnkit.regularizers.penalties import L1, L2, WeightDecay

__all__ = ["L1", "L2", "WeightDecay", "apply_regularization"]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
