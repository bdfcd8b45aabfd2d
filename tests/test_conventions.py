"""House rules as tests, over every public class of every nnkit subpackage.

Components added by later work are picked up automatically through each
subpackage's ``__all__``; the only manual step is a row in ``tests/examples.py``.
"""

import ast
import importlib
import inspect
import pathlib

import keras
import pytest

import nnkit
from tests.examples import ABSTRACT, EXAMPLES

ROOT = pathlib.Path(nnkit.__file__).parent

# Keras serializes these kinds of objects, so nnkit's must be registered.
SERIALIZED_BY_KERAS = (
    keras.optimizers.schedules.LearningRateSchedule,
    keras.layers.Layer,
    keras.losses.Loss,
    keras.metrics.Metric,
    keras.regularizers.Regularizer,
    keras.initializers.Initializer,
    keras.constraints.Constraint,
    keras.optimizers.Optimizer,
)


def _public_classes():
    found = []
    for sub in nnkit.SUBPACKAGES:
        module = importlib.import_module(f"nnkit.{sub}")
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                found.append((f"{sub}.{name}", obj))
    return found


CLASSES = _public_classes()
CONCRETE = [(key, cls) for key, cls in CLASSES if key not in ABSTRACT]
IDS = [key for key, _ in CLASSES]


def test_every_subpackage_lists_importable_names():
    for sub in nnkit.SUBPACKAGES:
        module = importlib.import_module(f"nnkit.{sub}")
        assert module.__all__ == sorted(module.__all__), f"nnkit.{sub}.__all__ is not sorted"
        for name in module.__all__:
            assert hasattr(module, name), f"nnkit.{sub}.{name} is in __all__ but missing"


def test_every_concrete_class_has_an_example():
    missing = sorted(key for key, _ in CONCRETE if key not in EXAMPLES)
    assert not missing, f"add rows to tests/examples.py for: {missing}"
    stale = sorted(set(EXAMPLES) - {key for key, _ in CONCRETE})
    assert not stale, f"tests/examples.py has rows for non-public names: {stale}"


@pytest.mark.parametrize("key, cls", CLASSES, ids=IDS)
def test_importable_from_public_path(key, cls):
    sub, name = key.split(".")
    assert getattr(importlib.import_module(f"nnkit.{sub}"), name) is cls
    assert cls.__module__.startswith(f"nnkit.{sub}")


@pytest.mark.parametrize("key, cls", CONCRETE, ids=[k for k, _ in CONCRETE])
def test_registered_with_nnkit_package(key, cls):
    registered = keras.saving.get_registered_name(cls)
    if issubclass(cls, SERIALIZED_BY_KERAS) or hasattr(cls, "get_config"):
        assert registered == f"nnkit>{cls.__name__}", f"{key} is not registered (got {registered})"


@pytest.mark.parametrize("key, cls", CONCRETE, ids=[k for k, _ in CONCRETE])
def test_get_config_covers_every_init_argument(key, cls):
    obj = EXAMPLES[key]()
    assert type(obj) is cls
    params = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    config = obj.get_config()
    missing = [p for p in params if p not in config]
    assert not missing, f"{key}.get_config() lacks {missing}"


@pytest.mark.parametrize("key, cls", CLASSES, ids=IDS)
def test_docstring_shape(key, cls):
    doc = inspect.getdoc(cls) or ""
    assert doc.strip(), f"{key} has no docstring"
    summary = doc.splitlines()[0]
    assert summary.endswith("."), f"{key}: the first line should be a one-line summary"
    if key in ABSTRACT:
        return
    for section in ("Args:", "Raises:", "Example:", ">>>", "References:"):
        assert section in doc, f"{key} docstring lacks {section!r}"


def _public_functions():
    found = []
    for sub in nnkit.SUBPACKAGES:
        module = importlib.import_module(f"nnkit.{sub}")
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                found.append((f"{sub}.{name}", obj))
    return found


FUNCTIONS = _public_functions()


@pytest.mark.parametrize("key, fn", FUNCTIONS, ids=[k for k, _ in FUNCTIONS])
def test_function_docstring_shape(key, fn):
    doc = inspect.getdoc(fn) or ""
    assert doc.strip() and doc.splitlines()[0].endswith("."), f"{key} needs a one-line summary"
    takes_arguments = bool(inspect.signature(fn).parameters)
    # A function without parameters has no Args: section (griffe warns on one,
    # and the strict docs build fails); its docstring says so in words.
    sections = ("Args:", "Returns:", "Example:", ">>>") if takes_arguments else ("Returns:", ">>>")
    for section in sections:
        assert section in doc, f"{key} docstring lacks {section!r}"
    if not takes_arguments:
        assert "Args:" not in doc, f"{key} takes no arguments but its docstring has 'Args:'"
        assert "takes no arguments" in doc, f"{key}: say in words that it takes no arguments"


def _library_files():
    return sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_code_has_no_assert_or_print(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        assert not isinstance(node, ast.Assert), f"{path}:{node.lineno} uses assert"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "print", f"{path}:{node.lineno} calls print"


def test_import_nnkit_has_no_side_effects():
    """`import nnkit` prints nothing and changes no global Keras state."""
    import subprocess
    import sys

    code = (
        "import nnkit, nnkit.schedules, nnkit.callbacks, keras\n"
        "assert keras.config.floatx() == 'float32'\n"
        "assert keras.config.dtype_policy().name == 'float32'\n"
    )
    quiet = subprocess.run(
        [sys.executable, "-c", "import nnkit; print(nnkit.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert quiet.stdout.strip() == nnkit.__version__ and quiet.stderr == ""
    lazy = subprocess.run(
        [sys.executable, "-c", "import sys, nnkit; print('tensorflow' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert lazy.stdout.strip() == "False", "import nnkit must not import TensorFlow"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_base_classes_refuse_incomplete_subclasses():
    """Abstract methods fail when the subclass is created, not in the middle of a fit."""
    from nnkit.callbacks import StatefulCallback
    from nnkit.schedules import Schedule

    class NoValue(Schedule):
        def get_config(self):
            return {}

    class NoState(StatefulCallback):
        def _reset_state(self):
            pass

    with pytest.raises(TypeError, match="value"):
        NoValue()
    with pytest.raises(TypeError, match="get_state"):
        NoState()
