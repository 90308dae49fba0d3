"""Runs a tutorial page (docs/tutorials/*.md) as a reader would: its ```python and ```bash blocks in order, in one
folder, the Python blocks in one namespace (as cells of a notebook), the bash blocks in bash with ``-e``.

An HTML comment on the line before a block (invisible on the site) changes how the test runs that block:

- ``<!-- test: skip -->``: not run (an install command, a second machine);
- ``<!-- test: requires NAME -->``: run only if NAME is a command on PATH or an importable module, else the
  rest of the page is skipped (and the test says so);
- ``<!-- test: replace "OLD" "NEW" -->``: run with OLD replaced by NEW (several may stand in one comment):
  how a page keeps its real settings and the test runs small ones.

A page's files (``<!-- test: file NAME -->`` before a block) are written to the folder instead of run: a page can
show a file that the commands after it use.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parents[2] / "docs" / "tutorials"
BLOCK = re.compile(r"((?:^[ \t]*<!-- test: .*? -->\n)*)^([ \t]*)```([\w+-]*)\n(.*?)^\2```$", re.S | re.M)
DIRECTIVE = re.compile(r"<!-- test: (.*?) -->")
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class Block:
    """A fenced block of a page: its language, code (with the replacements applied) and directives."""

    lang: str
    code: str
    line: int
    skip: bool = False
    requires: list[str] = field(default_factory=list)
    file: str = ""


def parse(text: str) -> list[Block]:
    """The page's fenced blocks in order, with their ``<!-- test: ... -->`` directives applied."""
    blocks = []
    for m in BLOCK.finditer(text):
        indent = m.group(2)  # a block inside a list item: its lines lose the item's indentation
        code = "".join(line.removeprefix(indent) for line in m.group(4).splitlines(keepends=True))
        block = Block(m.group(3), code, text.count("\n", 0, m.start(3)) + 1)
        for directive in DIRECTIVE.findall(m.group(1)):
            word, _, rest = directive.partition(" ")
            if word == "skip":
                block.skip = True
            elif word == "requires":
                block.requires += rest.split()
            elif word == "file":
                block.file = rest.strip()
            elif word == "replace":
                pairs = QUOTED.findall(rest)
                if len(pairs) % 2:
                    raise ValueError(f"line {block.line}: replace needs pairs of quoted strings: {directive!r}")
                for old, new in zip(pairs[::2], pairs[1::2], strict=True):
                    if old not in block.code:
                        raise ValueError(f"line {block.line}: {old!r} is not in the block it should replace")
                    block.code = block.code.replace(old, new)
            else:
                raise ValueError(f"line {block.line}: unknown test directive {directive!r}")
        blocks.append(block)
    return blocks


def available(name: str) -> bool:
    """Whether ``name`` is a command on PATH or an importable module."""
    return shutil.which(name) is not None or importlib.util.find_spec(name) is not None


def run_page(page: Path, workdir: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run the page's blocks in ``workdir``; returns what was not run for lack of a requirement (empty when
    everything ran). A failing block raises AssertionError naming the page and the block's line."""
    env = {**os.environ, **(env or {})}
    module = types.ModuleType("__tutorial__")  # the blocks' namespace, a module (dataclasses look it up)
    namespace = module.__dict__
    cwd, old_env = os.getcwd(), dict(os.environ)
    sys.modules[module.__name__] = module
    os.chdir(workdir)
    os.environ.update(env)
    try:
        for block in parse(page.read_text()):
            where = f"{page.name}:{block.line}"
            if block.skip:
                continue
            missing = [r for r in block.requires if not available(r)]
            if missing:
                return [f"{where}: needs {', '.join(missing)}"]
            if block.file:
                (workdir / block.file).parent.mkdir(parents=True, exist_ok=True)
                (workdir / block.file).write_text(block.code)
            elif block.lang == "python":
                exec(compile(block.code, where, "exec"), namespace)
            elif block.lang == "bash":
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=workdir, env=env,
                                      capture_output=True, text=True)
                sys.stdout.write(done.stdout)
                assert done.returncode == 0, (f"{where}: exit {done.returncode}\n{block.code}\n"
                                              f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}")
    finally:
        sys.modules.pop(module.__name__, None)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(old_env)
    return []
