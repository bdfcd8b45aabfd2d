"""Only ``nnkit._keras`` touches Keras's and keras-tuner's internals.

Outside that package, nnkit's code must not import ``keras.src`` (or
``keras_tuner.src``), read or write a private attribute of a Keras or
keras-tuner object, override one of their private methods, or name one in a
string (``getattr(x, "_y")``). "Private" means a name that starts with one
underscore and that Keras's or keras-tuner's own source uses as an
attribute; for ``self._x`` inside an nnkit class, a name one of its Keras or
keras-tuner base classes uses. nnkit's own private names must not collide
with those (rename them).

Nor may it set or delete an attribute of a Keras object behind Keras's back
(``object.__setattr__``, ``object.__delattr__``, ``setattr``/``delattr`` on
anything but ``self`` or ``cls``): method patches go through
``nnkit._keras.shadow``'s one chain, other writes through a function of
``nnkit._keras`` with a probe. That rule has no allowlist.

``ALLOWLIST`` lists ``(path, name)`` pairs that are tolerated for now. It
may only shrink: an entry that no longer occurs fails the test too.
"""

import ast
import functools
import importlib
import inspect
import pathlib
import re

import keras
import keras_tuner
import pytest

import nnkit

ROOT = pathlib.Path(nnkit.__file__).parent
BOUNDARY = ROOT / "_keras"
DOCS = ROOT.parent / "docs"

#: (path relative to nnkit/, name) pairs tolerated for now; may only shrink.
ALLOWLIST = set()

#: Methods of Python's namedtuples, which start with an underscore but are public.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}
_PRIVATE_ATTRIBUTE = re.compile(r"\.(_[A-Za-z]\w*)")
_PRIVATE_DEF = re.compile(r"def (_[A-Za-z]\w*)")
_SELF_ATTRIBUTE = re.compile(r"self\.(_[A-Za-z]\w*)")
THIRD_PARTY = ("keras", "keras_tuner", "tensorflow")


@functools.cache
def keras_private_names():
    """Every private name Keras's and keras-tuner's sources use as an attribute or method."""
    names = set()
    for package in (keras, keras_tuner):
        for path in pathlib.Path(package.__file__).parent.rglob("*.py"):
            text = path.read_text(errors="ignore")
            names.update(_PRIVATE_ATTRIBUTE.findall(text))
            names.update(_PRIVATE_DEF.findall(text))
    return frozenset(names - NAMEDTUPLE_API)


@functools.cache
def _base_private_names(base):
    names = {n for n in vars(base) if n.startswith("_") and not n.startswith("__")}
    try:
        names.update(_SELF_ATTRIBUTE.findall(inspect.getsource(base)))
    except (OSError, TypeError):
        pass
    return names


def inherited_private_names(cls):
    """The private names of the Keras/keras-tuner/TensorFlow classes ``cls`` derives from."""
    names = set()
    for base in cls.__mro__:
        if base.__module__.split(".")[0] in THIRD_PARTY:
            names |= _base_private_names(base)
    return names - NAMEDTUPLE_API


def _module_name(path):
    return ".".join(("nnkit", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(
        ".__init__"
    )


def _docstring_nodes(tree):
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def violations(source, module):
    """``[(line, name, what)]``: where ``source`` (of ``module``) touches Keras internals."""
    tree = ast.parse(source)
    private = keras_private_names()
    docstrings = _docstring_nodes(tree)
    found = []

    def visit(node, cls):
        if isinstance(node, ast.ClassDef):
            runtime = getattr(module, node.name, None) if cls is None else None
            cls = runtime if inspect.isclass(runtime) else False
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if cls and node.name in inherited_private_names(cls):
                found.append((node.lineno, node.name, "overrides a private method"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(("keras.src", "keras_tuner.src")):
                    found.append((node.lineno, alias.name, "imports internals"))
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").startswith(("keras.src", "keras_tuner.src")):
                found.append((node.lineno, node.module, "imports internals"))
        elif isinstance(node, ast.Attribute):
            name = node.attr
            if name.startswith("_") and not name.startswith("__"):
                base = node.value
                on_self = isinstance(base, ast.Name) and base.id in ("self", "cls")
                on_super = (
                    isinstance(base, ast.Call)
                    and isinstance(base.func, ast.Name)
                    and base.func.id == "super"
                )
                if on_self or on_super:
                    if cls and name in inherited_private_names(cls):
                        found.append((node.lineno, name, "a private attribute of a base class"))
                elif name in private:
                    found.append((node.lineno, name, "a private attribute"))
            if name == "src" and ast.unparse(node.value) in ("keras", "keras_tuner"):
                found.append((node.lineno, ast.unparse(node), "uses internals"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in private and id(node) not in docstrings:
                found.append((node.lineno, node.value, "names a private attribute"))
        for child in ast.iter_child_nodes(node):
            visit(child, cls if not isinstance(node, ast.ClassDef) else cls)

    for child in ast.iter_child_nodes(tree):
        visit(child, None)
    return found


#: The builtins that write or delete an attribute by name.
_ATTRIBUTE_WRITERS = {"setattr", "delattr"}
_DUNDER_WRITERS = {"__setattr__", "__delattr__"}


def raw_attribute_writes(source):
    """``[(line, call)]``: where ``source`` sets or deletes an attribute behind Keras's back.

    Flagged: a direct call of ``__setattr__``/``__delattr__`` on anything but
    ``super()`` (``object.__setattr__(layer, "call", f)``: it bypasses
    ``Layer.__setattr__``'s tracking and patches the instance), and
    ``setattr``/``delattr`` whose target is not the code's own ``self`` or
    ``cls`` (the object's own attributes, whose names the private-name scan
    checks). Statically nnkit cannot tell a Keras object from another, so
    every such target counts.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in _DUNDER_WRITERS:
            receiver = func.value
            on_super = (
                isinstance(receiver, ast.Call)
                and isinstance(receiver.func, ast.Name)
                and receiver.func.id == "super"
            )
            if not on_super:
                found.append((node.lineno, ast.unparse(func)))
        elif isinstance(func, ast.Name) and func.id in _ATTRIBUTE_WRITERS and node.args:
            target = node.args[0]
            if not (isinstance(target, ast.Name) and target.id in ("self", "cls")):
                found.append((node.lineno, f"{func.id}({ast.unparse(target)}, ...)"))
    return found


def library_files():
    return sorted(p for p in ROOT.rglob("*.py") if BOUNDARY not in p.parents)


SNIPPET = """
import keras
from keras.src.utils import io_utils


class Callback(keras.callbacks.Callback):
    def attached(self):
        return self._model is None and self._mine is None

    def rate(self, optimizer, decision):
        value = getattr(optimizer, "_learning_rate")
        return optimizer._learning_rate, decision._replace(act=True), keras.src, value


class Optimizer(keras.optimizers.SGD):
    def _clip_gradients(self, grads):
        return grads
"""


def test_the_scan_finds_what_it_should():
    """The rule itself, on a snippet with one of each kind it must catch."""
    import types

    module = types.ModuleType("snippet")
    exec(compile(SNIPPET, "snippet", "exec"), module.__dict__)
    found = sorted((line, name) for line, name, _ in violations(SNIPPET, module))
    assert found == [
        (3, "keras.src.utils"),
        (8, "_model"),
        (11, "_learning_rate"),
        (12, "_learning_rate"),
        (12, "keras.src"),
        (16, "_clip_gradients"),
    ], found  # not self._mine (nnkit's own), not namedtuple's _replace


def test_code_outside_the_boundary_uses_no_keras_internals():
    found = {}
    for path in library_files():
        module = importlib.import_module(_module_name(path))
        for line, name, what in violations(path.read_text(), module):
            found.setdefault((str(path.relative_to(ROOT)), name), []).append(f"{line}: {what}")
    unexpected = {key: lines for key, lines in found.items() if key not in ALLOWLIST}
    assert not unexpected, (
        "Keras/keras-tuner internals outside nnkit/_keras (move them into a module there, "
        f"with a probe test): {unexpected}"
    )
    stale = ALLOWLIST - set(found)
    assert not stale, f"remove these from ALLOWLIST (fixed): {sorted(stale)}"


#: The patching that ``lsuv`` did before it joined the shadow chain, and its kin.
RAW_WRITES_SNIPPET = """
def record(layer, recorder, name):
    object.__setattr__(layer, "call", recorder(layer, layer.call))
    object.__delattr__(layer, "call")
    setattr(layer, name, recorder)
    delattr(layer.cell, name)
    keras.layers.Layer.__setattr__(layer, "call", recorder)


class Mine:
    def __setattr__(self, name, value):
        super().__setattr__(name, value)

    def __init_subclass__(cls):
        setattr(cls, "hook", None)

    def reset(self):
        setattr(self, "state", None)
"""


def test_the_raw_attribute_scan_finds_what_it_should():
    found = raw_attribute_writes(RAW_WRITES_SNIPPET)
    assert found == [
        (3, "object.__setattr__"),
        (4, "object.__delattr__"),
        (5, "setattr(layer, ...)"),
        (6, "delattr(layer.cell, ...)"),
        (7, "keras.layers.Layer.__setattr__"),
    ], found  # not super().__setattr__, nor setattr on the code's own cls/self


def test_no_code_outside_the_boundary_sets_attributes_behind_keras_back():
    found = {
        str(path.relative_to(ROOT)): writes
        for path in library_files()
        if (writes := raw_attribute_writes(path.read_text()))
    }
    assert not found, (
        "raw attribute writes outside nnkit/_keras (patch methods with nnkit._keras.shadow; "
        f"other writes go in an nnkit/_keras function with a probe): {found}"
    )


def _doctest_lines():
    for path in sorted(ROOT.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith((">>>", "...")):
                yield f"{path.relative_to(ROOT.parent)}:{number}", stripped


def _doc_code_lines():
    """The lines of the docs' code blocks (prose may name what nnkit patches, code may not)."""
    for path in sorted(DOCS.rglob("*.md")):
        inside = False
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                inside = not inside
            elif inside:
                yield f"{path.relative_to(DOCS.parent)}:{number}", line


@pytest.mark.parametrize("source", ["doctests", "docs"])
def test_no_doctest_or_doc_page_teaches_a_private_attribute(source):
    """Docs and doctests use public APIs only (the contributors' page names internals in prose)."""
    private = keras_private_names()
    lines = _doctest_lines() if source == "doctests" else _doc_code_lines()
    taught = []
    for where, line in lines:
        if where.startswith("docs/keras-internals.md"):
            continue
        for name in _PRIVATE_ATTRIBUTE.findall(line):
            if name in private:
                taught.append(f"{where}: {name}")
    assert not taught, taught


def test_every_boundary_module_states_its_assumptions():
    from nnkit._keras import ASSUMPTIONS

    modules = {path.stem for path in BOUNDARY.glob("*.py")} - {"__init__", "shadow"}
    assert {module for module, _ in ASSUMPTIONS.values()} == modules
    for name, (module, statement) in ASSUMPTIONS.items():
        text = (BOUNDARY / f"{module}.py").read_text()
        assert f"``{name}``" in text, f"nnkit/_keras/{module}.py does not state {name!r}"
        assert statement and "\n" not in statement


def test_the_contributors_page_covers_every_assumption():
    from nnkit._keras import ASSUMPTIONS

    page = (DOCS / "keras-internals.md").read_text()
    missing = [name for name in ASSUMPTIONS if f"`{name}`" not in page]
    assert not missing, f"docs/keras-internals.md does not mention {missing}"
