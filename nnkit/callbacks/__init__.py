"""Training-loop callbacks: drop-in supersets of Keras's, with resumable state."""

from nnkit.callbacks._stateful import StatefulCallback

# -- public callbacks (one import line per module) --

__all__ = [
    "StatefulCallback",
]
