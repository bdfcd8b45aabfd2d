"""Claims the docs make about importing and loading, executed as a reader would run them.

A page that says one thing while the code does another is worse than no page
(docs/recipes.md once said that ``import nnkit`` "registers nothing" and then
showed ``import nnkit  # makes every nnkit class loadable``; docs/kfac.md said
a saved K-FAC model "loads without nnkit"). Each test here runs the docs' own
snippet, or the claim in its words, in a fresh process.
"""

import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from nnkit.layers import DenseBlock
from nnkit.optimizers import KFAC
from nnkit.schedules import CosineAnnealing

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LOAD_COMMENT = "import nnkit  # makes every nnkit class loadable"


def _run(code, cwd):
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(cwd),
        env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    return result


def _python_blocks(page):
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)


def _saved_model(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), DenseBlock(6), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(CosineAnnealing(0.1, 20)), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    return path


@pytest.mark.parametrize("page", ["recipes.md", "getting-started.md"])
def test_the_load_snippet_of_the_page_loads_an_nnkit_model(page, tmp_path):
    """The page's own ``import nnkit`` + ``load_model`` block, run as written (path replaced)."""
    blocks = [block for block in _python_blocks(page) if LOAD_COMMENT in block]
    assert len(blocks) == 1, f"{page}: expected one load snippet with {LOAD_COMMENT!r}"
    path = _saved_model(tmp_path)
    code = re.sub(r'"runs/[^"]+\.keras"', repr(str(path)), blocks[0])
    assert str(path) in code, "the snippet's path could not be replaced"
    show = '\nprint(model.optimizer.get_config()["learning_rate"]["class_name"])\n'
    result = _run(code + show, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "CosineAnnealing"


def test_import_order_does_not_matter_for_loading(tmp_path):
    """docs/index.md: ``import nnkit`` makes every class loadable, before or after Keras."""
    path = _saved_model(tmp_path)
    load = f"keras.saving.load_model({str(path)!r}, safe_mode=True)\nprint('ok')\n"
    for order in ("import nnkit\nimport keras\n", "import keras\nimport nnkit\n"):
        result = _run(order + load, tmp_path)
        assert result.returncode == 0 and result.stdout.split()[-1] == "ok", result.stderr[-2000:]


def test_a_kfac_model_needs_nnkit_for_its_optimizer_only(tmp_path):
    """docs/kfac.md: the saved layers are plain Keras; the saved optimizer is nnkit's."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(KFAC(0.01, model=model), loss="mse")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    model.fit(x, x[:, :1], epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "kfac.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    check = textwrap.dedent(
        """
        import numpy as np
        prediction = model.predict(np.load("x.npy"), verbose=0)
        np.testing.assert_allclose(prediction, np.load("y.npy"), rtol=1e-6, atol=1e-6)
        print(type(getattr(model, "optimizer", None)).__name__)
        """
    )
    without = _run(
        "import keras\nmodel = keras.saving.load_model('kfac.keras', compile=False)\n" + check,
        tmp_path,
    )
    assert without.returncode == 0, without.stderr[-2000:]
    assert without.stdout.split()[-1] == "NoneType"
    compiled_without = _run("import keras\nkeras.saving.load_model('kfac.keras')\n", tmp_path)
    assert compiled_without.returncode != 0
    assert "KFAC" in compiled_without.stderr
    with_nnkit = _run(
        "import keras, nnkit\nmodel = keras.saving.load_model('kfac.keras')\n" + check, tmp_path
    )
    assert with_nnkit.returncode == 0, with_nnkit.stderr[-2000:]
    assert with_nnkit.stdout.split()[-1] == "KFAC"


@pytest.mark.parametrize("phrase", ["registers nothing", "loads without nnkit"])
def test_retracted_claims_stay_retracted(phrase):
    """Claims found false (issue 20) do not come back on any page or in the README."""
    pages = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
    found = [page.name for page in pages if phrase in page.read_text()]
    assert not found, f"{phrase!r} is false and is back in {found}"
