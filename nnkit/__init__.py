"""nnkit: reusable parts of the Keras 3 training loop.

Subpackages are imported lazily, so ``import nnkit`` neither imports
TensorFlow nor touches any global Keras state (float type, mixed-precision
policy, random seed). Once Keras is imported (before or after nnkit), every
subpackage is imported, so that ``keras.saving.load_model`` finds every nnkit
class (``nnkit._registry``).

>>> import nnkit
>>> isinstance(nnkit.__version__, str)
True
"""

import importlib

from nnkit._version import __version__

SUBPACKAGES = (
    "callbacks",
    "diagnostics",
    "distribute",
    "initializers",
    "layers",
    "losses",
    "meta",
    "models",
    "optimizers",
    "regularizers",
    "schedules",
    "search",
    "tuning",
)

__all__ = ["__version__", *SUBPACKAGES]


def __getattr__(name):
    if name in SUBPACKAGES:
        module = importlib.import_module(f"nnkit.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'nnkit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBPACKAGES))


from nnkit import _registry  # noqa: E402  (last: it may import the subpackages)

_registry.install()
