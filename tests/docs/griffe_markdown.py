"""A griffe extension for the API pages (mkdocs.yml): the docstrings are written for the terminal (reST-style
roles, doctest examples), and Markdown needs two changes to show them right: doctest examples (``>>>`` lines
and the output under them) become ``pycon`` code blocks, which Markdown would otherwise run together as a
paragraph, and roles such as ``:class:`~qorus_jit.layers.Linear``` become code (``Linear``). Constants and
class attributes documented by ``#:`` comments above them (Sphinx's convention) get those as docstrings."""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|obj|exc):`(~?)([^`]+)`")


def plain_roles(text: str) -> str:
    """``text`` with each reST role as inline code: ``:func:`~a.b.f``` -> ```f```, ``:mod:`a.b``` -> ```a.b```."""
    return ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


def fence_doctests(text: str) -> str:
    """``text`` with each run of doctest lines (a ``>>>`` line, its ``...`` lines and its output, up to a blank
    line) put in a fenced ``pycon`` block at the indentation of its first line."""
    out, block, indent = [], [], ""
    for line in [*text.split("\n"), None]:  # None: the end, which closes an open block
        stripped = "" if line is None else line.strip()
        if line is not None and not block and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
        if stripped.startswith(">>>") or (block and stripped):
            block.append(line[len(indent):] if line.startswith(indent) else stripped)
            continue
        if block:
            out += [indent + "```pycon", *(indent + b for b in block), indent + "```"]
            block = []
        if line is not None:
            out.append(line)
    return "\n".join(out)


def comment_doc(lines: list[str], lineno: int) -> str:
    """The text of the ``#:`` comment lines right above line ``lineno`` (1-based) of ``lines``, or ""."""
    out, i = [], lineno - 2
    while i >= 0 and lines[i].lstrip().startswith("#:"):
        out.append(lines[i].lstrip()[2:].strip())
        i -= 1
    return "\n".join(reversed(out))


class DocstringMarkdown(griffe.Extension):
    """Rewrites every docstring's doctest examples as fenced code and its roles as inline code, and takes an
    attribute's ``#:`` comment as its docstring."""

    def on_object(self, *, obj, **kwargs) -> None:
        if obj.is_attribute and obj.docstring is None and obj.lineno and obj.filepath in obj.lines_collection:
            text = comment_doc(obj.lines_collection[obj.filepath], obj.lineno)
            if text:
                obj.docstring = griffe.Docstring(text, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(fence_doctests(obj.docstring.value))
