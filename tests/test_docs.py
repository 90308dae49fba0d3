"""The Python examples in the docs run as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@pytest.mark.parametrize("doc", ["layers.md", "kernels.md", "training.md", "generation.md", "profiling.md"])
def test_python_blocks_run(doc):
    for code in blocks(DOCS / doc):
        if "path/to/" in code:
            continue  # needs a real checkpoint folder: covered by tests/models
        exec(compile(code, f"{doc} example", "exec"), {})


def test_readme_python_blocks_run():
    for code in blocks(DOCS.parent / "README.md"):
        exec(compile(code, "README example", "exec"), {})
