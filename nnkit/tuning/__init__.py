"""Hyperparameter sweeps with keras-tuner, recorded in a study directory, and a
sensitivity report that says which knobs matter.

The study directory layout (``study.json``, ``trials.csv``, ``trials/<id>/``,
``seeds.csv``, ``report/``) is described in ``docs/tuning.md``.
"""

# -- search, hypermodel, tune --
# isort: split
from nnkit.tuning.hypermodel import MLPHyperModel
from nnkit.tuning.lr_finder import LearningRateRangeTest, lr_find
from nnkit.tuning.median_stopping import MedianStopping
from nnkit.tuning.search_space import SearchSpace
from nnkit.tuning.sweep import tune

# -- sensitivity report --
# isort: split
from nnkit.tuning._lr_result import LRFinderResult
from nnkit.tuning.rerun import rerun_best
from nnkit.tuning.sensitivity import SensitivityReport, sensitivity_report

__all__ = [
    "LRFinderResult",
    "LearningRateRangeTest",
    "MLPHyperModel",
    "MedianStopping",
    "SearchSpace",
    "SensitivityReport",
    "lr_find",
    "rerun_best",
    "sensitivity_report",
    "tune",
]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
