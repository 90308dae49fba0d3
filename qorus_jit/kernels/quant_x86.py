"""Fast instruction paths of the quantized matrix-vector and linear kernels: an int8 dot with ``vpdpbusd``
(AVX512-VNNI 512-bit, or AVX-VNNI 256-bit) for q8_0 weights and a bf16 dot with ``vdpbf16ps`` (AVX512_BF16).

The portable kernels live in :mod:`qorus_jit.kernels.quant`; these take the same arguments (trusted: the
wrappers there validate) and are reached through its dispatch point. The instructions are emitted as calls
to the LLVM x86 intrinsics from ``@intrinsic`` code generators. A CPU without them would fail to compile
the code (LLVM aborts the process) or fault on it, so nothing here compiles at import; :func:`available`
says which paths this CPU (and numba's target, see ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES``) can run, and
every entry point refuses a path that is not available. numba's cache keys each entry with the target CPU
name and features, so machine code cached on one CPU is never loaded on another.
``QORUS_PORTABLE=1`` makes :func:`available` report nothing.

**q8_0** (weights ``qs`` int8 (O, I), ``d`` float32 (O, I // 32)): the activations are quantized per token
in groups of 32 as the portable kernel does (``dx = max|x| * (1/127)``, ``xq = roundf(x / dx)``, float32
``dx``), so each group's dot is an exact int32 sum scaled by ``d * dx``. ``vpdpbusd acc, a, b`` adds to each
int32 lane the four products of *unsigned* bytes of ``a`` with *signed* bytes of ``b``; both operands here
are signed, so the weights get the offset: ``a = qs XOR 0x80 = qs + 128`` (exact as unsigned, for every
int8 including -128), ``b = xq``, and ``sum (qs + 128) xq = sum qs xq + 128 sum xq``. The correction
``-128 * sum xq`` depends on the activations alone: it is computed once per token for every four bytes
(``xc``) and is the accumulator's starting value, so each lane ends with the exact ``sum qs xq`` of its four
bytes (|lane| <= 4 * 128 * 127, so nothing wraps). One token (decoding: :func:`matvec_q8_0`, the one-call
decoder's rows ``TOKEN_ROWS``) takes llama.cpp's other form, :func:`emit_sign_dot`: ``|qs|`` unsigned against
``xq`` with the sign of ``qs`` (``vpsignb``, at 512 bits a masked subtract), no correction needed; the
"avx2" path runs it with ``vpmaddubsw`` + ``vpmaddwd`` (not chosen by default: measured no faster here). Each
64-byte step (two groups) converts its 16 lanes to float32 and adds them times ``d * dx`` of their group
(lanes 0-7 and 8-15) into a float32 vector; a row's odd last group is a scalar int32 sum.
:func:`emulate_linear_q8_0` is the same arithmetic in NumPy.

**bf16** (``w16`` uint16 (O, I)): ``vdpbf16ps acc, a, b`` adds to each float32 lane ``a[2i+1] b[2i+1]`` then
``a[2i] b[2i]`` (products of two bf16 are exact in float32; the instruction flushes denormals). Its operands
are bf16, so each float32 activation is split once per token into two bf16 numbers, ``xh = bf16(x)`` and
``xl = bf16(x - xh)`` (round to nearest even; ``xh + xl`` is x to about 2^-17 relative, where ``xh`` alone
would be 2^-9): each weight vector, loaded once, meets both in two instructions accumulating into two
float32 vectors (decode reads weights from memory, so the second instruction costs no time there), summed
at the end of the row. The last ``I % 32`` columns are a scalar sum.

The float32 lanes are summed in a fixed tree at the end of a row, so results do not depend on threads.
``path="emulate"`` runs the same loops with each instruction replaced by plain LLVM IR of its arithmetic:
it runs on any x86 CPU, so the tests check the loops here even where the instructions are missing.

Intrinsic signatures (LLVM 22, llvmlite 0.50; docs/design.md, "Instruction paths of the quantized
kernels"): ``<16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32>, <64 x i8>, <64 x i8>)`` (``.256``:
``<8 x i32>``, ``<32 x i8>``; LLVM 21 and older took ``<16 x i32>`` operands) and ``<16 x float>
@llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)``. tests/test_quant_x86.py
compiles every kernel for a Sapphire Rapids (and an Alder Lake) target on any machine and checks the
instructions in the assembly.
"""

from __future__ import annotations

import os

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from qorus_jit.core.numerics import FASTMATH, for_chunks, for_rows, kernel
from qorus_jit.kernels._lowbit import GROUP, _hsum, _prefetch, _quantize_x_q8
from qorus_jit.kernels._math import _float32_from_bits, roundf

_TOKENS = 16  # tokens per block in the linear kernels (their quantized rows stay in L1/L2 over a row chunk)
_ROWS = 16  # weight rows per parallel work item

# ---------------------------------------------------------------------------------------------------
# which paths this CPU runs

_NEEDS = {
    "avx512-vnni": ("avx512f", "avx512bw", "avx512vnni"),
    "avx-vnni": ("avx2", "avxvnni"),
    "avx2": ("avx2",),
    "avx512-bf16": ("avx512f", "avx512bw", "avx512bf16"),
}
_Q8_0_PATHS = ("avx512-vnni", "avx-vnni", "avx2")  # fastest first
# The default skips "avx2": on the AMD EPYC (Zen 1: one 128-bit vector multiplier) its vpmaddubsw dot ran at
# 0.97-1.03x the portable vpmaddwd one, 1.00-1.06x end to end (docs/design.md); untried where it may pay.
_DEFAULT_Q8_0 = ("avx512-vnni", "avx-vnni")
_have: set[str] | None = None  # the features below, found once
_runs: dict[str, bool] | None = None  # available() without QORUS_PORTABLE, found once


def _host_features() -> set[str]:
    """The features LLVM reads off this CPU (none where it cannot read them: no fast path)."""
    try:
        return {k for k, v in llvm.get_host_cpu_features().items() if v}
    except RuntimeError:
        return set()


def _target_features() -> set[str] | None:
    """The features of numba's explicit target (``NUMBA_CPU_FEATURES``, e.g. with ``NUMBA_CPU_NAME=generic``),
    or None when numba compiles for this CPU."""
    if numba.config.CPU_FEATURES is None:
        return None
    return {f[1:] for f in numba.config.CPU_FEATURES.split(",") if f.startswith("+")}


def _features() -> set[str]:
    """Features both the CPU and numba's target have (``NUMBA_CPU_FEATURES`` may turn some off)."""
    global _have
    if _have is None:
        target = _target_features()
        _have = _host_features() if target is None else _host_features() & target
    return _have


def available() -> dict[str, bool]:
    """{"avx512-vnni", "avx-vnni", "avx2", "avx512-bf16": whether this CPU runs that path}; all False if
    ``QORUS_PORTABLE=1``."""
    global _runs
    if os.environ.get("QORUS_PORTABLE", "") not in ("", "0"):
        return dict.fromkeys(_NEEDS, False)
    if _runs is None:
        _runs = {name: all(f in _features() for f in needs) for name, needs in _NEEDS.items()}
    return dict(_runs)


def best_paths() -> dict[str, str | None]:
    """{"q8_0": "avx512-vnni" | "avx-vnni" | None, "bf16": "avx512-bf16" | None}: the fastest path here ("avx2" is
    never the default, see ``_DEFAULT_Q8_0``)."""
    a = available()
    q8 = next((p for p in _DEFAULT_Q8_0 if a[p]), None)
    return {"q8_0": q8, "bf16": "avx512-bf16" if a["avx512-bf16"] else None}


def cpu_path(kind: str) -> str | None:
    """The fastest ``kind`` ("q8_0" or "bf16") path of numba's target CPU (for q8_0 "avx2" included;
    ``QORUS_PORTABLE`` aside): the dot that compiled code given the x86 activations (the one-call decoder's: int8
    for q8_0, bf16 bits for bf16) picks while it is typed. The target's features alone decide
    (``NUMBA_CPU_FEATURES`` if set, else this CPU's), as they key numba's cache of that code."""
    target = _target_features()
    target = _host_features() if target is None else target
    paths = _Q8_0_PATHS if kind == "q8_0" else ("avx512-bf16",)
    return next((p for p in paths if all(f in target for f in _NEEDS[p])), None)


def _require(path: str, kind: str) -> str:
    """The path to run: ``path`` if given (``"emulate"`` runs anywhere), else the best one; refuses a missing one."""
    choices = _Q8_0_PATHS if kind == "q8_0" else ("avx512-bf16",)
    if path is None:
        path = best_paths()[kind]
        if path is None:
            raise RuntimeError(f"no fast {kind} path on this CPU (QORUS_PORTABLE or missing features): "
                               f"use the portable kernels in qorus_jit.kernels.quant")
    elif path != "emulate":
        if path not in choices:
            raise ValueError(f"path: expected one of {choices + ('emulate',)} or None, got {path!r}")
        if not available()[path]:
            missing = [f for f in _NEEDS[path] if f not in _features()]
            why = f"the CPU lacks {', '.join(missing)}" if missing else "QORUS_PORTABLE is set"
            raise RuntimeError(f"path: {path!r} cannot run here ({why})")
    return path


# ---------------------------------------------------------------------------------------------------
# LLVM IR of the two instructions (and of their arithmetic, for the emulated path)

_LLVM = llvm.llvm_version_info
_I8, _I16, _I32, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()


class _BFloat(ir.types._BaseFloatType):
    """LLVM's ``bfloat`` (llvmlite.ir has no such type); used only as the element of bitcast vectors."""

    null = "0.0"
    intrinsic_name = "bf16"

    def __str__(self):
        return "bfloat"

    def format_constant(self, value):
        raise NotImplementedError("bfloat constants")


_BFloat._create_instance()


def _vec(t, n):
    return ir.VectorType(t, n)


def _mask(idx):
    return ir.Constant(_vec(_I32, len(idx)), list(idx))


def emit_dpbusd(builder, acc, a, b, emulate=False):
    """``acc[i] + sum_{k<4} u8(a[4i+k]) * s8(b[4i+k])`` (``vpdpbusd``, no saturation).

    acc <L x i32>; a (read unsigned) and b (read signed) <4L x i8>."""
    n = acc.type.count
    if emulate:
        p = builder.mul(builder.zext(a, _vec(_I32, 4 * n)), builder.sext(b, _vec(_I32, 4 * n)))
        for k in range(4):
            acc = builder.add(acc, builder.shuffle_vector(p, p, _mask(range(k, 4 * n, 4))))
        return acc
    if _LLVM < (22,):  # before LLVM 22 the byte operands were typed <L x i32>
        a, b = builder.bitcast(a, acc.type), builder.bitcast(b, acc.type)
    fnty = ir.FunctionType(acc.type, [acc.type, a.type, b.type])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.x86.avx512.vpdpbusd.{32 * n}")
    return builder.call(fn, [acc, a, b])


def emit_sign_dot(builder, acc, w, x, path):
    """``acc[i] + sum_{k<4} w[4i+k] * x[4i+k]``, both read signed (|x| <= 127), as llama.cpp does it: ``|w|`` read
    unsigned (128 for -128) against ``x`` with the sign of ``w`` (``vpsignb``; a select at 512 bits, which has
    no ``vpsignb``), so each product is exact and no correction is needed.

    ``path``: "avx512-vnni" / "avx-vnni" (``vpdpbusd``), "avx2" (``vpmaddubsw``, whose int16 pair sums are at
    most 2 * 128 * 127 < 2^15 so never saturate, then ``vpmaddwd`` by ones into the same int32 lanes) or
    "emulate" (plain IR). acc <L x i32>; w, x <4L x i8>."""
    n = w.type.count
    zero = ir.Constant(w.type, None)
    neg = builder.icmp_signed("<", w, zero)
    a = builder.select(neg, builder.sub(zero, w), w)  # LLVM's vpabsb
    if n == 32 and path != "emulate":
        psign = cgutils.get_or_insert_function(builder.module, ir.FunctionType(w.type, [w.type, w.type]),
                                               "llvm.x86.avx2.psign.b")
        b = builder.call(psign, [x, w])
    else:
        b = builder.select(neg, builder.sub(zero, x), x)
    if path != "avx2":
        return emit_dpbusd(builder, acc, a, b, emulate=path == "emulate")
    v16 = _vec(_I16, 16)
    mubs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [w.type, w.type]),
                                          "llvm.x86.avx2.pmadd.ub.sw")
    mwd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(acc.type, [v16, v16]),
                                         "llvm.x86.avx2.pmadd.wd")
    pairs = builder.call(mubs, [a, b])
    return builder.add(acc, builder.call(mwd, [pairs, ir.Constant(v16, [1] * 16)]))


def emit_dpbf16ps(builder, acc, a, b, emulate=False):
    """``acc[i] + a[2i+1] b[2i+1] + a[2i] b[2i]``, added in that order (``vdpbf16ps``).

    acc <L x float>; a, b <2L x i16> (bf16 bits)."""
    n = acc.type.count
    if emulate:
        def f32(v):
            wide = builder.zext(v, _vec(_I32, 2 * n))
            return builder.bitcast(builder.shl(wide, ir.Constant(wide.type, [16] * (2 * n))), _vec(_F32, 2 * n))

        p = builder.fmul(f32(a), f32(b))  # exact: 8-bit by 8-bit significands
        acc = builder.fadd(acc, builder.shuffle_vector(p, p, _mask(range(1, 2 * n, 2))))
        return builder.fadd(acc, builder.shuffle_vector(p, p, _mask(range(0, 2 * n, 2))))
    ety = _vec(_BFloat(), 2 * n) if _LLVM >= (17,) else _vec(_I32, n)
    a, b = builder.bitcast(a, ety), builder.bitcast(b, ety)
    fnty = ir.FunctionType(acc.type, [acc.type, ety, ety])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.x86.avx512bf16.dpbf16ps.{32 * n}")
    return builder.call(fn, [acc, a, b])


def _load(builder, base, off, vty):
    """An unaligned load of ``vty`` at element offset ``off`` of ``base``."""
    return builder.load(builder.bitcast(builder.gep(base, [off]), vty.as_pointer()), align=1)


def _data(context, builder, aty, arr):
    return context.make_array(aty)(context, builder, arr).data


def _loop(builder, steps, body, init):
    """Run ``acc = body(i, acc)`` for i < steps from ``init`` (in an alloca slot); returns the final value."""
    slot = cgutils.alloca_once(builder, init.type)
    builder.store(init, slot)
    with cgutils.for_range(builder, steps) as loop:
        builder.store(body(loop.index, builder.load(slot)), slot)
    return builder.load(slot)


def _make_dot_q8_0(nbytes, emulate):
    """An intrinsic ``dot(qs, w_off, xq, xq_off, xc, d, d_off, dx, dx_off, steps) -> float32``: the first
    ``steps * nbytes`` columns of a q8_0 row (qs at ``w_off``, scales d at ``d_off``) against one quantized
    token (xq at ``xq_off``, its corrections xc at ``xq_off // 4``, scales dx at ``dx_off``)."""
    lanes, gps = nbytes // 4, nbytes // GROUP  # int32 lanes, groups per step
    bvec, ivec, fvec, svec = _vec(_I8, nbytes), _vec(_I32, lanes), _vec(_F32, lanes), _vec(_F32, gps)
    spread = _mask([k // 8 for k in range(lanes)])  # group scale -> its 8 lanes

    @intrinsic
    def dot(typingctx, qs, w_off, xq, xq_off, xc, d, d_off, dx, dx_off, steps):
        def codegen(context, builder, sig, args):
            qs_, w_off, xq_, xq_off, xc_, d_, d_off, dx_, dx_off, steps = args
            wp, xp, cp, dp, sp = (_data(context, builder, sig.args[i], args[i]) for i in (0, 2, 4, 5, 7))
            flip = ir.Constant(bvec, [0x80] * nbytes)
            i64 = w_off.type

            def body(i, acc):
                w = _load(builder, wp, builder.add(w_off, builder.mul(i, ir.Constant(i64, nbytes))), bvec)
                a = _load(builder, xp, builder.add(xq_off, builder.mul(i, ir.Constant(i64, nbytes))), bvec)
                c = _load(builder, cp, builder.add(builder.sdiv(xq_off, ir.Constant(i64, 4)),
                                                   builder.mul(i, ir.Constant(i64, lanes))), ivec)
                s = emit_dpbusd(builder, c, builder.xor(w, flip), a, emulate)  # exact sum qs * xq per lane
                g = builder.mul(i, ir.Constant(i64, gps))
                sc = builder.fmul(_load(builder, dp, builder.add(d_off, g), svec),
                                  _load(builder, sp, builder.add(dx_off, g), svec))  # d * dx per group
                return builder.fadd(acc, builder.fmul(builder.sitofp(s, fvec), builder.shuffle_vector(sc, sc, spread)))

            return _hsum(builder, _loop(builder, steps, body, ir.Constant(fvec, None)))

        i64 = types.int64
        return types.float32(qs, i64, xq, i64, xc, d, i64, dx, i64, i64), codegen

    return dot


def _make_dot_q8_0_signed(nbytes, path):
    """An intrinsic ``dot(qs, w_off, xq, d, d_off, dx, G) -> float32``: a q8_0 row of G groups (qs at ``w_off``,
    scales d at ``d_off``) against one quantized token (xq (I,) int8, dx (G,)), by :func:`emit_sign_dot` on
    ``path``. 64-byte steps (two groups in 16 lanes, as :func:`_make_dot_q8_0`'s, so the same sums in the same
    order) leave an odd last group to the caller; 32-byte steps go two groups at a time into two accumulators
    (one would wait on the FMA's latency every group) and take an odd last group themselves. Every 64 bytes of
    weights are prefetched ``_lowbit._PREFETCH`` bytes ahead."""
    lanes = nbytes // 4
    bvec, ivec, fvec = _vec(_I8, nbytes), _vec(_I32, lanes), _vec(_F32, lanes)
    spread = _mask([k // 8 for k in range(lanes)])
    per = nbytes // GROUP  # groups a vector step

    @intrinsic
    def dot(typingctx, qs, w_off, xq, d, d_off, dx, G):
        def codegen(context, builder, sig, args):
            qs_, w_off, xq_, d_, d_off, dx_, G = args
            wp, xp, dp, sp = (_data(context, builder, sig.args[i], args[i]) for i in (0, 2, 3, 5))
            i64 = w_off.type

            def step(g, acc, prefetch):
                """acc + float32(the dot of groups g .. g + per - 1) * d * dx, lane by lane."""
                k = builder.mul(g, ir.Constant(i64, GROUP))
                wptr = builder.gep(wp, [builder.add(w_off, k)])
                if prefetch:
                    _prefetch(builder, wptr)
                w = builder.load(builder.bitcast(wptr, bvec.as_pointer()), align=1)
                s = emit_sign_dot(builder, ir.Constant(ivec, None), w, _load(builder, xp, k, bvec), path)
                svec = _vec(_F32, per)
                sc = builder.fmul(_load(builder, dp, builder.add(d_off, g), svec), _load(builder, sp, g, svec))
                return builder.fadd(acc, builder.fmul(builder.sitofp(s, fvec), builder.shuffle_vector(sc, sc, spread)))

            zero = ir.Constant(fvec, None)
            if per == 2:
                return _hsum(builder, _loop(builder, builder.udiv(G, ir.Constant(i64, 2)),
                                            lambda i, acc: step(builder.mul(i, ir.Constant(i64, 2)), acc, True), zero))
            pair = ir.LiteralStructType([fvec, fvec])

            def body(i, acc):
                g = builder.mul(i, ir.Constant(i64, 2))
                a0 = step(g, builder.extract_value(acc, 0), True)
                a1 = step(builder.add(g, ir.Constant(i64, 1)), builder.extract_value(acc, 1), False)
                return builder.insert_value(builder.insert_value(acc, a0, 0), a1, 1)

            acc = _loop(builder, builder.udiv(G, ir.Constant(i64, 2)), body, ir.Constant(pair, None))
            slot = cgutils.alloca_once_value(builder, builder.extract_value(acc, 0))
            odd = builder.icmp_unsigned("!=", builder.urem(G, ir.Constant(i64, 2)), ir.Constant(i64, 0))
            with builder.if_then(odd):
                builder.store(step(builder.sub(G, ir.Constant(i64, 1)), builder.load(slot), False), slot)
            return _hsum(builder, builder.fadd(builder.load(slot), builder.extract_value(acc, 1)))

        i64 = types.int64
        return types.float32(qs, i64, xq, d, i64, dx, i64), codegen

    return dot


def _make_dot_bf16(lanes, emulate):
    """An intrinsic ``dot(w16, w_off, xh, xl, x_off, steps) -> float32``: the first ``steps * 2 * lanes``
    columns of a bf16 row at ``w_off`` against a token split into two bf16 parts (xh, xl at ``x_off``)."""
    hvec, fvec = _vec(_I16, 2 * lanes), _vec(_F32, lanes)

    @intrinsic
    def dot(typingctx, w16, w_off, xh, xl, x_off, steps):
        def codegen(context, builder, sig, args):
            w16_, w_off, xh_, xl_, x_off, steps = args
            wp, hp, lp = (_data(context, builder, sig.args[i], args[i]) for i in (0, 2, 3))
            step = ir.Constant(w_off.type, 2 * lanes)
            pair = ir.LiteralStructType([fvec, fvec])

            def body(i, acc):
                k = builder.mul(i, step)
                w = _load(builder, wp, builder.add(w_off, k), hvec)
                hi = emit_dpbf16ps(builder, builder.extract_value(acc, 0), w,
                                   _load(builder, hp, builder.add(x_off, k), hvec), emulate)
                lo = emit_dpbf16ps(builder, builder.extract_value(acc, 1), w,
                                   _load(builder, lp, builder.add(x_off, k), hvec), emulate)
                return builder.insert_value(builder.insert_value(acc, hi, 0), lo, 1)

            acc = _loop(builder, steps, body, ir.Constant(pair, None))
            return _hsum(builder, builder.fadd(builder.extract_value(acc, 0), builder.extract_value(acc, 1)))

        i64 = types.int64
        return types.float32(w16, i64, xh, xl, i64, i64), codegen

    return dot


_dot_q8_0_512 = _make_dot_q8_0(64, False)
_dot_q8_0_256 = _make_dot_q8_0(32, False)
_dot_q8_0_emu = _make_dot_q8_0(64, True)
_dot_q8_0_signed = {"avx512-vnni": _make_dot_q8_0_signed(64, "avx512-vnni"),
                    "avx-vnni": _make_dot_q8_0_signed(32, "avx-vnni"),
                    "avx2": _make_dot_q8_0_signed(32, "avx2"), "emulate": _make_dot_q8_0_signed(64, "emulate")}
_dot_bf16_512 = _make_dot_bf16(16, False)
_dot_bf16_emu = _make_dot_bf16(16, True)

# ---------------------------------------------------------------------------------------------------
# activations (plain code: runs on every CPU)


@intrinsic
def _bits_of_float32(typingctx, f):
    """The bits of a float32 as a uint32."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _I32)

    return types.uint32(types.float32), codegen


@kernel
def _quantized_token(x):
    """(xq int8 (I,), dx float32 (I // 32,)) of one token x (I,), new arrays (:func:`quantize_token`)."""
    xq, dx = np.empty(x.shape[0], np.int8), np.empty(x.shape[0] // GROUP, np.float32)
    _quantize_x_q8(xq, dx, x)
    return xq, dx


@kernel
def _quantize_tokens(x, xq, xc, dx):
    """Per token n and group g of 32: dx[n, g] = max|x| * (1/127), xq = roundf(x / dx) (0 where dx == 0), and
    xc[n, j] = -128 * (xq[n, 4j] + ... + xq[n, 4j + 3]) (the vpdpbusd offset correction); x (N, I) float32."""
    for n in range(x.shape[0]):
        for g in range(x.shape[1] // GROUP):
            o = g * GROUP
            amax = np.float32(0.0)
            for k in range(GROUP):
                amax = max(amax, abs(x[n, o + k]))
            dg = amax * np.float32(1 / 127)
            inv = np.float32(1.0) / dg if dg > 0 else np.float32(0.0)
            dx[n, g] = dg
            for k in range(GROUP):
                xq[n, o + k] = np.int8(roundf(x[n, o + k] * inv))
            for j in range(GROUP // 4):
                b = o + 4 * j
                q4 = np.int32(xq[n, b]) + np.int32(xq[n, b + 1]) + np.int32(xq[n, b + 2]) + np.int32(xq[n, b + 3])
                xc[n, b // 4] = -128 * q4


@kernel
def _bf16_bits(f):
    """The bf16 bits of float32 f rounded to nearest even (a NaN stays a quiet NaN)."""
    b = _bits_of_float32(f)
    if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((b >> np.uint32(16)) | np.uint32(0x40))
    return np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@kernel
def _split_bf16(x, xh, xl):
    """xh = bf16(x), xl = bf16(x - xh) (bits, round to nearest even); x (N, I) float32, xh, xl (N, I) uint16."""
    for n in range(x.shape[0]):
        for i in range(x.shape[1]):
            h = _bf16_bits(x[n, i])
            xh[n, i] = h
            xl[n, i] = _bf16_bits(x[n, i] - _float32_from_bits(np.int32(h) << np.int32(16)))


def quantize_tokens(x: np.ndarray):
    """(xq int8 (N, I), xc int32 (N, I // 4), dx float32 (N, I // 32)) of x (N, I) float32: the activations of
    the q8_0 fast path."""
    N, I = x.shape
    xq, xc, dx = np.empty((N, I), np.int8), np.empty((N, I // 4), np.int32), np.empty((N, I // GROUP), np.float32)
    _quantize_tokens(x, xq, xc, dx)
    return xq, xc, dx


def quantize_token(x: np.ndarray):
    """(xq int8 (I,), dx float32 (I // 32,)) of one token x (I,) float32: the activations of the signed dot (no
    corrections needed)."""
    return _quantized_token(x)


def split_bf16(x: np.ndarray):
    """(xh, xl) bf16 bits (uint16 (N, I)) of x (N, I) float32: xh = bf16(x), xl = bf16(x - xh), the activations
    of the bf16 fast path."""
    xh, xl = np.empty(x.shape, np.uint16), np.empty(x.shape, np.uint16)
    _split_bf16(x, xh, xl)
    return xh, xl


# ---------------------------------------------------------------------------------------------------
# row kernels, one per path (a kernel is compiled only when first called, so only on a CPU that has its path)


@kernel
def _q8_0_tail(qs, d, xq, dx, o, g0):
    """sum over groups g >= g0 of d[o, g] dx[g] (qs[o] . xq over group g), one token's xq (I,), dx (G,): the groups a
    vector step left."""
    s = np.float32(0.0)
    for g in range(g0, d.shape[1]):
        acc = np.int32(0)
        for k in range(g * GROUP, (g + 1) * GROUP):
            acc += np.int32(qs[o, k]) * np.int32(xq[k])
        s += np.float32(acc) * (d[o, g] * dx[g])
    return s


@kernel
def _bf16_tail(w16, xh, xl, o, n, i0):
    """sum over columns i >= i0 of w16[o, i] (xh[n, i] + xl[n, i]), all bf16 bits."""
    s = np.float32(0.0)
    for i in range(i0, w16.shape[1]):
        wi = _float32_from_bits(np.int32(w16[o, i]) << np.int32(16))
        s += wi * _float32_from_bits(np.int32(xh[n, i]) << np.int32(16))
        s += wi * _float32_from_bits(np.int32(xl[n, i]) << np.int32(16))
    return s


@kernel
def _bias_of(bias, o):
    return bias[o] if bias.shape[0] > 0 else np.float32(0.0)


@kernel
def _q8_0_rows_512(out, qs, d, xq, xc, dx, bias, lo, hi):
    """out[n, o] = qs/d row o . token n (+ bias[o]) for lo <= o < hi and every token n (blocks of _TOKENS)."""
    N, I, G = xq.shape[0], qs.shape[1], d.shape[1]
    steps = G // 2
    for n0 in range(0, N, _TOKENS):
        for o in range(lo, hi):
            b = _bias_of(bias, o)
            for n in range(n0, min(N, n0 + _TOKENS)):
                s = _dot_q8_0_512(qs, o * I, xq, n * I, xc, d, o * G, dx, n * G, steps)
                out[n, o] = s + _q8_0_tail(qs, d, xq[n], dx[n], o, 2 * steps) + b


@kernel
def _q8_0_rows_256(out, qs, d, xq, xc, dx, bias, lo, hi):
    """:func:`_q8_0_rows_512` with 256-bit steps (AVX-VNNI)."""
    N, I, G = xq.shape[0], qs.shape[1], d.shape[1]
    for n0 in range(0, N, _TOKENS):
        for o in range(lo, hi):
            b = _bias_of(bias, o)
            for n in range(n0, min(N, n0 + _TOKENS)):
                out[n, o] = _dot_q8_0_256(qs, o * I, xq, n * I, xc, d, o * G, dx, n * G, G) + b


@kernel
def _q8_0_rows_emu(out, qs, d, xq, xc, dx, bias, lo, hi):
    """:func:`_q8_0_rows_512` with the instruction emulated in plain IR (runs on any CPU)."""
    N, I, G = xq.shape[0], qs.shape[1], d.shape[1]
    steps = G // 2
    for n0 in range(0, N, _TOKENS):
        for o in range(lo, hi):
            b = _bias_of(bias, o)
            for n in range(n0, min(N, n0 + _TOKENS)):
                s = _dot_q8_0_emu(qs, o * I, xq, n * I, xc, d, o * G, dx, n * G, steps)
                out[n, o] = s + _q8_0_tail(qs, d, xq[n], dx[n], o, 2 * steps) + b


def _token_rows(out, qs, d, xq, dx, lo, hi, path):
    """out[o] = qs/d row o . one token (xq (I,) int8, dx (G,) float32, as :func:`quantize_token` makes them) for
    lo <= o < hi, by the signed dot of ``path`` (a constant string, so each path compiles its own loop)."""


@overload(_token_rows, jit_options={"fastmath": set(FASTMATH)})
def _token_rows_impl(out, qs, d, xq, dx, lo, hi, path):
    if not isinstance(path, types.StringLiteral):
        raise TypingError("_token_rows: path must be a constant string")
    dot = _dot_q8_0_signed[path.literal_value]
    wide = path.literal_value in ("avx512-vnni", "emulate")  # 64-byte steps: an odd last group is left here

    def rows(out, qs, d, xq, dx, lo, hi, path):
        I, G = qs.shape[1], d.shape[1]
        for o in range(lo, hi):
            s = dot(qs, o * I, xq, d, o * G, dx, G)
            if wide and G % 2:
                s += _q8_0_tail(qs, d, xq, dx, o, G - 1)
            out[o] = s
    return rows


@kernel
def _token_rows_512(out, qs, d, xq, dx, lo, hi):
    _token_rows(out, qs, d, xq, dx, lo, hi, "avx512-vnni")


@kernel
def _token_rows_vnni256(out, qs, d, xq, dx, lo, hi):
    _token_rows(out, qs, d, xq, dx, lo, hi, "avx-vnni")


@kernel
def _token_rows_avx2(out, qs, d, xq, dx, lo, hi):
    _token_rows(out, qs, d, xq, dx, lo, hi, "avx2")


@kernel
def _token_rows_emu(out, qs, d, xq, dx, lo, hi):
    _token_rows(out, qs, d, xq, dx, lo, hi, "emulate")


#: The serial row kernel of one token (decoding) of each q8_0 path: ``rows(out, qs, d, xq, dx, lo, hi)``.
TOKEN_ROWS = {"avx512-vnni": _token_rows_512, "avx-vnni": _token_rows_vnni256, "avx2": _token_rows_avx2,
              "emulate": _token_rows_emu}


def _bf16_token_rows(out, w16, xh, xl, lo, hi, path):
    """out[o] = w16 row o . one token (xh + xl: bf16 bits (I,), as :func:`split_bf16` makes them) for
    lo <= o < hi, by ``vdpbf16ps`` on ``path`` ("avx512-bf16" or "emulate", a constant string)."""


@overload(_bf16_token_rows, jit_options={"fastmath": set(FASTMATH)})
def _bf16_token_rows_impl(out, w16, xh, xl, lo, hi, path):
    if not isinstance(path, types.StringLiteral):
        raise TypingError("_bf16_token_rows: path must be a constant string")
    dot = {"avx512-bf16": _dot_bf16_512, "emulate": _dot_bf16_emu}[path.literal_value]

    def rows(out, w16, xh, xl, lo, hi, path):
        I = w16.shape[1]
        steps = I // 32
        h, lw = xh.reshape(1, I), xl.reshape(1, I)  # the token as a batch of one, as the tail takes it
        for o in range(lo, hi):
            out[o] = dot(w16, o * I, xh, xl, 0, steps) + _bf16_tail(w16, h, lw, o, 0, 32 * steps)
    return rows


@kernel
def _bf16_token_rows_512(out, w16, xh, xl, lo, hi):
    _bf16_token_rows(out, w16, xh, xl, lo, hi, "avx512-bf16")


@kernel
def _bf16_token_rows_emu(out, w16, xh, xl, lo, hi):
    _bf16_token_rows(out, w16, xh, xl, lo, hi, "emulate")


#: The serial row kernel of one token of each bf16 path: ``rows(out, w16, xh, xl, lo, hi)``.
TOKEN_ROWS_BF16 = {"avx512-bf16": _bf16_token_rows_512, "emulate": _bf16_token_rows_emu}


@kernel
def _bf16_rows_512(out, w16, xh, xl, bias, lo, hi):
    """out[n, o] = w16 row o . token n (xh + xl) (+ bias[o]) for lo <= o < hi and every token n (blocks of
    _TOKENS)."""
    N, I = xh.shape
    steps = I // 32
    for n0 in range(0, N, _TOKENS):
        for o in range(lo, hi):
            b = _bias_of(bias, o)
            for n in range(n0, min(N, n0 + _TOKENS)):
                s = _dot_bf16_512(w16, o * I, xh, xl, n * I, steps)
                out[n, o] = s + _bf16_tail(w16, xh, xl, o, n, 32 * steps) + b


@kernel
def _bf16_rows_emu(out, w16, xh, xl, bias, lo, hi):
    """:func:`_bf16_rows_512` with the instruction emulated in plain IR (runs on any CPU)."""
    N, I = xh.shape
    steps = I // 32
    for n0 in range(0, N, _TOKENS):
        for o in range(lo, hi):
            b = _bias_of(bias, o)
            for n in range(n0, min(N, n0 + _TOKENS)):
                s = _dot_bf16_emu(w16, o * I, xh, xl, n * I, steps)
                out[n, o] = s + _bf16_tail(w16, xh, xl, o, n, 32 * steps) + b


@kernel(parallel=True)
def _q8_0_512(out, x, qs, d, bias):
    N, I = x.shape
    xq, xc, dx = np.empty((N, I), np.int8), np.empty((N, I // 4), np.int32), np.empty((N, I // GROUP), np.float32)
    _quantize_tokens(x, xq, xc, dx)
    for_chunks(_q8_0_rows_512, (out, qs, d, xq, xc, dx, bias), qs.shape[0], _ROWS, x.size * qs.shape[0])


@kernel(parallel=True)
def _q8_0_256(out, x, qs, d, bias):
    N, I = x.shape
    xq, xc, dx = np.empty((N, I), np.int8), np.empty((N, I // 4), np.int32), np.empty((N, I // GROUP), np.float32)
    _quantize_tokens(x, xq, xc, dx)
    for_chunks(_q8_0_rows_256, (out, qs, d, xq, xc, dx, bias), qs.shape[0], _ROWS, x.size * qs.shape[0])


@kernel(parallel=True)
def _q8_0_emu(out, x, qs, d, bias):
    N, I = x.shape
    xq, xc, dx = np.empty((N, I), np.int8), np.empty((N, I // 4), np.int32), np.empty((N, I // GROUP), np.float32)
    _quantize_tokens(x, xq, xc, dx)
    for_chunks(_q8_0_rows_emu, (out, qs, d, xq, xc, dx, bias), qs.shape[0], _ROWS, x.size * qs.shape[0])


# One entry kernel a path: a CPU must compile only the instructions it has, so each path's code lives in its own
# kernel; one kernel taking the path as a string (numba.literally) cost 9.5 ms a call from Python.
@kernel(parallel=True)
def _q8_0_token_512(out, x, qs, d):
    xq, dx = _quantized_token(x)
    for_rows(_token_rows_512, (out, qs, d, xq, dx), qs.shape[0], qs.size)


@kernel(parallel=True)
def _q8_0_token_vnni256(out, x, qs, d):
    xq, dx = _quantized_token(x)
    for_rows(_token_rows_vnni256, (out, qs, d, xq, dx), qs.shape[0], qs.size)


@kernel(parallel=True)
def _q8_0_token_avx2(out, x, qs, d):
    xq, dx = _quantized_token(x)
    for_rows(_token_rows_avx2, (out, qs, d, xq, dx), qs.shape[0], qs.size)


@kernel(parallel=True)
def _q8_0_token_emu(out, x, qs, d):
    xq, dx = _quantized_token(x)
    for_rows(_token_rows_emu, (out, qs, d, xq, dx), qs.shape[0], qs.size)


@kernel(parallel=True)
def _bf16_512(out, x, w16, bias):
    xh, xl = np.empty(x.shape, np.uint16), np.empty(x.shape, np.uint16)
    _split_bf16(x, xh, xl)
    for_chunks(_bf16_rows_512, (out, w16, xh, xl, bias), w16.shape[0], _ROWS, x.size * w16.shape[0])


@kernel(parallel=True)
def _bf16_emu(out, x, w16, bias):
    xh, xl = np.empty(x.shape, np.uint16), np.empty(x.shape, np.uint16)
    _split_bf16(x, xh, xl)
    for_chunks(_bf16_rows_emu, (out, w16, xh, xl, bias), w16.shape[0], _ROWS, x.size * w16.shape[0])


_Q8_0 = {"avx512-vnni": _q8_0_512, "avx-vnni": _q8_0_256, "emulate": _q8_0_emu}
_TOKEN = {"avx512-vnni": _q8_0_token_512, "avx-vnni": _q8_0_token_vnni256, "avx2": _q8_0_token_avx2,
          "emulate": _q8_0_token_emu}
_BF16 = {"avx512-bf16": _bf16_512, "emulate": _bf16_emu}
_NO_BIAS = np.zeros(0, np.float32)

# ---------------------------------------------------------------------------------------------------
# entry points (the signatures of kernels.quant; arguments trusted)


def linear_q8_0(out, x, qs, d, bias, *, path=None):
    """out (N, O) = x (N, I) @ W.T + bias, W = qs (O, I) int8 times d (O, I // 32) per group; bias (O,) or None.

    ``path``: None (the best here), "avx512-vnni", "avx-vnni" or "emulate" (the same loop in plain IR). "avx2" has
    no kernel of several tokens (``vpmaddubsw`` gains little over the portable float32 tiles there): refused."""
    path = _require(path, "q8_0")
    if path not in _Q8_0:
        raise ValueError(f"path: {path!r} has no linear kernel (the portable kernels serve several tokens)")
    _Q8_0[path](out, x, qs, d, _NO_BIAS if bias is None else bias)
    return out


def matvec_q8_0(out, qs, d, x, *, path=None):
    """out (O,) = W x for q8_0 weights (qs, d) and x (I,) float32 (one token, decoding) by the signed dot
    (:func:`emit_sign_dot`).

    ``path``: None (the best here), "avx512-vnni", "avx-vnni", "avx2" or "emulate" (the 512-bit loop in plain IR:
    the same sums in the same order as :func:`linear_q8_0`'s)."""
    _TOKEN[_require(path, "q8_0")](out, x, qs, d)
    return out


def linear_bf16(out, x, w16, bias, *, path=None):
    """out (N, O) = x (N, I) @ W.T + bias, W = the bf16 bits w16 (O, I); x split into two bf16 parts; bias (O,)
    or None.

    ``path``: None (the best here), "avx512-bf16" or "emulate" (the same loop in plain IR)."""
    _BF16[_require(path, "bf16")](out, x, w16, _NO_BIAS if bias is None else bias)
    return out


def matvec_bf16(out, w16, x, *, path=None):
    """out (O,) = W x for bf16 weights w16 (O, I) and x (I,) float32: :func:`linear_bf16` of one token."""
    linear_bf16(out.reshape(1, -1), x.reshape(1, -1), w16, None, path=path)
    return out


# ---------------------------------------------------------------------------------------------------
# NumPy emulation of the fast paths' arithmetic (tests; any machine)


def _roundf_np(v):
    a = np.abs(v)
    r = np.floor(a)
    r = np.where(a - r >= 0.5, r + 1, r)
    return np.where(v >= 0, r, -r)


def emulate_quantize_tokens(x):
    """NumPy twin of :func:`quantize_tokens` (float32 arithmetic)."""
    N, I = x.shape
    g = x.reshape(N, I // GROUP, GROUP)
    dx = (np.abs(g).max(axis=2) * np.float32(1 / 127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(dx > 0, np.float32(1.0) / dx, np.float32(0.0)).astype(np.float32)
    xq = _roundf_np((g * inv[:, :, None]).astype(np.float32)).astype(np.int8).reshape(N, I)
    xc = -128 * xq.reshape(N, I // 4, 4).astype(np.int32).sum(axis=2)
    return xq, xc.astype(np.int32), dx


def _hsum_np(v):
    """The lane tree of :func:`_hsum` over the last axis."""
    while v.shape[-1] > 1:
        h = v.shape[-1] // 2
        v = (v[..., :h] + v[..., h:]).astype(np.float32)
    return v[..., 0]


def emulate_linear_q8_0(x, qs, d, bias=None, tokens=None):
    """What the 512-bit q8_0 loop computes, step by step in NumPy: vpdpbusd of (qs XOR 0x80) as u8 and xq as s8
    into int32 lanes started at xc, then float32 lanes of the lane sums times d * dx, the lane tree, the odd
    last group as a scalar int32 sum. ``tokens`` = (xq, xc, dx) to reuse the kernel's own quantized tokens."""
    xq, xc, dx = emulate_quantize_tokens(x) if tokens is None else tokens
    N, I = xq.shape
    O, G = d.shape
    steps = G // 2
    u = (qs.view(np.uint8) ^ np.uint8(0x80)).astype(np.int64)  # == qs + 128
    out = np.zeros((N, O), np.float32)
    for n in range(N):
        acc = np.zeros((O, 16), np.float32)
        for i in range(steps):
            cols = slice(64 * i, 64 * (i + 1))
            prod = u[:, cols] * xq[n, cols].astype(np.int64)  # u8 * s8
            lanes = xc[n, 16 * i:16 * (i + 1)].astype(np.int64) + prod.reshape(O, 16, 4).sum(axis=2)
            assert np.all(np.abs(lanes) < 2**31)  # vpdpbusd wraps at 32 bits
            sc = (d[:, 2 * i:2 * i + 2] * dx[n, 2 * i:2 * i + 2]).astype(np.float32)
            acc = (acc + lanes.astype(np.float32) * np.repeat(sc, 8, axis=1)).astype(np.float32)
        s = _hsum_np(acc)
        for g in range(2 * steps, G):
            cols = slice(GROUP * g, GROUP * (g + 1))
            si = (qs[:, cols].astype(np.int32) * xq[n, cols].astype(np.int32)).sum(axis=1)
            s = (s + si.astype(np.float32) * (d[:, g] * dx[n, g])).astype(np.float32)
        out[n] = s if bias is None else s + bias
    return out


def emulate_round_bf16(x):
    """The bf16 bits of float32 x, rounded to nearest even (a NaN stays a quiet NaN)."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32)
    r = ((b.astype(np.uint64) + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (b & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((b >> 16) | 0x40).astype(np.uint16), r)


def _f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def emulate_split_bf16(x):
    """NumPy twin of :func:`split_bf16`."""
    xh = emulate_round_bf16(x)
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, as in the kernel
        return xh, emulate_round_bf16((x - _f32(xh)).astype(np.float32))


def emulate_linear_bf16(x, w16, bias=None):
    """What the 512-bit bf16 loop computes in NumPy: x split into bf16 xh + xl, vdpbf16ps of each weight vector
    with both into two sets of 16 float32 lanes (odd product added first), the two added, the lane tree, the
    last I % 32 columns as a scalar sum (denormals not flushed)."""
    xh, xl = (_f32(v) for v in emulate_split_bf16(x))
    N, I = xh.shape
    O = w16.shape[0]
    wf = _f32(w16)
    steps = I // 32
    out = np.zeros((N, O), np.float32)
    for n in range(N):
        acc = np.zeros((2, O, 16), np.float32)
        for i in range(steps):
            cols = slice(32 * i, 32 * (i + 1))
            for j, xp in enumerate((xh, xl)):
                p = (wf[:, cols] * xp[n, cols]).reshape(O, 16, 2)
                acc[j] = ((acc[j] + p[:, :, 1]).astype(np.float32) + p[:, :, 0]).astype(np.float32)
        s = _hsum_np((acc[0] + acc[1]).astype(np.float32))
        for i in range(32 * steps, I):
            s = (s + wf[:, i] * xh[n, i] + wf[:, i] * xl[n, i]).astype(np.float32)
        out[n] = s if bias is None else s + bias
    return out
