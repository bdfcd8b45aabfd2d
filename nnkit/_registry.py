"""``import nnkit`` makes every nnkit class loadable by ``keras.saving.load_model``.

Keras finds a saved custom class only if the module that defines (and
registers) it has been imported. ``import nnkit`` stays light (it imports
neither Keras nor TensorFlow), so the registration waits for Keras: when Keras
is imported (before or after nnkit, in either order), every nnkit subpackage
is imported, which registers its classes (about half a second). A user who
writes ``import nnkit`` and then ``keras.saving.load_model("m.keras")`` in a
fresh process gets nnkit's layers, losses, schedules and regularizers back.

The subpackages are imported only when no nnkit module is itself being
imported (they import each other): the subpackage whose import finishes last
calls :func:`settle`, which then registers everything.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

_state = {"pending": False, "done": False}


def _initializing(exclude):
    """Whether an nnkit module other than ``exclude`` is being imported now."""
    for name, module in list(sys.modules.items()):
        if name == exclude or not (name == "nnkit" or name.startswith("nnkit.")):
            continue
        spec = getattr(module, "__spec__", None)
        if spec is not None and getattr(spec, "_initializing", False):
            return True
    return False


def register_all():
    """Import every nnkit subpackage (registering its classes with Keras)."""
    import nnkit

    _state["done"] = True
    for name in nnkit.SUBPACKAGES:
        try:
            importlib.import_module(f"nnkit.{name}")
        except Exception as error:  # noqa: BLE001 - the user's `import keras` must not fail
            warnings.warn(
                f"nnkit could not import nnkit.{name} ({type(error).__name__}: {error}); "
                f"models that use its classes cannot be loaded until it imports.",
                RuntimeWarning,
                stacklevel=2,
            )


def settle(caller=None):
    """Register now if Keras is loaded and no other nnkit module is mid-import."""
    if not _state["pending"] or _state["done"] or _initializing(caller):
        return
    _state["pending"] = False
    register_all()


def _keras_loaded():
    keras = sys.modules.get("keras")
    spec = getattr(keras, "__spec__", None)
    return keras is not None and not getattr(spec, "_initializing", False)


class _Loader(importlib.abc.Loader):
    """Keras's own loader, then nnkit's registration."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _state["pending"] = True
        settle()

    def __getattr__(self, name):  # resources and the like: Keras's loader
        return getattr(self._inner, name)


class _AfterKeras(importlib.abc.MetaPathFinder):
    """Wraps the loader of the ``keras`` module once, the first time it is imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install():
    """Called by ``nnkit/__init__.py``: register now if Keras is loaded, else when it is."""
    if _state["done"]:
        return
    if _keras_loaded():
        _state["pending"] = True
        settle("nnkit")
    elif not any(isinstance(f, _AfterKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKeras())
