"""The fast instruction paths of the quantized kernels (kernels/quant_x86.py).

On every machine: the intrinsic signatures LLVM expects, the instructions and operand roles in the assembly
compiled for a Sapphire Rapids and an Alder Lake target (nothing executed), the loops run with each
instruction emulated in plain IR, and the NumPy emulation of their arithmetic, all against a float64
reference. Where the CPU has the instructions: the fast paths against the emulation, the reference and the
portable kernels (skipped elsewhere, naming the missing feature).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir

from qorus_jit.kernels import quant_x86 as Q
from tests.naive import quant as naive

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(40, 288, 1), (33, 192, 5), (17, 96, 20), (24, 512, 3)]  # (O, I, N): odd and even group counts


def _q8_weights(rng, O, I):
    qs = rng.integers(-128, 128, (O, I), dtype=np.int8)  # -128 too: the XOR 0x80 offset is exact for it
    d = (rng.random((O, I // 32)) * 0.02 + 1e-3).astype(np.float16).astype(np.float32)
    return qs, d


def _q8_reference(tokens, qs, d, bias):
    """float64 (xq dx) . (qs d) + bias and the sum of |terms| of each output."""
    xq, _, dx = tokens
    xd = xq.astype(np.float64) * np.repeat(dx.astype(np.float64), 32, axis=1)
    w = qs.astype(np.float64) * np.repeat(d.astype(np.float64), 32, axis=1)
    ref = xd @ w.T + (0.0 if bias is None else bias.astype(np.float64))
    return ref, np.abs(xd) @ np.abs(w).T + (0.0 if bias is None else np.abs(bias))


def _bf16_reference(x, w16, bias):
    """float64 (xh + xl) . w + bias and the sum of |terms|; xh, xl: x split into two bf16 numbers."""
    xf = naive.split_bf16_values(x)
    w = (w16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    ref = xf @ w.T + (0.0 if bias is None else bias.astype(np.float64))
    return ref, np.abs(xf) @ np.abs(w).T + (0.0 if bias is None else np.abs(bias))


def _close(out, ref, mag, rel=1e-6):
    """|out - ref| <= rel * (sum of |terms|), element by element."""
    err = np.abs(out.astype(np.float64) - ref)
    assert np.all(err <= rel * mag + 1e-30), f"max error / magnitude {np.max(err / np.maximum(mag, 1e-30)):.3g}"


# ---------------------------------------------------------------------------------------------------
# LLVM: signatures and assembly (no fast instruction executed)


_PROBES = {"dpbusd512": ("i32", 16, "i8", "emit_dpbusd"), "dpbusd256": ("i32", 8, "i8", "emit_dpbusd"),
           "dpbf16ps512": ("float", 16, "i16", "emit_dpbf16ps")}

_ASM = r"""
import sys
import llvmlite.binding as llvm
from tests.test_quant_x86 import _probe_module
llvm.initialize_native_target()
llvm.initialize_native_asmprinter()
mod = llvm.parse_assembly(_probe_module(sys.argv[2].split(",")))
mod.verify()
tm = llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(cpu=sys.argv[1], opt=2)
print(tm.emit_assembly(mod))
"""


def _probe_module(names=tuple(_PROBES)):
    """One function per instruction, f(acc, a, b) = instruction(acc, a, b), emitted by quant_x86's helpers."""
    mod = ir.Module("probe")
    types = {"i8": ir.IntType(8), "i16": ir.IntType(16), "i32": ir.IntType(32), "float": ir.FloatType()}
    for name in names:
        acc, lanes, byte, emit = _PROBES[name]
        accty, argty = ir.VectorType(types[acc], lanes), ir.VectorType(types[byte], lanes * (4 if byte == "i8" else 2))
        fn = ir.Function(mod, ir.FunctionType(accty, [accty, argty, argty]), name)
        b = ir.IRBuilder(fn.append_basic_block())
        b.ret(getattr(Q, emit)(b, *fn.args))
    return str(mod)


def _asm(cpu, names):
    """Assembly of the probes for ``cpu``, in a subprocess: LLVM aborts the process on an instruction the
    target lacks."""
    r = subprocess.run([sys.executable, "-c", _ASM, cpu, ",".join(names)], capture_output=True, text=True,
                       timeout=300, cwd=_ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_intrinsic_signatures_are_llvms_own():
    """LLVM parses our declarations as they are: no auto-upgrade rewrote them (LLVM 22 types)."""
    assert llvm.llvm_version_info[0] == 22, "signatures checked for LLVM 22; re-check them for this LLVM"
    parsed = str(llvm.parse_assembly(_probe_module()))
    assert "declare <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32>, <64 x i8>, <64 x i8>)" in parsed
    assert "declare <8 x i32> @llvm.x86.avx512.vpdpbusd.256(<8 x i32>, <32 x i8>, <32 x i8>)" in parsed
    assert "declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)" \
        in parsed
    assert parsed.count("bitcast") == 2  # only ours (the bf16 bits to bfloat), none added by an upgrade


def test_instruction_operand_roles():
    """acc, a (unsigned bytes / first bf16 operand), b arrive in zmm0, zmm1, zmm2 (ymm for 256 bits): the
    instruction must read a as its first source (the unsigned one) and b as its second."""
    spr = _asm("sapphirerapids", ["dpbusd512", "dpbf16ps512"])
    assert re.search(r"vpdpbusd\s+%zmm2, %zmm1, %zmm0", spr), spr
    assert re.search(r"vdpbf16ps\s+%zmm2, %zmm1, %zmm0", spr), spr
    adl = _asm("alderlake", ["dpbusd256"])
    assert re.search(r"\{vex\}\s+vpdpbusd\s+%ymm2, %ymm1, %ymm0", adl), adl


_COMPILE = r"""
import json, sys, numpy as np, numba
from numba import types
from qorus_jit.kernels import quant_x86 as Q
fast = [Q._token_rows_512, Q._token_rows_vnni256, Q._token_rows_avx2, Q._bf16_token_rows_512, Q._q8_0_token_512,
        Q._q8_0_token_vnni256, Q._q8_0_token_avx2, Q._bf16_token_512]
assert all(not k.signatures for k in fast), "a fast kernel compiled at import"
O, I = 8, 96
out, x = np.zeros(O, np.float32), np.zeros(I, np.float32)
qs, d, xq, dx = np.zeros((O, I), np.int8), np.zeros((O, 3), np.float32), np.zeros(I, np.int8), np.zeros(3, np.float32)
w16, xh = np.zeros((O, I), np.uint16), np.zeros(I, np.uint16)
tok = (out, qs, d, xq, dx, False, 0, 0)  # one token: the signed dot of decoding
kernels = {"sapphirerapids": [(Q._token_rows_512, tok), (Q._q8_0_token_512, (out, x, qs, d, False)),
                              (Q._bf16_token_rows_512, (out, w16, xh, xh, 0, 0)), (Q._bf16_token_512, (out, x, w16))],
           "alderlake": [(Q._token_rows_vnni256, tok), (Q._q8_0_token_vnni256, (out, x, qs, d, False)),
                         (Q._token_rows_avx2, tok)]}
# the decoder's products given int8 activations (bf16 bits): the dot of the target's fastest path, picked while typed
from qorus_jit.kernels.decode import _add_product
dec = (np.zeros(O, np.float32), np.zeros(O, np.float32), qs, d, xq, dx)
kernels[sys.argv[1]].append((_add_product, dec))
if sys.argv[1] == "sapphirerapids":
    dec16 = (np.zeros(O, np.float32), np.zeros(O, np.float32), w16.view(np.uint32), np.zeros((1, 1), np.float32),
             xh, xh)
    kernels[sys.argv[1]].append((_add_product, dec16))
asm = {}
for k, args in kernels[sys.argv[1]]:
    sig = tuple(numba.typeof(a) if isinstance(a, np.ndarray) else types.boolean if isinstance(a, bool) else types.int64
                for a in args)
    k.compile(sig)  # compiled for the target CPU, never called
    name = k.__name__ + ("_bf16" if args[2].dtype == np.uint32 else "")  # the decoder's products of either format
    asm[name] = k.inspect_asm(sig)
print(json.dumps({"asm": asm, "available": Q.available()}))
"""


def _compile_for(cpu, features, tmp_path):
    """Assembly of the fast kernels compiled by numba for ``cpu`` in a fresh process (own cache directory)."""
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("QORUS_PORTABLE", None)
    r = subprocess.run([sys.executable, "-c", _COMPILE, cpu], env=env, capture_output=True, text=True, timeout=600,
                       cwd=_ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# a vpxor's result (w ^ 0x80) read by a vpdpbusd as its unsigned source (AT&T: x, a, acc)
_OFFSET_DOT = r"vpxorq?\s+[^\n]*%{r}(\d+)\n(?:.*\n){{0,12}}?\s*(?:\{{vex\}}\s+)?vpdpbusd\s+%{r}\d+, %{r}\1, %{r}\d+"


def test_kernels_compile_for_sapphire_rapids(tmp_path):
    res = _compile_for("sapphirerapids", "+avx512f,+avx512bw,+avx512vl,+avx512vnni,+avx512bf16", tmp_path)
    for name in ("_bf16_token_rows_512", "_bf16_token_512"):
        assert re.search(r"vdpbf16ps\s+\S+, %zmm\d+, %zmm\d+", res["asm"][name]), name
    # the offset form: w ^ 0x80 (a vpxor, folded with the load) is the first (unsigned) source, x the other
    for name in ("_token_rows_512", "_q8_0_token_512"):
        asm = res["asm"][name]
        assert re.search(_OFFSET_DOT.format(r="[yz]mm"), asm), name
        assert re.search(r"vpdpbusd\s+\S+, %zmm\d+, %zmm\d+", asm), name  # 64-byte steps
        assert "vpsubd" in asm and "vcvtdq2ps" in asm and "vfmadd" in asm, name  # -128 sum(x); the scaled sum
    assert re.search(r"vpdpbusd\s+\S+, %zmm\d+, %zmm\d+", res["asm"]["_add_product"])  # the decoder's products
    assert re.search(r"vdpbf16ps\s+\S+, %zmm\d+, %zmm\d+", res["asm"]["_add_product_bf16"])  # bf16 too
    host = {k for k, v in llvm.get_host_cpu_features().items() if v}
    for path in ("avx512-vnni", "avx512-bf16"):  # the host decides what runs, whatever the target
        assert res["available"][path] == all(f in host for f in Q._NEEDS[path])


def test_kernels_compile_for_alder_lake(tmp_path):
    res = _compile_for("alderlake", "+avx2,+fma,+avxvnni", tmp_path)
    for name in ("_token_rows_vnni256", "_q8_0_token_vnni256"):
        asm = res["asm"][name]
        assert re.search(_OFFSET_DOT.format(r="ymm"), asm) and "{vex}" in asm, name
        assert "vpsubd" in asm and "zmm" not in asm, name  # no AVX-512 on a CPU with AVX-VNNI only
    asm = res["asm"]["_token_rows_avx2"]
    assert re.search(r"vpmaddubsw\s+%ymm\d+, %ymm\d+, %ymm\d+", asm) and "vpsignb" in asm and "vpabsb" in asm, asm
    assert "vpmaddwd" in asm and "vpdpbusd" not in asm
    asm = res["asm"]["_add_product"]  # the decoder's products: AVX-VNNI, the fastest path of this target
    assert re.search(r"\{vex\}\s+vpdpbusd\s+\S+, %ymm\d+, %ymm\d+", asm) and "vpmaddubsw" not in asm
    assert not res["available"]["avx512-vnni"] and not res["available"]["avx512-bf16"]  # the target lacks them


_EMU = r"""
import json, numpy as np
from qorus_jit.kernels import quant_x86 as Q
qs, d = np.ones((8, 64), np.int8), np.ones((8, 2), np.float32)
Q.matvec_q8_0(np.empty(8, np.float32), qs, d, np.ones(64, np.float32), path="emulate")
Q.matvec_bf16(np.empty(8, np.float32), np.ones((8, 64), np.uint16), np.ones(64, np.float32), path="emulate")
print(json.dumps({k.__name__: "".join(k.inspect_asm().values()) for k in (Q._token_rows_emu, Q._bf16_token_rows_emu)}))
"""


def test_emulated_kernels_have_no_fast_instruction(tmp_path):
    """The emulated paths compiled for this machine are plain code (so the tests above check the real ones);
    compiled in a fresh process with its own cache, since numba shows no code of a kernel it loaded."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", _EMU], env=env, capture_output=True, text=True, timeout=600, cwd=_ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, asm in json.loads(r.stdout.strip().splitlines()[-1]).items():
        assert re.search(r"vcvtdq2ps" if "bf16" not in name else r"vmulps|vfmadd", asm), name  # the code is there
        assert not re.search(r"vpdpbusd|vdpbf16ps|vpmaddubsw|vpsignb", asm), name


# ---------------------------------------------------------------------------------------------------
# path choice


def test_paths_refused_without_the_features(monkeypatch):
    monkeypatch.setenv("QORUS_PORTABLE", "1")
    assert Q.available() == {"avx512-vnni": False, "avx-vnni": False, "avx2": False, "avx512-bf16": False}
    assert Q.best_paths() == {"q8_0": None, "bf16": None}
    qs, d = _q8_weights(np.random.default_rng(0), 4, 32)
    with pytest.raises(RuntimeError, match="'avx512-vnni' cannot run here"):
        Q.matvec_q8_0(np.empty(4, np.float32), qs, d, np.ones(32, np.float32), path="avx512-vnni")
    with pytest.raises(RuntimeError, match="no fast q8_0 path"):
        Q.matvec_q8_0(np.empty(4, np.float32), qs, d, np.ones(32, np.float32))
    with pytest.raises(ValueError, match="path: expected one of"):
        Q.matvec_bf16(np.empty(4, np.float32), np.zeros((4, 32), np.uint16), np.ones(32, np.float32), path="avx2")
    monkeypatch.delenv("QORUS_PORTABLE")
    have = Q._features()
    x, w16 = np.ones(32, np.float32), np.zeros((4, 32), np.uint16)
    calls = {"avx512-vnni": lambda p: Q.matvec_q8_0(np.empty(4, np.float32), qs, d, x, path=p),
             "avx-vnni": lambda p: Q.matvec_q8_0(np.empty(4, np.float32), qs, d, x, path=p),
             "avx2": lambda p: Q.matvec_q8_0(np.empty(4, np.float32), qs, d, x, path=p),
             "avx512-bf16": lambda p: Q.matvec_bf16(np.empty(4, np.float32), w16, x, path=p)}
    for path, needs in Q._NEEDS.items():
        assert Q.available()[path] == all(f in have for f in needs)
        if not Q.available()[path]:
            with pytest.raises(RuntimeError, match="the CPU lacks"):
                calls[path](path)


def test_numba_target_features_limit_the_paths(monkeypatch):
    """NUMBA_CPU_FEATURES without a feature (e.g. a generic target) turns its path off even on a CPU with it."""
    monkeypatch.setattr(Q.numba.config, "CPU_FEATURES", "")
    monkeypatch.setattr(Q, "_have", None)  # (both restored after the test)
    monkeypatch.setattr(Q, "_runs", None)
    assert not any(Q.available().values()) and not Q._features()


# ---------------------------------------------------------------------------------------------------
# the arithmetic, on every machine


def test_quantize_token_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(256).astype(np.float32)
    x[:32] = 0.0  # a zero group: scale 0, all zeros
    x[40] = 1e30
    xq, dx = Q.quantize_token(x)
    eq, ed = naive.quantize_activations(x)
    assert xq.dtype == np.int8 and dx.dtype == np.float32
    np.testing.assert_array_equal(xq, eq)
    np.testing.assert_array_equal(dx, ed)
    assert np.all(xq[:32] == 0) and dx[0] == 0 and np.abs(xq).max() == 127


def test_split_bf16_matches_numpy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 100)).astype(np.float32)
    x[0, :6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 3.4e38]
    x[1, :2] = np.array([0x3F808000, 0x3F818000], np.uint32).view(np.float32)  # ties: to even
    xh, xl = Q.split_bf16(x)
    eh, el = Q.emulate_split_bf16(x)
    np.testing.assert_array_equal(xh, eh)
    np.testing.assert_array_equal(xl[:, 6:], el[:, 6:])  # (xl of inf and NaN: NaN either way)
    assert xh[1, 0] == 0x3F80 and xh[1, 1] == 0x3F82 and xl[1, 0] == 0x3B80  # 1 + 2^-8: the tie goes to xl
    assert np.isnan((xh[0, :1].astype(np.uint32) << 16).view(np.float32))
    f = [(v.astype(np.uint32) << 16).view(np.float32).astype(np.float64) for v in (xh, xl)]
    ok = np.isfinite(x) & (np.abs(x) < 1e38)
    assert np.all(np.abs(f[0][ok] + f[1][ok] - x[ok]) <= 2.0**-16 * np.abs(x[ok]))  # two bf16: 16 significant bits


@pytest.mark.parametrize("O,I,N", SHAPES + [(9, 100, 2)])
def test_numpy_emulation_bf16(O, I, N):
    rng = np.random.default_rng(O * I)
    w16 = Q.emulate_round_bf16(rng.standard_normal((O, I)).astype(np.float32))
    x = rng.standard_normal((N, I)).astype(np.float32)
    ref, mag = _bf16_reference(x, w16, None)
    _close(Q.emulate_linear_bf16(x, w16), ref, mag)


def _token(x):
    """quantize_token's (xq, dx) of x as a batch of one, as _q8_reference takes them."""
    xq, dx = Q.quantize_token(x)
    return xq[None], None, dx[None]


@pytest.mark.parametrize("O,I,N", SHAPES)
def test_emulated_q8_0_kernel(O, I, N):
    """The kernel's own loop (instruction emulated) against the reference, token by token; the one-call decoder's
    rows give the same numbers."""
    rng = np.random.default_rng(I - O)
    qs, d = _q8_weights(rng, O, I)
    for x in rng.standard_normal((N, I)).astype(np.float32):
        one = np.full(O, np.nan, np.float32)
        Q.matvec_q8_0(one, qs, d, x, path="emulate")
        ref, mag = _q8_reference(_token(x), qs, d, None)
        _close(one, ref[0], mag[0])
        rows = np.full(O, np.nan, np.float32)
        Q.TOKEN_ROWS["emulate"](rows, qs, d, *Q.quantize_token(x), False, 0, O)
        np.testing.assert_array_equal(rows, one)


@pytest.mark.parametrize("O,I,N", SHAPES + [(9, 100, 2)])
def test_emulated_bf16_kernel(O, I, N):
    rng = np.random.default_rng(O + 3 * I)
    w16 = Q.emulate_round_bf16(rng.standard_normal((O, I)).astype(np.float32))
    x = rng.standard_normal((N, I)).astype(np.float32)
    ref, mag = _bf16_reference(x, w16, None)
    emu = Q.emulate_linear_bf16(x, w16)
    for n in range(N):
        one = np.full(O, np.nan, np.float32)
        Q.matvec_bf16(one, w16, x[n], path="emulate")
        _close(one, ref[n], mag[n])
        _close(one, emu[n].astype(np.float64), mag[n])
        # the one-token rows of the one-call decoder: the same numbers
        xh, xl = Q.split_bf16(x[n:n + 1])
        tok = np.full(O, np.nan, np.float32)
        Q.TOKEN_ROWS_BF16["emulate"](tok, w16, xh[0], xl[0], 0, O)
        np.testing.assert_array_equal(tok, one)


@pytest.mark.parametrize("O,I", [(40, 288), (24, 512)])
def test_emulated_kernels_match_portable(O, I):
    """The fast paths' loops and the portable kernels: q8_0 quantizes the activations the same way, so only the
    float32 sums differ; bf16 differs by x against xh + xl (2^-16 relative)."""
    rng = np.random.default_rng(O * 7 + I)
    qs, d = _q8_weights(rng, O, I)
    x = rng.standard_normal(I).astype(np.float32)
    out, port = np.full(O, np.nan, np.float32), np.full(O, np.nan, np.float32)
    Q.matvec_q8_0(out, qs, d, x, path="emulate")
    _portable("_matvec_q8_0_portable")(port, qs, d, x)
    _close(port, out.astype(np.float64), _q8_reference(_token(x), qs, d, None)[1][0])
    w16 = Q.emulate_round_bf16(rng.standard_normal((O, I)).astype(np.float32))
    Q.matvec_bf16(out, w16, x, path="emulate")
    _portable("_matvec_bf16_portable")(port, w16, x)
    wx = np.abs((w16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)) @ np.abs(x)
    assert np.all(np.abs(out.astype(np.float64) - port) <= 2.0**-16 * wx)


def test_emulated_kernels_in_parallel():
    """Enough work for the parallel chunks: the same results as one chunk at a time."""
    rng = np.random.default_rng(5)
    O, I = 3000, 256
    qs, d = _q8_weights(rng, O, I)
    x = rng.standard_normal(I).astype(np.float32)
    out, serial = np.empty(O, np.float32), np.empty(O, np.float32)
    Q.matvec_q8_0(out, qs, d, x, path="emulate")
    Q.TOKEN_ROWS["emulate"](serial, qs, d, *Q.quantize_token(x), False, 0, O)
    np.testing.assert_array_equal(out, serial)


# ---------------------------------------------------------------------------------------------------
# the real instructions, where the CPU has them


def _skip_unless(path):
    if not Q.available()[path]:
        missing = [f for f in Q._NEEDS[path] if f not in Q._features()] or ["QORUS_PORTABLE is set"]
        pytest.skip(f"{path}: this CPU lacks {', '.join(missing)}")


def _portable(name):
    quant = pytest.importorskip("qorus_jit.kernels.quant")
    if not hasattr(quant, name):
        pytest.skip(f"qorus_jit.kernels.quant has no {name}")
    return getattr(quant, name)


@pytest.mark.parametrize("path", ["avx512-vnni", "avx-vnni", "avx2"])
@pytest.mark.parametrize("O,I,N", SHAPES)
def test_fast_q8_0(path, O, I, N):
    _skip_unless(path)
    rng = np.random.default_rng(O + I + N)
    qs, d = _q8_weights(rng, O, I)
    for x in rng.standard_normal((N, I)).astype(np.float32):
        ref, mag = _q8_reference(_token(x), qs, d, None)
        one = np.full(O, np.nan, np.float32)
        Q.matvec_q8_0(one, qs, d, x, path=path)
        _close(one, ref[0], mag[0])
        emu = Q.matvec_q8_0(np.empty(O, np.float32), qs, d, x, path="emulate")
        _close(one, emu.astype(np.float64), mag[0])
        # the portable kernel quantizes the activations the same way: only the float32 sums differ
        port = np.full(O, np.nan, np.float32)
        _portable("_matvec_q8_0_portable")(port, qs, d, x)
        _close(one, port.astype(np.float64), mag[0])


@pytest.mark.parametrize("path", ["emulate", "avx512-vnni", "avx-vnni", "avx2"])
@pytest.mark.parametrize("I", [288, 320])
def test_q8_0_rows_do_not_depend_on_the_blocking(path, I):
    """Rows taken eight, four or one at a time give the same bits (a row range from 1 or 2 shifts every row's
    place in the blocks; the one-row kernel, on a window of rows), into a strided output too, and extreme bytes
    (-128 and 127 weights, +-127 activations) stay exact."""
    if path != "emulate":
        _skip_unless(path)
    rng = np.random.default_rng(I)
    O = 37
    qs, d = _q8_weights(rng, O, I)
    qs[:4] = -128
    qs[4:8] = 127
    x = rng.standard_normal(I).astype(np.float32)
    x[::7] = np.sign(x[::7]) * 40.0  # groups whose largest element quantizes to +-127
    xq, dx = Q.quantize_token(x)
    runs = []
    for lo in (0, 1, 2):
        out = np.full(O, np.nan, np.float32)
        Q.TOKEN_ROWS[path](out, qs, d, xq, dx, False, lo, O)
        assert np.all(np.isnan(out[:lo])) and not np.any(np.isnan(out[lo:]))
        runs.append(out)
    np.testing.assert_array_equal(runs[1][1:], runs[0][1:])
    np.testing.assert_array_equal(runs[2][2:], runs[0][2:])
    one = np.full(O, np.nan, np.float32)  # a row at a time (AMD CPUs' decoder): the same bits
    Q.TOKEN_ROWS[path](one[:O - 3], qs[:O - 3], d[:O - 3], xq, dx, True, 1, O - 3)
    assert np.isnan(one[0]) and np.all(np.isnan(one[O - 3:]))
    np.testing.assert_array_equal(one[1:O - 3], runs[0][1:O - 3])
    strided = np.full((O, 2), np.nan, np.float32)
    Q.TOKEN_ROWS[path](strided[:, 0], qs, d, xq, dx, False, 0, O)
    np.testing.assert_array_equal(strided[:, 0], runs[0])
    assert np.all(np.isnan(strided[:, 1]))
    ref, mag = _q8_reference(_token(x), qs, d, None)
    _close(runs[0], ref[0], mag[0])
    # the layers' one-token product (parallel rows): either way the same bits, this CPU's way by default
    for way in (False, True, None):
        np.testing.assert_array_equal(Q.matvec_q8_0(np.empty(O, np.float32), qs, d, x, path=path, one=way), runs[0])


@pytest.mark.parametrize("O,I,N", SHAPES + [(9, 100, 2)])
def test_fast_bf16(O, I, N):
    _skip_unless("avx512-bf16")
    rng = np.random.default_rng(O + 2 * I + N)
    w16 = Q.emulate_round_bf16(rng.standard_normal((O, I)).astype(np.float32))
    x = rng.standard_normal((N, I)).astype(np.float32)
    ref, mag = _bf16_reference(x, w16, None)
    for n in range(N):
        one = np.full(O, np.nan, np.float32)
        Q.matvec_bf16(one, w16, x[n], path="avx512-bf16")
        _close(one, ref[n], mag[n])
        if I % 32 == 0:  # the portable kernel takes whole groups of 32 columns (the public wrappers refuse others)
            # float32 activations: apart by at most x against xh + xl (2^-16 relative)
            port = np.full(O, np.nan, np.float32)
            _portable("_matvec_bf16_portable")(port, w16, x[n])
            wf = np.abs((w16.astype(np.uint32) << 16).view(np.float32).astype(np.float64))
            assert np.all(np.abs(one.astype(np.float64) - port) <= 2.0**-16 * wf @ np.abs(x[n]))


def test_public_kernels_dispatch_to_a_chosen_path(monkeypatch):
    """The public quant kernels run the path ``_choose_path`` picks (here the emulated fast loops, which run on any
    CPU) and give the portable kernels' numbers; QORUS_PORTABLE forces the portable path."""
    from qorus_jit.kernels import quant

    rng = np.random.default_rng(7)
    w = rng.standard_normal((40, 96)).astype(np.float32)
    x = rng.standard_normal(96).astype(np.float32)
    xs = rng.standard_normal((5, 96)).astype(np.float32)
    qs, d = quant.quantize_q8_0(w)
    w16 = quant.quantize_bf16(w)

    def run():
        out = {"mq": np.empty(40, np.float32), "mb": np.empty(40, np.float32),
               "lq": np.empty((5, 40), np.float32), "lb": np.empty((5, 40), np.float32)}
        quant.matvec_q8_0(out["mq"], qs, d, x)
        quant.matvec_bf16(out["mb"], w16, x)
        quant.linear_q8_0(out["lq"], xs, qs, d, None)
        quant.linear_bf16(out["lb"], xs, w16, None)
        return out

    monkeypatch.setenv("QORUS_PORTABLE", "1")
    assert quant.kernel_paths() == {"q8_0": "portable", "bf16": "portable"}
    portable = run()
    monkeypatch.setattr(quant, "_choose_path", lambda kind: "emulate")
    quant._PATHS.clear()
    emulated = run()
    quant._PATHS.clear()
    scale = np.abs(w).sum(1) * np.abs(x).max() + 1
    for k in portable:  # the int8 paths quantize x per token: close, not equal, to the float32-activation ones
        np.testing.assert_allclose(emulated[k], portable[k], atol=5e-3 * scale.max(), err_msg=k)
