"""Backpropagation health: gradient, weight and update norms per layer, and their diagnosis.

The measurements (``gradient_norms``, ``weight_norms``, ``update_ratios``,
``first_nonfinite_group``) are pure ``keras.ops`` functions that run inside a
compiled train step; ``diagnose`` turns the sampled values into a
``GradientReport`` on the host, with numpy.
"""

# -- public functions and classes (one import line per module) --
from nnkit.diagnostics.describe import describe_layers
from nnkit.diagnostics.diagnosis import diagnose
from nnkit.diagnostics.grouping import VariableGroups, group_variables
from nnkit.diagnostics.norms import (
    GradientNorms,
    first_nonfinite_group,
    gradient_norms,
    update_ratios,
    weight_norms,
)
from nnkit.diagnostics.report import GradientReport
from nnkit.diagnostics.rules import DiagnosisRules

__all__ = [
    "DiagnosisRules",
    "GradientNorms",
    "GradientReport",
    "VariableGroups",
    "describe_layers",
    "diagnose",
    "first_nonfinite_group",
    "gradient_norms",
    "group_variables",
    "update_ratios",
    "weight_norms",
]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
