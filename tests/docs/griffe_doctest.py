"""A griffe extension for the API pages (mkdocs.yml): the docstrings' doctest examples (``>>>`` lines and the
output under them) become ``pycon`` code blocks, which Markdown would otherwise run together as a paragraph."""

from __future__ import annotations

import griffe


def fence_doctests(text: str) -> str:
    """``text`` with each run of doctest lines (a ``>>>`` line, its ``...`` lines and its output, up to a blank
    line) put in a fenced ``pycon`` block at the indentation of its first line."""
    out, block, indent = [], [], ""
    for line in text.splitlines() + [""]:
        stripped = line.strip()
        if not block and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
        if stripped.startswith(">>>") or (block and stripped):
            block.append(line[len(indent):] if line.startswith(indent) else stripped)
            continue
        if block:
            out += [indent + "```pycon", *(indent + b for b in block), indent + "```"]
            block = []
        out.append(line)
    return "\n".join(out[:-1])


class DoctestBlocks(griffe.Extension):
    """Rewrites every docstring's doctest examples as fenced code (see ``fence_doctests``)."""

    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
