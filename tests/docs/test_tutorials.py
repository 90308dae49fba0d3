"""Every tutorial page runs as written (on small settings, through its ``<!-- test: ... -->`` comments), so a page
that drifts from the code fails here. tests/docs/tutorials.py says how a page is run."""

import re
from pathlib import Path

import pytest

from tests.docs.tutorials import TUTORIALS, parse, run_page

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(p for p in TUTORIALS.glob("*.md") if p.name != "index.md")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_tutorial_runs(page, tmp_path):
    skipped = run_page(page, tmp_path, env={"QORUS_CACHE_DIR": str(tmp_path / "cache")})
    if skipped:
        pytest.skip("; ".join(skipped))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_tutorial_has_code_and_is_in_the_nav(page):
    assert [b for b in parse(page.read_text()) if b.lang in ("python", "bash") and not b.skip], page.name
    assert f"tutorials/{page.name}" in (ROOT / "mkdocs.yml").read_text()


def test_directives():
    text = ('<!-- test: replace "--steps 300" "--steps 3" -->\n```bash\nqorus train --steps 300\n```\n'
            "<!-- test: skip -->\n```bash\npip install x\n```\n"
            "<!-- test: requires mpiexec mpi4py -->\n```python\nimport mpi4py\n```\n")
    train, install, mpi = parse(text)
    assert (train.lang, train.code, train.line) == ("bash", "qorus train --steps 3\n", 2)
    assert install.skip and not train.skip
    assert mpi.requires == ["mpiexec", "mpi4py"]


def test_a_block_in_a_list_item():
    text = "1. Write it:\n\n    <!-- test: file hosts -->\n    ```text\n    node1:2\n    node2:2\n    ```\n"
    (block,) = parse(text)
    assert (block.file, block.code, block.line) == ("hosts", "node1:2\nnode2:2\n", 4)


def test_a_replacement_that_no_longer_matches_fails():
    with pytest.raises(ValueError, match="'--steps 300' is not in the block"):
        parse('<!-- test: replace "--steps 300" "--steps 3" -->\n```bash\nqorus train --steps 600\n```\n')
    with pytest.raises(ValueError, match="unknown test directive"):
        parse("<!-- test: sikp -->\n```bash\nls\n```\n")


def test_a_failing_block_fails_the_page(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\necho one > one.txt\n```\n\n```python\nassert open('one.txt').read() == 'two'\n```\n")
    with pytest.raises(AssertionError):
        run_page(page, tmp_path)
    page.write_text("```bash\nexit 3\n```\n")
    with pytest.raises(AssertionError, match=re.escape("page.md:1: exit 3")):
        run_page(page, tmp_path)
