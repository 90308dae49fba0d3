"""ruff keeps the style of the whole tree; CI runs it with the tests."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        if os.environ.get("CI"):
            pytest.fail("ruff is required in CI (pip install -e '.[test]')")
        pytest.skip("ruff not installed")
    res = subprocess.run([ruff, "check", "qorus_jit", "tests", "perf", "examples"], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
