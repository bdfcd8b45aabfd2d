"""Griffe extension: render the ``Example:`` doctests of nnkit's docstrings as code.

nnkit's docstrings (Google style) end with an ``Example:`` section whose
``>>>`` lines sit flush with the header, which doctest accepts. Griffe reads
``Example:`` as an admonition whose body is Markdown, so without help the
doctest would render as Markdown (``>>>`` as quotes, ``[0.1, 0.0]`` as
links). This extension wraps each such doctest in a ```` ```pycon ```` fence
indented under the header, up to the next section header. Examples that
are already fenced are left alone.

Loaded by mkdocstrings (``extensions:`` in mkdocs.yml); not part of nnkit.
"""

import re

import griffe

_HEADER = re.compile(r"^(\s*)(Example|Examples):\s*$")
_SECTION = re.compile(r"^([A-Z][A-Za-z ]*):\s*$")


def fence_examples(text):
    """``text`` with every doctest under an ``Example(s):`` header fenced as pycon."""
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        match = _HEADER.match(line)
        if not match:
            continue
        indent = match.group(1)
        body = []
        while i < len(lines):
            current = lines[i]
            if current.startswith(indent) and _SECTION.match(current[len(indent) :]):
                break  # the next section header, at the header's own indentation
            body.append(current)
            i += 1
        while body and not body[-1].strip():
            body.pop()
        code = [b.strip() for b in body]
        if not code or not code[0].startswith(">>>"):
            out.extend(body)
            continue
        # Keep the doctest's own relative indentation (continuation lines, output).
        base = min(len(b) - len(b.lstrip()) for b in body if b.strip())
        pad = indent + "    "
        out.append(f"{pad}```pycon")
        out.extend(f"{pad}{b[base:]}" if b.strip() else "" for b in body)
        out.append(f"{pad}```")
        out.append("")
    return "\n".join(out)


class DoctestExamples(griffe.Extension):
    """Fence the ``Example:`` doctests of every object's docstring."""

    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = fence_examples(obj.docstring.value)
