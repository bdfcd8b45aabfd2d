"""The built documentation site, read as a reader meets it.

``mkdocs build --strict`` catches unknown nav entries and references it can
resolve; it does not catch Sphinx roles in docstrings (``:class:`Foo```),
which the Markdown renderer prints as literal text, HTML comments left in
``docs/`` (they reach the page source), links to anchors that do not exist, or
a code block too wide for the page. These tests build the site once into a
temporary directory and read the HTML.
"""

import html.parser
import os
import pathlib
import posixpath
import re
import subprocess
import sys
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# A Sphinx role, as the Markdown renderer leaves it: ":class:" then inline code.
SPHINX_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|mod|obj|data|exc|const|ref|doc|term|any):(?:`|<code)"
)
# The main column of Material's default layout (with both sidebars, 1280 px
# window) shows about 80 characters of code before a block scrolls sideways.
CODE_COLUMNS = 80


class _Page(html.parser.HTMLParser):
    """The ids, links, text and code-block lines of one built page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.text, self.blocks = set(), [], [], []
        self.code_blocks = []  # highlighted blocks (Python, shell), not program output
        self._pre, self._highlighted = None, False
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        for key in ("href", "src"):
            if attrs.get(key) and tag in ("a", "img", "link", "script"):
                self.links.append(attrs[key])
        if tag in ("script", "style"):
            self._skip += 1
        if tag == "pre":
            self._pre, self._highlighted = [], False
        if tag == "span" and self._pre is not None and attrs.get("class"):
            self._highlighted = True  # Pygments tokens: code, not quoted output

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1
        if tag == "pre" and self._pre is not None:
            self.blocks.append("".join(self._pre))
            if self._highlighted:
                self.code_blocks.append(self.blocks[-1])
            self._pre = None

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        if self._pre is not None:
            self._pre.append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``{"api/callbacks/index.html": _Page, ...}`` of a fresh ``mkdocs build --strict``."""
    # The docs extras (mkdocs) are in `make test`'s venv; `make test-keras-next` has dev only.
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (the docs extras)")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        # No --quiet: it hides the warnings that --strict counts (issue 20).
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING -")]
    assert not warnings, warnings
    pages = {}
    for path in out.rglob("*.html"):
        page = _Page()
        page.feed(path.read_text(encoding="utf-8"))
        page.raw = path.read_text(encoding="utf-8")
        pages[path.relative_to(out).as_posix()] = page
    assert "index.html" in pages and "api/callbacks/index.html" in pages
    return out, pages


def _content_pages(pages):
    return {name: page for name, page in pages.items() if name not in ("404.html",)}


def test_no_sphinx_roles_rendered_as_text(site):
    _, pages = site
    found = {
        name: sorted(set(SPHINX_ROLE.findall(page.raw)))
        for name, page in _content_pages(pages).items()
        if SPHINX_ROLE.search(page.raw)
    }
    assert not found, (
        f"Sphinx roles shown as literal text (write ``name`` in docstrings instead): {found}"
    )


def test_no_html_comments_left_in_the_docs_sources():
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(DOCS.rglob("*.md"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "<!--" in line
    ]
    assert not found, f"HTML comments (readers see them in the page source): {found}"


def test_no_html_comments_from_docstrings_on_api_pages(site):
    _, pages = site
    # Material's own templates write none inside the article; a comment there
    # came from a docs page or a docstring.
    found = [
        name
        for name, page in pages.items()
        if re.search(r"<article[^>]*>.*?<!--.*?</article>", page.raw, flags=re.DOTALL)
    ]
    assert not found, found


def _resolve(page_name, link):
    """The site file and fragment a relative link of ``page_name`` points at, or None."""
    parsed = urllib.parse.urlsplit(link)
    if parsed.scheme or parsed.netloc or link.startswith(("mailto:", "data:", "javascript:")):
        return None  # external
    path = urllib.parse.unquote(parsed.path)
    if not path:
        target = page_name
    else:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page_name), path))
        if path.endswith("/") or target == ".":
            target = posixpath.join(target, "index.html") if target != "." else "index.html"
    return target, urllib.parse.unquote(parsed.fragment)


def test_internal_links_and_anchors_resolve(site):
    out, pages = site
    broken, checked = [], 0
    for name, page in _content_pages(pages).items():
        for link in page.links:
            resolved = _resolve(name, link)
            if resolved is None:
                continue
            checked += 1
            target, fragment = resolved
            if target.startswith(".."):
                broken.append(f"{name}: {link} (leaves the site)")
            elif not (out / target).is_file():
                if (out / target).is_dir() and (out / target / "index.html").is_file():
                    target = posixpath.join(target, "index.html")
                else:
                    broken.append(f"{name}: {link} (no file {target})")
                    continue
            if fragment and target in pages and fragment not in pages[target].ids:
                broken.append(f"{name}: {link} (no anchor #{fragment} in {target})")
    assert not broken, "broken internal links:\n" + "\n".join(broken)
    assert checked > 20 * len(pages)  # the nav alone links every page from every page


def test_code_blocks_fit_the_page(site):
    """No line of code scrolls sideways on a guide page (the home page's first block did).

    Quoted program output (reports, listings: blocks without syntax
    highlighting) and the API pages' doctests are left as they are.
    """
    _, pages = site
    wide = [
        f"{name}: {line.strip()}"
        for name, page in _content_pages(pages).items()
        if not name.startswith("api/")
        for block in page.code_blocks
        for line in block.splitlines()
        if len(line) > CODE_COLUMNS
    ]
    assert not wide, f"code lines wider than {CODE_COLUMNS} characters:\n" + "\n".join(wide)
    assert len(pages["index.html"].code_blocks) >= 1


def test_the_checks_catch_what_they_look_for():
    """The patterns find the issue's examples (so a green run means something)."""
    assert SPHINX_ROLE.search("Wraps :class:<code>keras.Model</code>")
    assert SPHINX_ROLE.search("see :func:`nnkit.distribute.strategy`")
    assert not SPHINX_ROLE.search("ratio 3:1, `class` and a time 10:30")
    page = _Page()
    page.feed('<h2 id="a">A</h2><a href="../b/#c">b</a><pre><code>x = 1\ny = 2</code></pre>')
    page.feed('<pre><code><span class="n">x</span> = 1</code></pre>')
    assert page.ids == {"a"} and page.links == ["../b/#c"]
    assert page.blocks == ["x = 1\ny = 2", "x = 1"] and page.code_blocks == ["x = 1"]
    assert _resolve("api/tuning/index.html", "../../tuning/#reading-the-report") == (
        "tuning/index.html",
        "reading-the-report",
    )
    assert _resolve("index.html", "https://keras.io/") is None
    assert _resolve("index.html", "#principles") == ("index.html", "principles")


# An API entry's heading id: nnkit.<subpackage>.<Class>.<member>.
_MEMBER_ID = re.compile(r"^nnkit\.(\w+)\.([A-Z]\w*)\.(\w+)$")


def test_api_pages_list_nnkit_members_only(site):
    """No API entry documents a member that a Keras (or other foreign) base class defines."""
    import importlib

    _, pages = site
    foreign, checked = [], 0
    for name, page in pages.items():
        if not name.startswith("api/"):
            continue
        for anchor in sorted(page.ids):
            match = _MEMBER_ID.match(anchor)
            if not match:
                continue
            subpackage, class_name, member = match.groups()
            cls = getattr(importlib.import_module(f"nnkit.{subpackage}"), class_name)
            checked += 1
            for base in cls.__mro__[1:]:
                if base is not object and not base.__module__.startswith("nnkit"):
                    if member in vars(base):
                        foreign.append(f"{anchor} (defined by {base.__module__}.{base.__name__})")
                        break
    assert checked > 20
    assert not foreign, "API pages document foreign members:\n" + "\n".join(foreign)
