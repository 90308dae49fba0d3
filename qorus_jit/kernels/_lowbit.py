"""What the quantized kernels (``kernels.quant``, portable; ``kernels.quant_x86``, x86 instructions) share: the
q8_0 group size, the quantizer of one token's activations for the integer dots, and pieces of LLVM IR their
``@intrinsic`` dots emit (a prefetch, masked loads and stores, a lane sum in a fixed order), also used by the
decoder's attention, and a prefetch the float32 decode products call."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from qorus_jit.core.numerics import FASTMATH, kernel
from qorus_jit.kernels._math import roundf

#: Weights per q8_0 group (one scale each), along the input dimension.
GROUP = 32

# The one flag of the float operations the row dots emit: any flag keeps numba's fastmath pass from adding its
# own, whose reassociation would let a row's sum depend on how many rows its dot takes at once.
_EXACT = ("nsz",)
_PREFETCH = 4096  # bytes ahead of their loads that the row dots prefetch W (docs/design.md, "Latency and prefetch")


def _quantize_x_q8(xq, xs, x):
    """x (I,) float32 quantized per group of 32 for the integer dot: ``xs[g] = max|x_g| * (1/127)``, ``xq =
    roundf(x / xs[g])`` in [-127, 127] (0 where xs[g] is 0); xq (I,) int16 (the portable dot) or int8 (the x86
    paths' signed dot), xs (I/32,) float32. Contiguous float32 x takes :func:`_quantize_groups` (vector IR, the
    same bits); other layouts the loop."""


@overload(_quantize_x_q8, jit_options={"fastmath": set(FASTMATH)})
def _quantize_x_q8_impl(xq, xs, x):
    if x.dtype == xs.dtype == types.float32 and x.layout == xs.layout == xq.layout == "C":
        return lambda xq, xs, x: _quantize_groups(xq, xs, x)

    def loop(xq, xs, x):
        for g in range(xs.shape[0]):
            xg, qg = x[g * GROUP:(g + 1) * GROUP], xq[g * GROUP:(g + 1) * GROUP]
            m = np.float32(0)
            for j in range(GROUP):
                m = max(m, abs(xg[j]))
            sc = m * np.float32(1 / 127)
            inv = np.float32(1) / sc if sc > 0 else np.float32(0)
            xs[g] = sc
            for j in range(GROUP):
                qg[j] = np.int32(roundf(xg[j] * inv))
    return loop


@kernel
def quantize_x_q8(xq, xs, x):
    """:func:`_quantize_x_q8` as a kernel of its own (callable from Python: tests)."""
    _quantize_x_q8(xq, xs, x)


@intrinsic
def _quantize_groups(typingctx, xq, xs, x):
    """:func:`_quantize_x_q8` of contiguous float32 x, a group (two 16-lane vectors) at a time: the same
    operations in float32 as the loop (the maximum, ``* (1/127)``, ``1 / sc``, ``x * inv``, then C's
    ``roundf``: ``floor(|y|)``, plus one where the rest is >= 0.5, the sign of y), so the same bits. 381 ns
    a 288-vector as the loop, once per block input of every decoding thread (Intel Xeon, docs/design.md)."""
    def codegen(context, builder, sig, args):
        qp, sp, xp = (context.make_array(t)(context, builder, a).data for t, a in zip(sig.args, args, strict=True))
        G = cgutils.unpack_tuple(builder, context.make_array(sig.args[1])(context, builder, args[1]).shape, 1)[0]
        f32, i32 = ir.FloatType(), ir.IntType(32)
        v16, i16x = ir.VectorType(f32, 16), ir.VectorType(i32, 16)
        qty = ir.VectorType(context.get_data_type(sig.args[0].dtype), 16)

        def c(v):
            return ir.Constant(v16, [v] * 16)

        def fn(name, k):
            return cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16] * k), name)
        fabs, floor = fn("llvm.fabs.v16f32", 1), fn("llvm.floor.v16f32", 1)
        with cgutils.for_range(builder, G) as loop:
            g = loop.index
            base = builder.mul(g, ir.Constant(g.type, GROUP))
            vs = [load_lanes(builder, builder.gep(xp, [builder.add(base, ir.Constant(g.type, 16 * h))]), v16)
                  for h in range(2)]
            a = [builder.call(fabs, [v]) for v in vs]
            mx = max_lanes(builder, builder.select(builder.fcmp_ordered(">", a[1], a[0]), a[1], a[0]))
            sc = builder.fmul(mx, ir.Constant(f32, np.float32(1 / 127)), flags=_EXACT)
            builder.store(sc, builder.gep(sp, [g]))
            inv = builder.select(builder.fcmp_ordered(">", sc, ir.Constant(f32, 0.0)),
                                 builder.fdiv(ir.Constant(f32, 1.0), sc, flags=_EXACT), ir.Constant(f32, 0.0))
            invv = splat(builder, inv)
            for h, v in enumerate(vs):
                y = builder.fmul(v, invv, flags=_EXACT)
                ay = builder.call(fabs, [y])
                r = builder.call(floor, [ay])
                up = builder.fcmp_ordered(">=", builder.fsub(ay, r, flags=_EXACT), c(0.5))
                r = builder.select(up, builder.fadd(r, c(1.0), flags=_EXACT), r)
                r = builder.select(builder.fcmp_ordered(">=", y, c(0.0)), r, builder.fsub(c(0.0), r, flags=_EXACT))
                q = builder.trunc(builder.fptosi(r, i16x), qty)
                ptr = builder.gep(qp, [builder.add(base, ir.Constant(g.type, 16 * h))])
                builder.store(q, builder.bitcast(ptr, qty.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.void(xq, xs, x), codegen


def _prefetch(builder, ptr, ahead=_PREFETCH):
    """A prefetch (read, into L1) of the line ``ahead`` bytes after ``ptr``; ``llvm.prefetch`` never faults."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                        "llvm.prefetch.p0")
    at = builder.gep(builder.bitcast(ptr, i8p), [ir.Constant(ir.IntType(64), ahead)])
    builder.call(fn, [at, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])


@intrinsic
def _prefetch_at(typingctx, w, i, c):
    """A prefetch of the line holding ``w[i, c]`` (2-D, rows by their stride, as ``_row_stride`` reads them); it
    never faults, past the end included: for the float32 decode products, which LLVM vectorizes itself."""
    sig = types.void(w, i, c)

    def codegen(context, builder, sig, args):
        data, stride = _row_stride(context, builder, sig.args[0], args[0])
        _prefetch(builder, builder.gep(data, [builder.add(builder.mul(args[1], stride), args[2])]), 0)
        return context.get_dummy_value()
    return sig, codegen


def _row_stride(context, builder, aty, arr):
    """(data pointer, elements between rows) of 2-D array ``arr``: its rows' stride, so that a window of columns
    (``w[:, lo:hi]``, whose data starts at column lo) reads as well as a whole array."""
    a = context.make_array(aty)(context, builder, arr)
    stride = cgutils.unpack_tuple(builder, a.strides, 2)[0]
    size = context.get_abi_sizeof(context.get_data_type(aty.dtype))
    return a.data, builder.sdiv(stride, ir.Constant(stride.type, size))


#: float32 lanes of the kernels' vector IR (a zmm; LLVM splits it in two ymm where the CPU has no AVX-512)
LANES = 16


def splat(builder, x, lanes=LANES):
    """``<lanes x T>`` of the scalar ``x`` in every lane."""
    one = builder.insert_element(ir.Constant(ir.VectorType(x.type, lanes), ir.Undefined), x,
                                 ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))


def max_lanes(builder, v):
    """The largest lane of float vector ``v`` (halves compared pairwise; a NaN lane loses to any number)."""
    w = v.type.count
    while w > 1:
        w //= 2
        idx = ir.VectorType(ir.IntType(32), w)
        lo = builder.shuffle_vector(v, v, ir.Constant(idx, list(range(w))))
        hi = builder.shuffle_vector(v, v, ir.Constant(idx, list(range(w, 2 * w))))
        v = builder.select(builder.fcmp_ordered(">", hi, lo), hi, lo)
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))


def _lanes_below(builder, n_valid, lanes):
    """``<lanes x i1>``: lane i is ``i < n_valid`` (an i64)."""
    i64 = ir.IntType(64)
    vty = ir.VectorType(i64, lanes)
    nv = builder.insert_element(ir.Constant(vty, ir.Undefined), n_valid, ir.Constant(ir.IntType(32), 0))
    splat = builder.shuffle_vector(nv, nv, ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
    return builder.icmp_unsigned("<", ir.Constant(vty, list(range(lanes))), splat)


def _masked_load(builder, ptr, vty, n_valid):
    """A load of ``vty`` at ``ptr`` whose lanes from ``n_valid`` (an i64) on are zero and never read
    (``llvm.masked.load``: no fault past the end of an array)."""
    ety, lanes = vty.element, vty.count
    name = f"llvm.masked.load.v{lanes}{'f32' if isinstance(ety, ir.FloatType) else f'i{ety.width}'}.p0"
    mty = ir.VectorType(ir.IntType(1), lanes)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty.as_pointer(), ir.IntType(32), mty,
                                                                             vty]), name)
    return builder.call(fn, [builder.bitcast(ptr, vty.as_pointer()), ir.Constant(ir.IntType(32), 1),
                             _lanes_below(builder, n_valid, lanes), ir.Constant(vty, None)])


def _masked_store(builder, val, ptr, n_valid):
    """Store the lanes below ``n_valid`` (an i64) of float vector ``val`` at ``ptr`` (``llvm.masked.store``)."""
    vty, lanes = val.type, val.type.count
    mty = ir.VectorType(ir.IntType(1), lanes)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(),
                                                                                       ir.IntType(32), mty]),
                                        f"llvm.masked.store.v{lanes}f32.p0")
    builder.call(fn, [val, builder.bitcast(ptr, vty.as_pointer()), ir.Constant(ir.IntType(32), 4),
                      _lanes_below(builder, n_valid, lanes)])


def _element_bytes(vty):
    e = vty.element
    return {"float": 4, "double": 8}.get(str(e)) or e.width // 8


def lane_chunks(builder, n, lanes, chunk):
    """``chunk(offset, n_valid)`` over n elements (an i64) in chunks of ``lanes``: whole ones (``n_valid`` None),
    then the rest (``n_valid`` an i64 below ``lanes``), if any."""
    width = ir.Constant(n.type, lanes)
    whole = builder.udiv(n, width)
    with cgutils.for_range(builder, whole) as loop:
        chunk(builder.mul(loop.index, width), None)
    done = builder.mul(whole, width)
    with builder.if_then(builder.icmp_signed(">", n, done)):
        chunk(done, builder.sub(n, done))


def load_lanes(builder, ptr, vty, n_valid=None):
    """``vty`` loaded at ``ptr`` (element-aligned); lanes from ``n_valid`` on masked (zero, never read)."""
    if n_valid is None:
        return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=_element_bytes(vty))
    return _masked_load(builder, ptr, vty, n_valid)


def store_lanes(builder, v, ptr, n_valid=None):
    """``v`` stored at ``ptr``; lanes from ``n_valid`` on left alone."""
    if n_valid is None:
        builder.store(v, builder.bitcast(ptr, v.type.as_pointer()), align=_element_bytes(v.type))
    else:
        _masked_store(builder, v, ptr, n_valid)


def _hsum(builder, v):
    """The sum of the lanes of vector ``v`` in a fixed order (halves added pairwise), a scalar."""
    n = v.type.count
    while n > 1:
        n //= 2
        undef = ir.Constant(v.type, ir.Undefined)
        lo = builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n))))
        hi = builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n, 2 * n))))
        v = builder.fadd(lo, hi, flags=_EXACT)
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))


def _hsum_rows(builder, vs):
    """``<R x float>``: the lane sums of the R vectors ``vs`` (R a power of two, at most their lanes), each in
    :func:`_hsum`'s order, by a transposing tree: two vectors holding k rows' lanes each merge into one holding 2k
    rows' half as many lanes, then the one vector folds each row's lanes in halves until one lane a row is left
    (15 shuffles and adds for four rows of 16 lanes, against 32 for four sums)."""
    def fold(p, q, rows, lanes):
        half = lanes // 2
        lo = [r * lanes + i for r in range(rows) for i in range(half)]
        hi = [r * lanes + half + i for r in range(rows) for i in range(half)]
        if q is None:
            q = ir.Constant(p.type, ir.Undefined)
        else:
            lo = lo + [rows * lanes + j for j in lo]
            hi = hi + [rows * lanes + j for j in hi]
        m = ir.VectorType(ir.IntType(32), len(lo))
        return builder.fadd(builder.shuffle_vector(p, q, ir.Constant(m, lo)),
                            builder.shuffle_vector(p, q, ir.Constant(m, hi)), flags=_EXACT)

    n, rows = vs[0].type.count, 1
    while len(vs) > 1:
        vs = [fold(p, q, rows, n // rows) for p, q in zip(vs[0::2], vs[1::2], strict=True)]
        rows *= 2
    v = vs[0]
    while v.type.count > rows:
        v = fold(v, None, rows, v.type.count // rows)
    return v
