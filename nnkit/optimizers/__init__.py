"""Optimizers beyond Keras's first-order ones, written in ``keras.ops`` for ``model.fit``.

- :class:`KFAC`: Kronecker-factored approximate curvature for ``Dense`` and
  ``Conv2D`` layers; the statistics are captured inside Keras's compiled
  train step (``KFAC(..., model=model)``), see ``docs/kfac.md``.
"""

from nnkit.optimizers.kfac import KFAC

__all__ = ["KFAC"]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
