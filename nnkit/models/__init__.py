"""Model builders used by the recipes and the tuning sweeps."""

# -- public builders (one import line per module) --
from nnkit.models.mlp import mlp

__all__ = ["mlp"]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
