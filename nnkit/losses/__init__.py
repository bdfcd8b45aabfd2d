"""Losses Keras lacks: smooth L1 with PyTorch semantics, contrastive and triplet losses,
and sparse cross-entropy with label smoothing.

Every loss is a ``keras.losses.Loss`` written in ``keras.ops`` (so it runs on
every backend and under XLA) that returns one value per sample and leaves
``reduction`` and ``sample_weight`` to Keras. Each class has a functional
form with the Keras naming pattern (``SmoothL1`` and ``smooth_l1``), and all
are registered for serialization under the ``nnkit`` package.
"""

# -- public losses (one import line per module) --
from nnkit.losses.contrastive import ContrastiveLoss, contrastive_loss
from nnkit.losses.smooth_l1_loss import SmoothL1, smooth_l1
from nnkit.losses.sparse_crossentropy import (
    SparseCategoricalCrossentropy,
    sparse_categorical_crossentropy,
)
from nnkit.losses.triplet import TripletLoss, triplet_loss

__all__ = [
    "ContrastiveLoss",
    "SmoothL1",
    "SparseCategoricalCrossentropy",
    "TripletLoss",
    "contrastive_loss",
    "smooth_l1",
    "sparse_categorical_crossentropy",
    "triplet_loss",
]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
