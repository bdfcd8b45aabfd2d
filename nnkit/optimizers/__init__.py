"""Second-order optimizers for Keras 3: Kronecker-factored preconditioning inside ``model.fit``.

Every optimizer here is a ``keras.optimizers.Optimizer`` written in
``keras.ops`` (TensorFlow and JAX, ``jit_compile`` or not, under
``tf.distribute``), registered for serialization under the ``nnkit``
package, saved with its state by ``model.save``, and usable with any
learning-rate schedule. ``docs/second-order.md`` explains what each one
approximates and when to use it.

- ``KFAC``: Kronecker-factored approximate curvature for ``Dense`` and
  ``Conv2D`` layers; the statistics are captured inside Keras's compiled
  train step (``KFAC(..., model=model)``), see ``docs/kfac.md``.
- ``Shampoo``: a Kronecker-factored preconditioner per variable, grafted
  onto Adam (or RMSProp/SGD) for its step size.
- ``SOAP``: Adam run in the eigenbasis of Shampoo's factors.
- ``SGD`` and ``Adam``: Keras's updates with a momentum (``β₁``) that may
  follow a schedule of the step, e.g. one-cycle's ``OneCycleMomentum``.
"""

from nnkit.optimizers.kfac import KFAC
from nnkit.optimizers.momentum import SGD, Adam
from nnkit.optimizers.shampoo import Shampoo
from nnkit.optimizers.soap import SOAP

__all__ = [
    "Adam",
    "KFAC",
    "SGD",
    "SOAP",
    "Shampoo",
]

from nnkit import _registry  # noqa: E402  (last: see nnkit/_registry.py)

_registry.settle(__name__)
