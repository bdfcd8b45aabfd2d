"""Model builders used by the recipes and the tuning sweeps, and train-step wrappers.

``mlp`` builds a multilayer perceptron. ``SharpnessAwareMinimization`` and
``MixUp`` wrap any model in a ``keras.Model`` whose train step differs
(two gradient evaluations; batch mixing); they nest, and ``predict`` and
``evaluate`` are the inner model's.
"""

# -- public builders and wrappers (one import line per module) --
from nnkit.models.mixup import MixUp
from nnkit.models.mlp import mlp
from nnkit.models.sharpness_aware import SharpnessAwareMinimization

__all__ = ["MixUp", "SharpnessAwareMinimization", "mlp"]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
