"""Griffe extension: an nnkit class's API entry lists nnkit's own members only.

An nnkit optimizer or wrapper overrides Keras's ``apply``, ``build``,
``update_step``, ``call`` ... with a docstring of its own; mkdocstrings then
lists them beside nnkit's API, as if ``stateless_apply`` were something nnkit
offers. This extension drops from every class the members whose name is a
public attribute of a base class from outside nnkit (Keras, keras-tuner):
what the reader can look up in Keras's documentation stays there.

Loaded by mkdocstrings (``extensions:`` in mkdocs.yml); not part of nnkit.
"""

import contextlib
import importlib
import os
import sys

import griffe


def foreign_names(cls):
    """Public attribute names that ``cls`` gets from, or shares with, a base outside nnkit."""
    names = set()
    for base in cls.__mro__[1:]:
        if base is object or base.__module__.split(".")[0] == "nnkit":
            continue
        names.update(name for name in vars(base) if not name.startswith("_"))
    return names


@contextlib.contextmanager
def _native_stderr_silenced():
    """Silence file descriptor 2 (TensorFlow's C++ start-up lines, which absl prints
    as "WARNING: All log messages before absl::InitializeLog() ..." whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says) while nnkit is first imported."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def runtime_class(path):
    """The class at dotted ``path`` (``nnkit.optimizers.kfac.KFAC``), or ``None``."""
    module_path, _, name = path.rpartition(".")
    try:
        with _native_stderr_silenced():
            module = importlib.import_module(module_path)
    except ImportError:
        return None
    return getattr(module, name, None)


class OwnMembers(griffe.Extension):
    """Remove the members an nnkit class shares with a Keras (or other foreign) base."""

    def on_class_members(self, *, cls, **kwargs):
        if not cls.path.startswith("nnkit."):
            return
        runtime = runtime_class(cls.path)
        if not isinstance(runtime, type):
            return
        for name in foreign_names(runtime) & set(cls.members):
            cls.del_member(name)
