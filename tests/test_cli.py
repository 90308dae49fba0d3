"""The ``qorus`` command line, run as a user would."""

import json
import subprocess
import sys

from click.testing import CliRunner

from qorus_jit.cli import main


def test_info_reports_versions_threads_cpu_blas_and_cache():
    result = CliRunner().invoke(main, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    import numba
    import numpy as np

    assert data["versions"]["numba"] == numba.__version__
    assert data["versions"]["numpy"] == np.__version__
    assert data["threads"]["numba_threading_layer"] in {"tbb", "omp", "workqueue"}
    assert data["threads"]["numba_threads"] >= 1
    assert data["cpu"]["llvm_target"]
    assert any("qorus kernels" in lib["used_by"] for lib in data["blas"])
    assert "nnan" not in data["fastmath"]
    assert data["numba_cache"]


def test_info_text_and_console_script():
    out = subprocess.run([sys.executable, "-m", "qorus_jit.cli", "info"], capture_output=True, text=True,
                         check=True).stdout
    for word in ("numba", "threads:", "simd:", "blas:", "cache:"):
        assert word in out


def test_clear_cache_removes_only_numba_files(tmp_path):
    env_cache = tmp_path / "cache"
    code = (
        "import numpy as np\n"
        "from qorus_jit.kernels.elementwise import add_forward\n"
        "x = np.ones(3, np.float32); add_forward(x, x, x)\n"
    )
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(env_cache)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    cached = list(env_cache.rglob("*.nbi"))
    assert cached, "the kernel call should have cached something"
    out = subprocess.run([sys.executable, "-m", "qorus_jit.cli", "clear-cache"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "removed" in out
    assert not list(env_cache.rglob("*.nbi")) and not list(env_cache.rglob("*.nbc"))
