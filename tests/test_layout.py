"""The package's layering (pyproject.toml, [tool.importlinter]) holds, and the check catches a new upward import."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("lint-imports is required in CI (pip install -e '.[test]')")
        pytest.skip("import-linter not installed")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([exe, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_contracts_hold():
    res = lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize("module, upward", [
    ("core/check.py", "qorus_jit.kernels.matmul"),
    ("kernels/norm.py", "qorus_jit.layers"),
    ("formats/hf.py", "qorus_jit.models"),
    ("layers/base.py", "qorus_jit.models"),
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward):
    shutil.copytree(ROOT / "qorus_jit", tmp_path / "qorus_jit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "qorus_jit" / module
    target.write_text(target.read_text() + f"\n\ndef _upward():\n    import {upward}  # noqa\n")
    res = lint_imports(tmp_path)
    assert res.returncode != 0, res.stdout
    assert f"not allowed to import {'.'.join(upward.split('.')[:2])}" in res.stdout
