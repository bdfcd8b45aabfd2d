"""The documentation covers every public name and defines the vocabulary.

The full site build (``mkdocs build --strict``) runs in ``make test`` after
pytest; these checks are the fast, static part.
"""

import importlib
import pathlib
import re

import pytest

import nnkit

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"


def public_names():
    for subpackage in nnkit.SUBPACKAGES:
        module = importlib.import_module(f"nnkit.{subpackage}")
        for name in module.__all__:
            yield subpackage, name


def documented_objects():
    """``{"nnkit.schedules.CosineAnnealing", ...}``: every ``::: path`` in docs/api."""
    found = set()
    for page in API.glob("*.md"):
        found.update(re.findall(r"^:::\s+(\S+)\s*$", page.read_text(), flags=re.MULTILINE))
    return found


@pytest.mark.parametrize(("subpackage", "name"), list(public_names()))
def test_public_name_has_an_api_entry(subpackage, name):
    assert f"nnkit.{subpackage}.{name}" in documented_objects(), (
        f"nnkit.{subpackage}.{name} is public (in __all__) but docs/api/{subpackage}.md "
        f"has no '::: nnkit.{subpackage}.{name}' entry"
    )


def test_api_entries_are_public_names():
    public = {f"nnkit.{subpackage}.{name}" for subpackage, name in public_names()}
    assert documented_objects() <= public


def test_every_subpackage_has_an_api_page_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for subpackage in nnkit.SUBPACKAGES:
        assert (API / f"{subpackage}.md").is_file()
        assert f"api/{subpackage}.md" in nav


NAMING_TERMS = [
    "step",
    "epoch",
    "steps_per_epoch",
    "total_steps",
    "warmup_steps",
    "cycle_steps",
    "learning_rate",
    "initial_learning_rate",
    "max_learning_rate",
    "min_learning_rate",
    "factor",
    "scale",
    "monitor",
    "patience",
    "min_delta",
    "granularity",
]


def test_naming_defines_the_vocabulary():
    text = (DOCS / "naming.md").read_text()
    # A definition-list entry: the term in backticks alone on a line (possibly
    # with others), followed by a ':   definition' line.
    defined = set()
    for heading, definition in re.findall(r"^(`[^\n]+)\n:\s+(\S[^\n]*)", text, flags=re.MULTILINE):
        assert definition.strip()
        defined.update(re.findall(r"`([^`]+)`", heading))
    missing = [term for term in NAMING_TERMS if term not in defined]
    assert not missing, f"docs/naming.md does not define {missing}"
    assert "warmup included" in text  # total_steps includes warmup
    assert "optimizer.iterations" in text  # what a step is


def test_every_page_is_in_the_nav_and_every_image_exists():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        relative = page.relative_to(DOCS).as_posix()
        assert relative in nav, f"{relative} is not in the mkdocs.yml nav"
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / image).is_file(), f"{relative}: missing image {image}"


def test_schedule_plots_come_from_the_committed_script():
    script = (DOCS / "scripts" / "plot_schedules.py").read_text()
    for image in re.findall(r"\(img/([^)]+)\.png\)", (DOCS / "schedules.md").read_text()):
        assert f'"{image}"' in script, f"img/{image}.png is not drawn by plot_schedules.py"


# -- the front door: README, the home page and the nav (issue 20) --------------------------

README = ROOT / "README.md"
STAGES = [
    "Home",
    "Getting started",
    "Forward pass",
    "Loss",
    "Backprop health",
    "Update",
    "Generalization",
    "Scale",
    "Tuning and search",
    "Meta-learning",
    "Reference",
]


def _nav_sections():
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^  - ([^:]+):", nav, flags=re.MULTILINE)


def _guide_pages():
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    return [page for page in re.findall(r": (\S+\.md)$", nav, flags=re.MULTILINE)]


def test_the_nav_is_grouped_by_stage_of_the_training_loop():
    assert _nav_sections() == STAGES


def test_the_home_page_links_every_guide_page_and_states_both_backends():
    home = (DOCS / "index.md").read_text()
    missing = [
        page
        for page in _guide_pages()
        if not page.startswith("api/") and page != "index.md" and f"]({page})" not in home
    ]
    assert not missing, f"docs/index.md does not link {missing}"
    assert "TensorFlow" in home and "JAX backend" in home


def test_the_readme_shows_every_subpackage_and_recipe():
    readme = README.read_text()
    table = readme.split("## What is in it", 1)[1].split("\n\n")[2]
    missing = [sub for sub in nnkit.SUBPACKAGES if f"`{sub}/`" not in table]
    assert not missing, f"README's stage table lacks {missing}"
    recipes = sorted(path.name for path in (ROOT / "recipes").glob("*.py"))
    unlisted = [name for name in recipes if f"`{name}`" not in readme]
    assert not unlisted, f"README does not list the recipes {unlisted}"
    for command in ("make demo", "make test"):
        assert f"\n{command}" in readme, f"README lost the set-up command {command!r}"


def test_the_readme_names_the_parts_of_every_stage():
    """The parts a reader looks for first (issue 20: none of them was in the README)."""
    readme = README.read_text()
    for subpackage in ("optimizers", "meta", "models"):
        module = importlib.import_module(f"nnkit.{subpackage}")
        missing = [name for name in module.__all__ if f"`{name}`" not in readme]
        assert not missing, f"README lacks nnkit.{subpackage}'s {missing}"
    for name in ("StochasticWeightAveraging", "DropPath", "GradientNormMonitor"):
        assert f"`{name}`" in readme


def test_the_docs_build_and_the_formatter_are_strict_in_make_test():
    """`--quiet` hid the warnings that `--strict` counts; the format check runs in `make test`."""
    makefile = (ROOT / "Makefile").read_text()
    builds = re.findall(r"mkdocs build[^\n]*", makefile)
    assert builds and all("--strict" in b and "--quiet" not in b for b in builds), builds
    for target in ("test", "lint"):
        recipe = makefile.split(f"\n{target}: ", 1)[1].split("\n\n", 1)[0]
        assert "ruff format --check" in recipe, f"make {target} does not check the format"


def test_the_recipes_page_describes_every_recipe():
    page = (DOCS / "recipes.md").read_text()
    recipes = sorted(path.name for path in (ROOT / "recipes").glob("*.py"))
    missing = [name for name in recipes if f"`recipes/{name}`" not in page]
    assert not missing, f"docs/recipes.md does not describe {missing}"
