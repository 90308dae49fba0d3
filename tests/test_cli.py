"""The ``qorus`` command line, run as a user would."""

import json
import subprocess
import sys

import pytest
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
    from qorus_jit.kernels import quant_x86
    from qorus_jit.kernels._blas import BF16_GEMM, BLAS_SOURCE

    prompts = data["quantized_kernels"]["prompts"]  # how several tokens multiply: panels only where MKL serves
    want = ("float32, MKL's product on dequantized panels from 32 tokens (tiles below)"
            if BLAS_SOURCE == "Intel MKL" else "float32 tiles")
    if BLAS_SOURCE == "Intel MKL" and BF16_GEMM and quant_x86.available()["avx512-bf16"]:
        want += ("; bf16 weights: MKL's bf16 product from 32 tokens (x as two bf16 numbers); int8 weights: MKL's "
                 "bf16 product from 2^25 multiply-adds (W as two bf16 numbers, x as one)")
    assert prompts == want


def test_info_text_and_console_script():
    out = subprocess.run([sys.executable, "-m", "qorus_jit.cli", "info"], capture_output=True, text=True,
                         check=True).stdout
    for word in ("numba", "threads:", "simd:", "blas:", "quantized:", "prompts: float32", "cache:"):
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


def test_compile_lists_what_it_compiles_and_refuses_unknown_names():
    res = CliRunner().invoke(main, ["compile", "--list"])
    assert res.exit_code == 0, res.output
    for word in ("attention-forward", "attention-backward", "model", "generate-llama", "generate-gpt2", "into "):
        assert word in res.output
    res = CliRunner().invoke(main, ["compile", "--only", "train,nope"])
    assert res.exit_code == 2 and res.output.startswith("error: --only: unknown nope")


def test_compile_fills_the_numba_cache_dir_it_is_given(tmp_path):
    """qorus compile --only generate-gpt2 in a fresh process whose NUMBA_CACHE_DIR is empty (the shared cache is
    not touched): a worker compiles, and a second fresh process taking the same path then loads every kernel
    from that folder and compiles none."""
    import os

    from qorus_jit import precompile

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-m", "qorus_jit.cli", "compile", "--only", "generate-gpt2", "--jobs", "1",
                          "--no-progress"], env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr
    assert f"compiling into {tmp_path / 'cache'}" in res.stderr
    compiled = int(res.stderr.split("compiled ")[1].split()[0])
    assert compiled >= 5, res.stderr
    assert len(list((tmp_path / "cache").rglob("*.nbi"))) >= compiled
    code = ("import json, sys\n"
            "from qorus_jit import precompile as P\n"
            "spec = P.Spec.from_json(sys.argv[1])\n"
            "with P.CompileCounter() as c:\n"
            "    P.run_task('generate', spec)\n"
            "print(json.dumps(c.names))\n")
    spec = next(s for s in precompile.default_specs() if s.name == "generate-gpt2")
    again = subprocess.run([sys.executable, "-c", code, spec.to_json()], env=env, capture_output=True, text=True,
                           timeout=1800)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == []


@pytest.mark.parametrize("args", [["nope"], ["--bogus"], ["info", "--bogus"], ["info", "extra"],
                                  ["clear-cache", "extra"], ["bench", "--bogus"], ["plot"]])
def test_usage_errors_are_one_line_with_exit_code_2(args):
    """An unknown command or option, an extra or a missing argument: one line naming it, and where help is."""
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help)" in lines[0], res.output


def test_first_use_notice_comes_before_numba_loads(tmp_path):
    """On an empty kernel cache, `qorus train` says that the kernels compile before it imports numba (about a
    second by itself), so the notice is on screen at once. Checked by the order of -X importtime's lines."""
    code = "from qorus_jit.cli import main; main(['train', '--steps', '2'])"
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-c", code], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=env, text=True, cwd=tmp_path)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("first use on this machine"):
                break
    finally:
        proc.kill()
        proc.wait()
    assert lines and lines[-1].startswith("first use on this machine"), "".join(lines[-5:])
    assert not any(" numba" in line for line in lines), [line for line in lines if " numba" in line][:3]
