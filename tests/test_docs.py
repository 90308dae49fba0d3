"""The docs' code fences parse, and their Python examples run as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"```[\w+-]*")
FRAGMENT = "# a fragment"  # first line of a block that is part of a module: compiled, not run


def fence_errors(text: str, page: str = "page") -> list[str]:
    """Lines that look like a fence but are not one (two backticks, text after the language), and a fence
    left open at the end of the page."""
    errors, open_at = [], None
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s.startswith("``"):
            continue
        if not FENCE.fullmatch(s):
            errors.append(f"{page}:{n}: not a code fence: {s!r}")
        elif open_at is None:
            open_at = n
        elif s == "```":
            open_at = None
        else:
            errors.append(f"{page}:{n}: a fence opens inside the block opened at line {open_at}")
    if open_at is not None:
        errors.append(f"{page}:{open_at}: the block opened here is never closed")
    return errors


def blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), re.S | re.M)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_fences_parse(page):
    assert fence_errors(page.read_text(), page.name) == []


def test_the_fence_check_catches_broken_fences():
    assert fence_errors("``python\nx = 1\n``\n") == ["page:1: not a code fence: '``python'",
                                                   "page:3: not a code fence: '``'"]
    assert fence_errors("```python\nx = 1\n") == ["page:1: the block opened here is never closed"]
    assert fence_errors("```python\n```bash\n```\n")[0].startswith("page:2: a fence opens inside")
    assert fence_errors("```python\nx = 1\n```\n\n```bash\nls\n```\n") == []


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run(page):
    for code in blocks(page):
        compiled = compile(code, f"{page.name} example", "exec")
        if "path/to/" in code or code.startswith(FRAGMENT):
            continue  # needs a real checkpoint folder (covered by tests/models), or part of a module
        exec(compiled, {})
