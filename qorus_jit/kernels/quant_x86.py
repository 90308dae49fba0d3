"""Fast instruction paths of the quantized matrix-vector kernels (one token: decoding): an int8 dot with
``vpdpbusd`` (AVX512-VNNI 512-bit, or AVX-VNNI 256-bit) for q8_0 weights and a bf16 dot with ``vdpbf16ps``
(AVX512_BF16). Several tokens (prefill) take ``quant``'s float32 products on dequantized W, or MKL's bf16
product (``linear_bf16``, ``split_q8_0_panel``, ``bf16_product``): row dots of several tokens with these
instructions ran 1.5-4.4x slower than the tiles on an Intel Xeon (docs/design.md).

The portable kernels live in :mod:`qorus_jit.kernels.quant`; these take the same arguments (trusted: the
wrappers there validate) and are reached through its dispatch point. The instructions are emitted as calls
to the LLVM x86 intrinsics from ``@intrinsic`` code generators. A CPU without them would fail to compile
the code (LLVM aborts the process) or fault on it, so nothing here compiles at import; :func:`available`
says which paths this CPU (and numba's target, see ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES``) can run, and
every entry point refuses a path that is not available. numba's cache keys each entry with the target CPU
name and features, so machine code cached on one CPU is never loaded on another.
``QORUS_PORTABLE=1`` makes :func:`available` report nothing.

**q8_0** (weights ``qs`` int8 (O, I), ``d`` float32 (O, I // 32)): the token is quantized in groups of 32
as the portable kernel does (``dx = max|x| * (1/127)``, ``xq = roundf(x / dx)``, float32 ``dx``), so each
group's dot is an exact int32 sum scaled by ``d * dx``. ``vpdpbusd acc, a, b`` adds to each int32 lane the
four products of *unsigned* bytes of ``a`` with *signed* bytes of ``b``; both operands here are signed, so the
VNNI paths take the offset form (:func:`emit_offset_dot`): ``qs ^ 0x80`` read unsigned is ``qs + 128``, and the
accumulator starts at ``-128`` times each lane's four ``xq``, made once a step for all rows. The "avx2" path
(``vpmaddubsw`` + ``vpmaddwd``, whose int16 pair sums would saturate on ``qs + 128``) takes llama.cpp's signed
form instead (:func:`emit_sign_dot`: ``|qs|`` against ``xq`` with the sign of ``qs``); it is not chosen by default
(measured no faster on the AMD EPYC). Every product is exact, -128 included. The row dot takes eight rows at once
on the 512-bit path, four on the 256-bit ones (the token's bytes loaded once a step for them) in steps of 64 bytes
(two groups, 16 lanes) or 32, each row adding its steps into one float32 vector by FMA with ``d * dx`` of their
group (multiplied once a vector of groups, spread to a step's lanes by a shuffle); a row's odd last group is a step of
masked loads into its low 8 lanes; the rows' lanes are summed by one transposing tree (:func:`_lowbit._hsum_rows`)
and stored at once, rows left over by a four- or one-row dot of the same arithmetic. Against four rows with the
scales multiplied every step: 1.15-1.2x the rate in cache at 288-2048 columns (Intel Xeon, docs/design.md).

**bf16** (``w16`` uint16 (O, I)): ``vdpbf16ps acc, a, b`` adds to each float32 lane ``a[2i+1] b[2i+1]`` then
``a[2i] b[2i]`` (products of two bf16 are exact in float32; the instruction flushes denormals). Its operands
are bf16, so each float32 activation is split once per token into two bf16 numbers, ``xh = bf16(x)`` and
``xl = bf16(x - xh)`` (round to nearest even; ``xh + xl`` is x to about 2^-17 relative, where ``xh`` alone
would be 2^-9): each weight vector, loaded once, meets both in two instructions accumulating into float32
vectors (four: xh and xl of even and odd steps), summed at the end of the row. The last ``I % 32`` columns
are a scalar sum. :func:`emulate_linear_bf16` is the same arithmetic in NumPy, token by token.

The float32 lanes are summed in a fixed tree at the end of a row, and the operations carry a flag of their own
(``_lowbit._EXACT``) so that numba's fastmath pass cannot reassociate them: a row's sum depends neither on the
threads nor on how many rows its dot takes at once.
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

import functools
import os
from pathlib import Path

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from qorus_jit.core.numerics import FASTMATH, for_rows, kernel
from qorus_jit.kernels._blas import cpu_vendor, gemm_bf16
from qorus_jit.kernels._lowbit import (
    _EXACT,
    GROUP,
    _hsum,
    _hsum_rows,
    _masked_load,
    _prefetch,
    _quantize_x_q8,
    _row_stride,
    splat,
)
from qorus_jit.kernels._math import _float32_from_bits

# ---------------------------------------------------------------------------------------------------
# which paths this CPU runs

_NEEDS = {
    "avx512-vnni": ("avx512f", "avx512bw", "avx512vl", "avx512vnni"),  # bw: masked byte loads
    "avx-vnni": ("avx2", "avxvnni"),
    "avx2": ("avx2",),
    "avx512-bf16": ("avx512f", "avx512bw", "avx512bf16"),
}
_Q8_0_PATHS = ("avx512-vnni", "avx-vnni", "avx2")  # fastest first
# The default skips "avx2": on the AMD EPYC (Zen 1: one 128-bit vector multiplier) its vpmaddubsw dot ran at
# 0.97-1.03x the portable vpmaddwd one, 1.00-1.06x end to end (docs/design.md); untried where it may pay.
_DEFAULT_Q8_0 = ("avx512-vnni", "avx-vnni")
# "avx512-bf16" is opt-in (QORUS_VDPBF16PS=1): on the Intel Xeon (Emerald Rapids) vdpbf16ps issues once every 3.2
# cycles and the split token takes two a step, so its rows ran at 0.55-0.9x the portable float32 FMA rows and decoding
# at 0.77x (docs/design.md); it stays for the CPUs where it may pay.
_OPT_IN_BF16 = "QORUS_VDPBF16PS"
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
    never the default, see ``_DEFAULT_Q8_0``; "avx512-bf16" only with ``QORUS_VDPBF16PS=1``, see ``_OPT_IN_BF16``)."""
    a = available()
    q8 = next((p for p in _DEFAULT_Q8_0 if a[p]), None)
    bf16 = a["avx512-bf16"] and os.environ.get(_OPT_IN_BF16, "") not in ("", "0")
    return {"q8_0": q8, "bf16": "avx512-bf16" if bf16 else None}


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


def emit_offset_dot(builder, w, x, path):
    """``sum_{k<4} w[4i+k] * x[4i+k]`` per int32 lane, both read signed (|x| <= 127), by ``vpdpbusd`` in the offset
    form: ``w ^ 0x80`` read unsigned is ``w + 128``, so ``vpdpbusd(-c, w ^ 0x80, x)`` with ``c = vpdpbusd(0, 128s,
    x)`` (128 times each lane's four x) leaves the exact sum. ``c`` depends on x alone: ``emit_offset_base`` makes
    ``-c`` once for the rows that share x, and ``w`` then costs one XOR where the signed form costs three
    operations (measured 1.6x the rate in cache, docs/design.md). |lane| <= 4 * 255 * 127: no overflow.

    ``path``: "avx512-vnni" / "avx-vnni" or "emulate"; w <4L x i8>, x as :func:`emit_offset_base` took it."""
    base, xv = x
    flip = builder.xor(w, ir.Constant(w.type, [-128] * w.type.count))
    return emit_dpbusd(builder, base, flip, xv, emulate=path == "emulate")


def emit_offset_base(builder, x, lanes, path):
    """(``-vpdpbusd(0, 128s, x)``, x): what :func:`emit_offset_dot` takes for the token bytes x <4L x i8>."""
    acc = ir.Constant(_vec(_I32, lanes), None)
    c = emit_dpbusd(builder, acc, ir.Constant(x.type, [-128] * x.type.count), x, emulate=path == "emulate")
    return builder.sub(acc, c), x


def emit_dpbf16ps(builder, acc, a, b, emulate=False):
    """``acc[i] + a[2i+1] b[2i+1] + a[2i] b[2i]``, added in that order (``vdpbf16ps``).

    acc <L x float>; a, b <2L x i16> (bf16 bits)."""
    n = acc.type.count
    if emulate:
        def f32(v):
            wide = builder.zext(v, _vec(_I32, 2 * n))
            return builder.bitcast(builder.shl(wide, ir.Constant(wide.type, [16] * (2 * n))), _vec(_F32, 2 * n))

        p = builder.fmul(f32(a), f32(b), flags=_EXACT)  # exact: 8-bit by 8-bit significands
        acc = builder.fadd(acc, builder.shuffle_vector(p, p, _mask(range(1, 2 * n, 2))), flags=_EXACT)
        return builder.fadd(acc, builder.shuffle_vector(p, p, _mask(range(0, 2 * n, 2))), flags=_EXACT)
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


def _make_dot_q8_0(nbytes, path, R):
    """An intrinsic ``dot(out, qs, o, xq, d, dx)``: out[o:o + R] = the q8_0 rows o..o + R - 1 (qs (O, I) int8, d (O,
    G): whole arrays or windows of whole groups, rows read by their stride) against one quantized token (xq (I,)
    int8, dx (G,)), by :func:`emit_offset_dot` (:func:`emit_sign_dot` on "avx2") on ``path``. Each step of
    ``nbytes`` (64: two groups in 16 lanes; 32: one group in 8) loads the token's bytes once for the R rows, and
    each row adds it into one float32 vector by FMA with its groups' ``d * dx``: those are multiplied once per
    ``lanes`` groups into a vector a row and spread to the step's lanes by a constant shuffle (``vpermps``). A
    row's odd last group is a step of masked loads (its low 8 lanes). The R sums share one reduction
    (:func:`_hsum_rows`) and one store. Every 64 bytes of weights are prefetched ``_lowbit._PREFETCH`` bytes
    ahead. A row's sum does not depend on R (nor on its place in the R)."""
    lanes, per = nbytes // 4, nbytes // GROUP  # lanes of a step; groups a step
    offset = path != "avx2"  # vpmaddubsw's int16 pair sums would saturate on w + 128

    @intrinsic
    def dot(typingctx, out, qs, o, xq, d, dx):
        def codegen(context, builder, sig, args):
            o = args[2]
            op = _data(context, builder, sig.args[0], args[0])
            xp, sp = (_data(context, builder, sig.args[i], args[i]) for i in (3, 5))
            wp, I = _row_stride(context, builder, sig.args[1], args[1])
            dp, Gs = _row_stride(context, builder, sig.args[4], args[4])
            G = cgutils.unpack_tuple(builder, context.make_array(sig.args[4])(context, builder, args[4]).shape, 2)[1]
            i64 = o.type

            def c(v):
                return ir.Constant(i64, v)

            bvec, ivec, fvec = _vec(_I8, nbytes), _vec(_I32, lanes), _vec(_F32, lanes)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(fvec, [fvec] * 3),
                                                 f"llvm.fma.v{lanes}f32")
            wrow = [builder.gep(wp, [builder.mul(builder.add(o, c(r)), I)]) for r in range(R)]
            drow = [builder.gep(dp, [builder.mul(builder.add(o, c(r)), Gs)]) for r in range(R)]
            accs = [cgutils.alloca_once_value(builder, ir.Constant(fvec, None)) for _ in range(R)]

            def scales(g0, n_valid):
                """Each row's d * dx of groups g0.. (lanes of them; from n_valid on zero)."""
                def ld(ptr):
                    if n_valid is None:
                        return builder.load(builder.bitcast(ptr, fvec.as_pointer()), align=4)
                    return _masked_load(builder, ptr, fvec, n_valid)
                dxs = ld(builder.gep(sp, [g0]))
                return [builder.fmul(ld(builder.gep(dr, [g0])), dxs, flags=_EXACT) for dr in drow]

            def step(g, scs, spread, tail=False):
                """Each row's acc += float32(its dot of the step from group g) * its scales spread to the lanes."""
                k = builder.mul(g, c(GROUP))

                def ld(ptr):
                    if tail:  # the odd last group alone: the step's high half masked off
                        return _masked_load(builder, ptr, bvec, c(GROUP))
                    return builder.load(builder.bitcast(ptr, bvec.as_pointer()), align=1)
                x = ld(builder.gep(xp, [k]))
                if offset:
                    x = emit_offset_base(builder, x, lanes, path)
                for r in range(R):
                    wptr = builder.gep(wrow[r], [k])
                    if not tail:
                        _prefetch(builder, wptr)
                    w = ld(wptr)
                    s = emit_offset_dot(builder, w, x, path) if offset else \
                        emit_sign_dot(builder, ir.Constant(ivec, None), w, x, path)
                    builder.store(builder.call(fma, [builder.sitofp(s, fvec), spread(scs[r]), builder.load(accs[r])]),
                                  accs[r])

            def lanes_of(j):  # the shuffle spreading scale j (of a step's first group) to its step's lanes
                return lambda v: builder.shuffle_vector(v, v, _mask([j + i // 8 for i in range(lanes)]))

            whole = builder.udiv(G, c(lanes))  # chunks of ``lanes`` groups, their steps unrolled
            with cgutils.for_range(builder, whole) as loop:
                g0 = builder.mul(loop.index, c(lanes))
                scs = scales(g0, None)
                for j in range(0, lanes, per):
                    step(builder.add(g0, c(j)), scs, lanes_of(j))
            g0 = builder.mul(whole, c(lanes))
            rem = builder.sub(G, g0)
            with builder.if_then(builder.icmp_unsigned("!=", rem, c(0))):  # the last groups
                scs = scales(g0, rem)
                for j in range(0, lanes, per):
                    with builder.if_then(builder.icmp_unsigned("<=", c(j + per), rem)):
                        step(builder.add(g0, c(j)), scs, lanes_of(j))
                if per == 2:
                    with builder.if_then(builder.trunc(rem, ir.IntType(1))):  # an odd last group
                        last = builder.sub(rem, c(1))

                        def last_scale(v):
                            return splat(builder, builder.extract_element(v, last), lanes)
                        step(builder.add(g0, last), scs, last_scale, tail=True)
            vals = [builder.load(a) for a in accs]
            v = _hsum(builder, vals[0]) if R == 1 else _hsum_rows(builder, vals)
            if sig.args[0].layout == "C":
                builder.store(v, builder.bitcast(builder.gep(op, [o]), v.type.as_pointer()), align=4)
            else:
                outp, ostride = _vector_stride(context, builder, sig.args[0], args[0])
                for r in range(R):
                    e = v if R == 1 else builder.extract_element(v, ir.Constant(_I32, r))
                    builder.store(e, builder.gep(outp, [builder.mul(builder.add(o, c(r)), ostride)]), align=4)
            return context.get_dummy_value()

        return types.void(out, qs, types.int64, xq, d, dx), codegen

    return dot


def _vector_stride(context, builder, aty, arr):
    """(data pointer, elements between entries) of 1-D array ``arr``."""
    a = context.make_array(aty)(context, builder, arr)
    stride = cgutils.unpack_tuple(builder, a.strides, 1)[0]
    size = context.get_abi_sizeof(context.get_data_type(aty.dtype))
    return a.data, builder.sdiv(stride, ir.Constant(stride.type, size))


def _make_dot_bf16(lanes, emulate):
    """An intrinsic ``dot(w16, w_off, xh, xl, steps) -> float32``: the first ``steps * 2 * lanes`` columns of a
    bf16 row at ``w_off`` against one token split into two bf16 parts (xh, xl (I,)); steps
    go two at a time into four accumulators (xh and xl of even and odd steps), hiding the instruction's
    latency."""
    hvec, fvec = _vec(_I16, 2 * lanes), _vec(_F32, lanes)

    @intrinsic
    def dot(typingctx, w16, w_off, xh, xl, steps):
        def codegen(context, builder, sig, args):
            w16_, w_off, xh_, xl_, steps = args
            wp, hp, lp = (_data(context, builder, sig.args[i], args[i]) for i in (0, 2, 3))
            i64 = w_off.type
            quad = ir.LiteralStructType([fvec] * 4)

            def step(k, acc, j):
                """Chains j (xh) and j + 1 (xl) of ``acc`` plus the products of the columns at k."""
                w = _load(builder, wp, builder.add(w_off, k), hvec)
                for part, p in ((j, hp), (j + 1, lp)):
                    acc = builder.insert_value(acc, emit_dpbf16ps(builder, builder.extract_value(acc, part), w,
                                                                  _load(builder, p, k, hvec),
                                                                  emulate), part)
                return acc

            def body(i, acc):
                k = builder.mul(i, ir.Constant(i64, 4 * lanes))
                return step(builder.add(k, ir.Constant(i64, 2 * lanes)), step(k, acc, 0), 2)

            slot = cgutils.alloca_once_value(builder, _loop(builder, builder.udiv(steps, ir.Constant(i64, 2)), body,
                                                             ir.Constant(quad, None)))
            with builder.if_then(builder.trunc(steps, ir.IntType(1))):  # an odd last step
                k = builder.mul(builder.sub(steps, ir.Constant(i64, 1)), ir.Constant(i64, 2 * lanes))
                builder.store(step(k, builder.load(slot), 0), slot)
            acc = builder.load(slot)
            parts = [builder.extract_value(acc, j) for j in range(4)]
            return _hsum(builder, builder.fadd(builder.fadd(parts[0], parts[1]), builder.fadd(parts[2], parts[3])))

        i64 = types.int64
        return types.float32(w16, i64, xh, xl, i64), codegen

    return dot


# rows a dot takes at once: eight at 64 bytes a step (32 vector registers), four at 32 (16 registers)
_Q8_0_STEP = {"avx512-vnni": (64, 8), "avx-vnni": (32, 4), "avx2": (32, 4), "emulate": (64, 8)}
_dot_q8_0 = {(p, R): _make_dot_q8_0(nb, p, R) for p, (nb, most) in _Q8_0_STEP.items() for R in {1, 4, most}}
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


@kernel
def _split_bf16_rows(x, xh, xl, lo, hi):
    """:func:`_split_bf16` of rows lo..hi - 1."""
    _split_bf16(x[lo:hi], xh[lo:hi], xl[lo:hi])


@kernel(parallel=True)
def _split_bf16_parallel(x, xh, xl):
    """:func:`_split_bf16`, rows over threads."""
    for_rows(_split_bf16_rows, (x, xh, xl), x.shape[0], x.size)


@kernel
def _bf16_products(out, xh, xl, w16):
    """out (N, O) = (xh + xl) (N, I) @ w16.T, every operand bf16 bits, by the BLAS's bf16 product (float32 sums)."""
    gemm_bf16(out, xh, w16.T, 0.0)
    gemm_bf16(out, xl, w16.T, 1.0)


@intrinsic
def _split_q8_0_group(typingctx, w2, qs, d, g):
    """w2[32 g + j] = bf16(w), w2[I + 32 g + j] = bf16(w - bf16(w)) for w = qs[32 g + j] * d[g], j < 32 (round to
    nearest even; q8_0 values are finite, so no NaN case); w2 (2 I,) uint16, qs (I,) int8, d (I/32,) float32.
    Vector IR: the same steps in numba loops ran at 0.7x the speed of a float32 dequantization."""

    def codegen(context, builder, sig, args):
        wp, qp, dp = (context.make_array(t)(context, builder, v).data
                      for t, v in zip(sig.args[:3], args[:3], strict=True))
        I = cgutils.unpack_tuple(builder, context.make_array(sig.args[1])(context, builder, args[1]).shape, 1)[0]
        g = args[3]
        n, i64 = 16, ir.IntType(64)
        vf, vi32 = _vec(_F32, n), _vec(_I32, n)
        sc = builder.load(builder.gep(dp, [g]), align=4)
        splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vf, ir.Undefined), sc, ir.Constant(i64, 0)),
                                       ir.Constant(vf, ir.Undefined), ir.Constant(vi32, [0] * n))

        def rounded(bits):  # the bf16 of float32 bits, in the high half (round to nearest even)
            odd = builder.and_(builder.lshr(bits, ir.Constant(vi32, [16] * n)), ir.Constant(vi32, [1] * n))
            up = builder.add(builder.add(bits, ir.Constant(vi32, [0x7FFF] * n)), odd)
            return builder.and_(up, ir.Constant(vi32, [-65536] * n))

        def store(bits, off):
            half = builder.trunc(builder.lshr(bits, ir.Constant(vi32, [16] * n)), _vec(_I16, n))
            builder.store(half, builder.bitcast(builder.gep(wp, [off]), _vec(_I16, n).as_pointer()), align=2)

        for k in range(GROUP // n):
            o = builder.add(builder.mul(g, ir.Constant(i64, GROUP)), ir.Constant(i64, n * k))
            q = builder.load(builder.bitcast(builder.gep(qp, [o]), _vec(_I8, n).as_pointer()), align=1)
            w = builder.fmul(builder.sitofp(builder.sext(q, vi32), vf), splat)
            h = rounded(builder.bitcast(w, vi32))
            r = builder.fsub(w, builder.bitcast(h, vf), flags=_EXACT)
            store(h, o)
            store(rounded(builder.bitcast(r, vi32)), builder.add(o, I))
        return context.get_dummy_value()

    return types.void(w2, qs, d, types.int64), codegen


@kernel
def _split_q8_0_rows(w2, qs, d, lo, a, b):
    """w2[i] = [bf16(w) | bf16(w - bf16(w))] of q8_0 row lo + i of W (16 of the at most 18 significant bits of
    qs * d), a <= i < b; w2 (>= b, 2 I) uint16."""
    for i in range(a, b):
        for g in range(d.shape[1]):
            _split_q8_0_group(w2[i], qs[lo + i], d[lo + i], g)


@kernel(parallel=True)
def split_q8_0_panel(w2, qs, d, lo, hi):
    """w2[:hi - lo] = rows lo..hi - 1 of q8_0 W (qs, d), each as two bf16 numbers side by side
    (:func:`_split_q8_0_rows`); rows over threads."""
    for_rows(_split_q8_0_rows, (w2, qs, d, lo), hi - lo, (hi - lo) * qs.shape[1])


@kernel
def bf16_product(out, a, b):
    """out (N, O) = a (N, K) @ b (O, K).T, bf16 bits, by the BLAS's bf16 product (float32 sums)."""
    gemm_bf16(out, a, b.T, 0.0)


def linear_bf16(out, x, w16, bias):
    """out (N, O) = x (N, I) @ W.T + bias (O,) or None, W = w16 (O, I) bf16, by the BLAS's bf16 product (MKL's,
    on AMX or AVX512_BF16): x split into two bf16 numbers (``split_bf16``: 16 significant bits of each float32,
    an error below 2^-16 of it), each multiplied by W with float32 sums. No dequantized copy of W."""
    xh, xl = split_bf16(x)
    _bf16_products(out, xh, xl, w16)
    if bias is not None:
        out += bias


@kernel
def _split_token(x):
    """(xh, xl) bf16 bits (uint16 (I,)) of one token x (I,), new arrays (:func:`split_bf16`)."""
    xh, xl = np.empty(x.shape[0], np.uint16), np.empty(x.shape[0], np.uint16)
    _split_bf16(x.reshape(1, -1), xh.reshape(1, -1), xl.reshape(1, -1))
    return xh, xl


def quantize_token(x: np.ndarray):
    """(xq int8 (I,), dx float32 (I // 32,)) of one token x (I,) float32: the activations of the signed dot (no
    corrections needed)."""
    return _quantized_token(x)


def split_bf16(x: np.ndarray):
    """(xh, xl) bf16 bits (uint16 (N, I)) of x (N, I) float32: xh = bf16(x), xl = bf16(x - xh), the activations
    of the bf16 fast path."""
    xh, xl = np.empty(x.shape, np.uint16), np.empty(x.shape, np.uint16)
    _split_bf16_parallel(x, xh, xl)
    return xh, xl


# ---------------------------------------------------------------------------------------------------
# row kernels, one per path (a kernel is compiled only when first called, so only on a CPU that has its path)


@kernel
def _bf16_tail(w16, xh, xl, o, i0):
    """sum over columns i >= i0 of w16[o, i] (xh[i] + xl[i]), all bf16 bits (one token)."""
    s = np.float32(0.0)
    for i in range(i0, w16.shape[1]):
        wi = _float32_from_bits(np.int32(w16[o, i]) << np.int32(16))
        s += wi * _float32_from_bits(np.int32(xh[i]) << np.int32(16))
        s += wi * _float32_from_bits(np.int32(xl[i]) << np.int32(16))
    return s


def _token_rows(out, qs, d, xq, dx, one, lo, hi, path):
    """out[o] = qs/d row o . one token (xq (I,) int8, dx (G,) float32, as :func:`quantize_token` makes them) for
    lo <= o < hi, eight (64-byte steps) or four rows at a time, by the dot of ``path`` (a constant string, so each
    path compiles its own loop); qs, d may be windows of whole groups (``qs[:, 32 a:32 b]``, ``d[:, a:b]``). With
    ``one`` a row at a time: one stream through W, which AMD CPUs' prefetchers follow (a 128 MB matrix from
    memory at 25-27 GB/s on one thread of the AMD EPYC Zen 4 against 11.4 for eight rows; docs/design.md, "One
    row at a time on AMD CPUs")."""


@overload(_token_rows, jit_options={"fastmath": set(FASTMATH)})
def _token_rows_impl(out, qs, d, xq, dx, one, lo, hi, path):
    if not isinstance(path, types.StringLiteral):
        raise TypingError("_token_rows: path must be a constant string")
    most = _Q8_0_STEP[path.literal_value][1]
    dot1, dot4, dotm = (_dot_q8_0[path.literal_value, R] for R in (1, 4, most))

    def rows(out, qs, d, xq, dx, one, lo, hi, path):
        o = lo
        while not one and o + most <= hi:
            dotm(out, qs, o, xq, d, dx)
            o += most
        while not one and o + 4 <= hi:
            dot4(out, qs, o, xq, d, dx)
            o += 4
        while o < hi:
            dot1(out, qs, o, xq, d, dx)
            o += 1
    return rows


@kernel
def _token_rows_512(out, qs, d, xq, dx, one, lo, hi):
    _token_rows(out, qs, d, xq, dx, one, lo, hi, "avx512-vnni")


@kernel
def _token_rows_vnni256(out, qs, d, xq, dx, one, lo, hi):
    _token_rows(out, qs, d, xq, dx, one, lo, hi, "avx-vnni")


@kernel
def _token_rows_avx2(out, qs, d, xq, dx, one, lo, hi):
    _token_rows(out, qs, d, xq, dx, one, lo, hi, "avx2")


@kernel
def _token_rows_emu(out, qs, d, xq, dx, one, lo, hi):
    _token_rows(out, qs, d, xq, dx, one, lo, hi, "emulate")


@functools.cache
def one_row() -> bool:
    """How the decode products (float32 and q8_0) read W on this CPU (their ``one_row`` argument): True on AMD
    CPUs, a row at a time with no software prefetch, one sequential stream that the CPU's own prefetchers follow;
    else several rows sharing each load of x, float32's prefetched ahead (tuned on the Intel Xeon). On the AMD EPYC
    with AVX-512 (Zen 4) float32's four rows made a stories15M token 1.3x and a stories110M token 1.2-1.6x slower,
    q8_0's eight rows a stories110M int8 token 1.3-2x slower (docs/design.md, "One row at a time on AMD CPUs")."""
    return cpu_vendor() == "AuthenticAMD"


@functools.cache
def l3_bytes() -> int:
    """The size of the CPU's last-level cache as Linux reports it (on a shared host: all of it, not this
    machine's share), or 32 MiB where unknown."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, size = (index / "level").read_text().strip(), (index / "size").read_text().strip()
        except OSError:
            continue
        if level == "3" and size[:-1].isdigit() and size[-1] in units:
            sizes.append(int(size[:-1]) * units[size[-1]])
    return max(sizes, default=32 * 2**20)


def one_row_float32(token_bytes: int) -> bool:
    """Whether the float32 one-call decoder reads W as it streams from memory (``decode._matvec_cols``'s
    ``one_row``: rows one after another, unprefetched) for a token of ``token_bytes``: wherever :func:`one_row`
    says so, and on other CPUs once those bytes are more than a quarter of the L3. On an Intel Xeon with AMX and a
    480 MiB L3 (2 cores of a shared host) a row at a time took 0.91-0.93 of four prefetched rows' time at the
    stories110M shape (440 MB), 0.95-0.99 at 168 MB, and 0.85-1.20 at stories15M (62 MB, mostly held by the L3)
    (docs/design.md, "A row at a time from memory on other CPUs too")."""
    return one_row() or token_bytes > l3_bytes() // 4


#: The serial row kernel of one token (decoding) of each q8_0 path: ``rows(out, qs, d, xq, dx, one, lo, hi)``,
#: several rows sharing each load of the token, or with ``one`` a row at a time (the same bits), for CPUs whose
#: prefetchers follow one stream best (AMD's: :func:`one_row`).
TOKEN_ROWS = {"avx512-vnni": _token_rows_512, "avx-vnni": _token_rows_vnni256, "avx2": _token_rows_avx2,
              "emulate": _token_rows_emu}


def _bf16_token_rows(out, w16, xh, xl, lo, hi, path):
    """out[o] = w16 row o . one token (xh + xl: bf16 bits (I,), as :func:`split_bf16` makes them) for
    lo <= o < hi, by ``vdpbf16ps`` on ``path`` ("avx512-bf16" or "emulate", a constant string); w16 may be a window
    of columns."""


@overload(_bf16_token_rows, jit_options={"fastmath": set(FASTMATH)})
def _bf16_token_rows_impl(out, w16, xh, xl, lo, hi, path):
    if not isinstance(path, types.StringLiteral):
        raise TypingError("_bf16_token_rows: path must be a constant string")
    dot = {"avx512-bf16": _dot_bf16_512, "emulate": _dot_bf16_emu}[path.literal_value]

    def rows(out, w16, xh, xl, lo, hi, path):
        stride = w16.strides[0] // 2  # rows of a window of columns too
        steps = w16.shape[1] // 32
        for o in range(lo, hi):
            out[o] = dot(w16, o * stride, xh, xl, steps) + _bf16_tail(w16, xh, xl, o, 32 * steps)
    return rows


@kernel
def _bf16_token_rows_512(out, w16, xh, xl, lo, hi):
    _bf16_token_rows(out, w16, xh, xl, lo, hi, "avx512-bf16")


@kernel
def _bf16_token_rows_emu(out, w16, xh, xl, lo, hi):
    _bf16_token_rows(out, w16, xh, xl, lo, hi, "emulate")


#: The serial row kernel of one token of each bf16 path: ``rows(out, w16, xh, xl, lo, hi)``.
TOKEN_ROWS_BF16 = {"avx512-bf16": _bf16_token_rows_512, "emulate": _bf16_token_rows_emu}


# One entry kernel a path: a CPU must compile only the instructions it has, so each path's code lives in its own
# kernel; one kernel taking the path as a string (numba.literally) cost 9.5 ms a call from Python.
@kernel(parallel=True)
def _q8_0_token_512(out, x, qs, d, one):
    xq, dx = _quantized_token(x)
    for_rows(_token_rows_512, (out, qs, d, xq, dx, one), qs.shape[0], qs.size)


@kernel(parallel=True)
def _q8_0_token_vnni256(out, x, qs, d, one):
    xq, dx = _quantized_token(x)
    for_rows(_token_rows_vnni256, (out, qs, d, xq, dx, one), qs.shape[0], qs.size)


@kernel(parallel=True)
def _q8_0_token_avx2(out, x, qs, d, one):
    xq, dx = _quantized_token(x)
    for_rows(_token_rows_avx2, (out, qs, d, xq, dx, one), qs.shape[0], qs.size)


@kernel(parallel=True)
def _q8_0_token_emu(out, x, qs, d, one):
    xq, dx = _quantized_token(x)
    for_rows(_token_rows_emu, (out, qs, d, xq, dx, one), qs.shape[0], qs.size)


@kernel(parallel=True)
def _bf16_token_512(out, x, w16):
    xh, xl = _split_token(x)
    for_rows(_bf16_token_rows_512, (out, w16, xh, xl), w16.shape[0], w16.size)


@kernel(parallel=True)
def _bf16_token_emu(out, x, w16):
    xh, xl = _split_token(x)
    for_rows(_bf16_token_rows_emu, (out, w16, xh, xl), w16.shape[0], w16.size)


_TOKEN = {"avx512-vnni": _q8_0_token_512, "avx-vnni": _q8_0_token_vnni256, "avx2": _q8_0_token_avx2,
          "emulate": _q8_0_token_emu}
_TOKEN_BF16 = {"avx512-bf16": _bf16_token_512, "emulate": _bf16_token_emu}

# ---------------------------------------------------------------------------------------------------
# entry points (the signatures of kernels.quant; arguments trusted)


def matvec_q8_0(out, qs, d, x, *, path=None, one=None):
    """out (O,) = W x for q8_0 weights (qs, d) and x (I,) float32 (one token, decoding) by the signed dot
    (:func:`emit_sign_dot`).

    ``path``: None (the best here), "avx512-vnni", "avx-vnni", "avx2" or "emulate" (the 512-bit loop in plain
    IR). ``one``: W read a row at a time (the same bits); None: this CPU's way (:func:`one_row`)."""
    _TOKEN[_require(path, "q8_0")](out, x, qs, d, one_row() if one is None else bool(one))
    return out


def matvec_bf16(out, w16, x, *, path=None):
    """out (O,) = W x for bf16 weights w16 (O, I) and x (I,) float32, x split into two bf16 parts.

    ``path``: None (the best here), "avx512-bf16" or "emulate" (the same loop in plain IR)."""
    _TOKEN_BF16[_require(path, "bf16")](out, x, w16)
    return out


# ---------------------------------------------------------------------------------------------------
# NumPy emulation of the fast paths' arithmetic (tests; any machine)


def _hsum_np(v):
    """The lane tree of :func:`_hsum` over the last axis."""
    while v.shape[-1] > 1:
        h = v.shape[-1] // 2
        v = (v[..., :h] + v[..., h:]).astype(np.float32)
    return v[..., 0]


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


def emulate_linear_bf16(x, w16):
    """What the 512-bit bf16 loop computes in NumPy: x split into bf16 xh + xl, vdpbf16ps of each weight vector
    with both into 16 float32 lanes of four accumulators (xh and xl of even and odd steps; odd product added
    first), the four added (the two of even steps, the two of odd ones, then both), the lane tree, the
    last I % 32 columns as a scalar sum (denormals not flushed)."""
    xh, xl = (_f32(v) for v in emulate_split_bf16(x))
    N, I = xh.shape
    O = w16.shape[0]
    wf = _f32(w16)
    steps = I // 32
    out = np.zeros((N, O), np.float32)
    for n in range(N):
        acc = np.zeros((4, O, 16), np.float32)
        for i in range(steps):
            cols = slice(32 * i, 32 * (i + 1))
            for j, xp in enumerate((xh, xl)):
                p = (wf[:, cols] * xp[n, cols]).reshape(O, 16, 2)
                a = 2 * (i % 2) + j
                acc[a] = ((acc[a] + p[:, :, 1]).astype(np.float32) + p[:, :, 0]).astype(np.float32)
        s = _hsum_np(((acc[0] + acc[1]).astype(np.float32) + (acc[2] + acc[3]).astype(np.float32)).astype(np.float32))
        for i in range(32 * steps, I):
            s = (s + wf[:, i] * xh[n, i] + wf[:, i] * xl[n, i]).astype(np.float32)
        out[n] = s
    return out
