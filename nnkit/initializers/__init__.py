"""Initialization chosen for the activation, and data-dependent initialization (LSUV)."""

# -- public initializers and functions (one import line per module) --
from nnkit.initializers.lsuv_init import lsuv
from nnkit.initializers.lsuv_report import LSUVLayerResult, LSUVReport
from nnkit.initializers.variance_rules import for_activation

__all__ = ["LSUVLayerResult", "LSUVReport", "for_activation", "lsuv"]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
