"""Layers for the forward pass: dense and residual blocks, drop-path, Monte-Carlo dropout."""

# -- public layers (one import line per module) --
from nnkit.layers.dense_block import DenseBlock
from nnkit.layers.drop_path import DropPath
from nnkit.layers.mc_dropout import MCDropout, mc_predict
from nnkit.layers.residual_block import ResidualBlock

__all__ = ["DenseBlock", "DropPath", "MCDropout", "ResidualBlock", "mc_predict"]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
