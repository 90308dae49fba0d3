"""Activation kernels: ReLU, GELU (exact erf form and tanh approximation), SiLU, Swish, SwiGLU.

Arrays of any shape are processed as flat views; inputs and outputs of one op share one shape.
Forward writes ``out``, which may be an input itself (in place); backward accumulates (``+=``) into the
gradient buffers, which overlap nothing else. Each kernel's body is a serial ``*_range`` kernel over elements
``lo..hi-1``, run by ``numerics.for_chunks`` in chunks of ``_CHUNK``.

A ``*_range`` kernel first slices its arrays to ``[lo:hi]`` and then counts ``i`` from 0: indexing with ``i``
in ``range(lo, hi)`` makes numba handle negative indices, and LLVM then vectorizes the loop with gathers and
scatters (docs/design.md, "Loops must count from 0").

The sigmoid is computed from ``exp(-|x|)`` only, so it never overflows (``x = +-100`` or ``+-1e4`` in
float32 give exact 0/1 limits, no inf or NaN). ``exp``, ``erf`` and ``sigmoid`` come from ``_math``:
plain arithmetic in float32 that LLVM vectorizes, full-precision library calls in float64. SwiGLU's float32
ranges are the same arithmetic in 16-lane vector IR (``_math.emit_sigmoid``), where LLVM's loops ran at 8.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from qorus_jit.core.check import check_real
from qorus_jit.core.check import check_same_shape as _same_shape
from qorus_jit.core.check import flat_views as _flat
from qorus_jit.core.numerics import FASTMATH, for_chunks, kernel
from qorus_jit.kernels._lowbit import LANES, lane_chunks, load_lanes, store_lanes
from qorus_jit.kernels._math import emit_sigmoid
from qorus_jit.kernels._math import erf as _erf
from qorus_jit.kernels._math import exp as _exp
from qorus_jit.kernels._math import sigmoid as _sigmoid

_CHUNK = 1 << 14  # elements per parallel chunk

_SQRT1_2 = 0.7071067811865476  # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)
_SQRT_2_PI = 0.7978845608028654  # sqrt(2 / pi)
_GELU_C = 0.044715


@kernel
def _relu_forward_range(out, x, lo, hi):
    """_relu_forward on elements lo..hi-1."""
    zero = out.dtype.type(0.0)
    out, x = out[lo:hi], x[lo:hi]
    for i in range(hi - lo):
        v = x[i]
        out[i] = zero if v < zero else v


@kernel(parallel=True)
def _relu_forward(out, x):
    """out = max(x, 0); all (n,). NaN stays NaN."""
    n = out.shape[0]
    for_chunks(_relu_forward_range, (out, x), n, _CHUNK, n)


@kernel
def _relu_backward_range(dx, dout, x, lo, hi):
    """_relu_backward on elements lo..hi-1."""
    zero = dx.dtype.type(0.0)
    dx, dout, x = dx[lo:hi], dout[lo:hi], x[lo:hi]
    for i in range(hi - lo):
        dx[i] += dout[i] if x[i] > zero else zero


@kernel(parallel=True)
def _relu_backward(dx, dout, x):
    """dx += dout * (x > 0); all (n,)."""
    n = dout.shape[0]
    for_chunks(_relu_backward_range, (dx, dout, x), n, _CHUNK, n)


@kernel
def _gelu_forward_range(out, x, lo, hi):
    """_gelu_forward on elements lo..hi-1."""
    T = out.dtype.type
    out, x = out[lo:hi], x[lo:hi]
    for i in range(hi - lo):
        v = x[i]
        out[i] = T(0.5) * v * (T(1.0) + _erf(v * T(_SQRT1_2)))


@kernel(parallel=True)
def _gelu_forward(out, x):
    """out = 0.5 x (1 + erf(x / sqrt(2))); all (n,)."""
    n = out.shape[0]
    for_chunks(_gelu_forward_range, (out, x), n, _CHUNK, n)


@kernel
def _gelu_backward_range(dx, dout, x, lo, hi):
    """_gelu_backward on elements lo..hi-1."""
    T = dx.dtype.type
    dx, dout, x = dx[lo:hi], dout[lo:hi], x[lo:hi]
    for i in range(hi - lo):
        v = x[i]
        cdf = T(0.5) * (T(1.0) + _erf(v * T(_SQRT1_2)))
        pdf = T(_INV_SQRT_2PI) * _exp(T(-0.5) * v * v)
        dx[i] += dout[i] * (cdf + v * pdf)


@kernel(parallel=True)
def _gelu_backward(dx, dout, x):
    """dx += dout * (Phi(x) + x phi(x)), Phi/phi the normal cdf/pdf; all (n,)."""
    n = dout.shape[0]
    for_chunks(_gelu_backward_range, (dx, dout, x), n, _CHUNK, n)


@kernel
def _gelu_tanh_forward_range(out, x, lo, hi):
    """_gelu_tanh_forward on elements lo..hi-1."""
    T = out.dtype.type
    out, x = out[lo:hi], x[lo:hi]
    for i in range(hi - lo):
        v = x[i]
        u2 = T(2.0 * _SQRT_2_PI) * v * (T(1.0) + T(_GELU_C) * v * v)
        out[i] = v * _sigmoid(u2)


@kernel(parallel=True)
def _gelu_tanh_forward(out, x):
    """out = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), as x sigmoid(2u); all (n,)."""
    n = out.shape[0]
    for_chunks(_gelu_tanh_forward_range, (out, x), n, _CHUNK, n)


@kernel
def _gelu_tanh_backward_range(dx, dout, x, lo, hi):
    """_gelu_tanh_backward on elements lo..hi-1."""
    T = dx.dtype.type
    dx, dout, x = dx[lo:hi], dout[lo:hi], x[lo:hi]
    for i in range(hi - lo):
        v = x[i]
        u2 = T(2.0 * _SQRT_2_PI) * v * (T(1.0) + T(_GELU_C) * v * v)
        s = _sigmoid(u2)
        du2 = T(2.0 * _SQRT_2_PI) * (T(1.0) + T(3.0 * _GELU_C) * v * v)
        dx[i] += dout[i] * (s + v * (s * (T(1.0) - s)) * du2)


@kernel(parallel=True)
def _gelu_tanh_backward(dx, dout, x):
    """dx += dout * (s + x s (1 - s) du2/dx), s = sigmoid(u2), u2 = 2 sqrt(2/pi) (x + 0.044715 x^3); (n,)."""
    n = dout.shape[0]
    for_chunks(_gelu_tanh_backward_range, (dx, dout, x), n, _CHUNK, n)


@kernel
def _swish_forward_range(out, x, beta, lo, hi):
    """_swish_forward on elements lo..hi-1."""
    out, x = out[lo:hi], x[lo:hi]
    for i in range(hi - lo):
        v = x[i]
        out[i] = v * _sigmoid(beta * v)


@kernel(parallel=True)
def _swish_forward(out, x, beta):
    """out = x sigmoid(beta x); all (n,), beta a scalar of their dtype."""
    n = out.shape[0]
    for_chunks(_swish_forward_range, (out, x, beta), n, _CHUNK, n)


@kernel
def _swish_backward_range(dx, dout, x, beta, lo, hi):
    """_swish_backward on elements lo..hi-1."""
    one = dx.dtype.type(1.0)
    dx, dout, x = dx[lo:hi], dout[lo:hi], x[lo:hi]
    for i in range(hi - lo):
        v = x[i]
        s = _sigmoid(beta * v)
        dx[i] += dout[i] * s * (one + beta * v * (one - s))


@kernel(parallel=True)
def _swish_backward(dx, dout, x, beta):
    """dx += dout * s (1 + beta x (1 - s)), s = sigmoid(beta x); all (n,)."""
    n = dout.shape[0]
    for_chunks(_swish_backward_range, (dx, dout, x, beta), n, _CHUNK, n)


@kernel
def _silu_forward_range(out, x, lo, hi):
    """_silu_forward on elements lo..hi-1."""
    out, x = out[lo:hi], x[lo:hi]
    for i in range(hi - lo):
        v = x[i]
        out[i] = v * _sigmoid(v)


@kernel(parallel=True)
def _silu_forward(out, x):
    """out = x sigmoid(x); all (n,)."""
    n = out.shape[0]
    for_chunks(_silu_forward_range, (out, x), n, _CHUNK, n)


@kernel
def _silu_backward_range(dx, dout, x, lo, hi):
    """_silu_backward on elements lo..hi-1."""
    one = dx.dtype.type(1.0)
    dx, dout, x = dx[lo:hi], dout[lo:hi], x[lo:hi]
    for i in range(hi - lo):
        v = x[i]
        s = _sigmoid(v)
        dx[i] += dout[i] * s * (one + v * (one - s))


@kernel(parallel=True)
def _silu_backward(dx, dout, x):
    """dx += dout * s (1 + x (1 - s)), s = sigmoid(x); all (n,)."""
    n = dout.shape[0]
    for_chunks(_silu_backward_range, (dx, dout, x), n, _CHUNK, n)


def _lane_arrays(context, builder, sig, args, lo):
    """Pointers to element ``lo`` of each 1-D array argument (the others None)."""
    return [builder.gep(context.make_array(t)(context, builder, a).data, [lo]) if isinstance(t, types.Array) else None
            for t, a in zip(sig.args, args, strict=True)]


@intrinsic
def _swiglu_forward_f32(typingctx, out, a, b, lo, hi):
    """_swiglu_forward_range for float32 in 16-lane vector IR (numba's loop ran at 8 lanes and took 2.5x an add of
    the same traffic at the W-train shape; docs/design.md, "The training step")."""
    def codegen(context, builder, sig, args):
        po, pa, pb = _lane_arrays(context, builder, sig, args, args[3])[:3]
        vty = ir.VectorType(ir.FloatType(), LANES)

        def chunk(off, n_valid):
            v = load_lanes(builder, builder.gep(pa, [off]), vty, n_valid)
            y = builder.fmul(builder.fmul(v, emit_sigmoid(builder, v)),
                             load_lanes(builder, builder.gep(pb, [off]), vty, n_valid))
            store_lanes(builder, y, builder.gep(po, [off]), n_valid)

        lane_chunks(builder, builder.sub(args[4], args[3]), LANES, chunk)
        return context.get_dummy_value()

    return types.void(out, a, b, types.int64, types.int64), codegen


def _swiglu_forward_range(out, a, b, lo, hi):
    """_swiglu_forward on elements lo..hi-1."""


@overload(_swiglu_forward_range, jit_options={"fastmath": set(FASTMATH)})
def _swiglu_forward_range_impl(out, a, b, lo, hi):
    if out.dtype == a.dtype == b.dtype == types.float32:
        return lambda out, a, b, lo, hi: _swiglu_forward_f32(out, a, b, lo, hi)

    def loop(out, a, b, lo, hi):
        out, a, b = out[lo:hi], a[lo:hi], b[lo:hi]
        for i in range(hi - lo):
            v = a[i]
            out[i] = v * _sigmoid(v) * b[i]
    return loop


@kernel(parallel=True)
def _swiglu_forward(out, a, b):
    """out = silu(a) * b = a sigmoid(a) b; all (n,)."""
    n = out.shape[0]
    for_chunks(_swiglu_forward_range, (out, a, b), n, _CHUNK, n)


@intrinsic
def _swiglu_backward_f32(typingctx, da, db, dout, a, b, add, lo, hi):
    """_swiglu_backward_range for float32 in 16-lane vector IR (as :func:`_swiglu_forward_f32`)."""
    def codegen(context, builder, sig, args):
        pda, pdb, pg, pa, pb = _lane_arrays(context, builder, sig, args, args[6])[:5]
        vty = ir.VectorType(ir.FloatType(), LANES)
        one = ir.Constant(vty, [1.0] * LANES)

        def chunk(off, n_valid, accumulate):
            v = load_lanes(builder, builder.gep(pa, [off]), vty, n_valid)
            g = load_lanes(builder, builder.gep(pg, [off]), vty, n_valid)
            sg = emit_sigmoid(builder, v)
            gbs = builder.fmul(builder.fmul(g, load_lanes(builder, builder.gep(pb, [off]), vty, n_valid)), sg)
            ga = builder.fmul(gbs, builder.fadd(one, builder.fmul(v, builder.fsub(one, sg))))
            gb = builder.fmul(builder.fmul(g, v), sg)
            if accumulate:
                ga = builder.fadd(ga, load_lanes(builder, builder.gep(pda, [off]), vty, n_valid))
                gb = builder.fadd(gb, load_lanes(builder, builder.gep(pdb, [off]), vty, n_valid))
            store_lanes(builder, ga, builder.gep(pda, [off]), n_valid)
            store_lanes(builder, gb, builder.gep(pdb, [off]), n_valid)

        n = builder.sub(args[7], args[6])
        with builder.if_else(args[5]) as (then, otherwise):
            with then:
                lane_chunks(builder, n, LANES, lambda off, nv: chunk(off, nv, True))
            with otherwise:
                lane_chunks(builder, n, LANES, lambda off, nv: chunk(off, nv, False))
        return context.get_dummy_value()

    return types.void(da, db, dout, a, b, types.boolean, types.int64, types.int64), codegen


def _swiglu_backward_range(da, db, dout, a, b, add, lo, hi):
    """_swiglu_backward_into on elements lo..hi-1."""


@overload(_swiglu_backward_range, jit_options={"fastmath": set(FASTMATH)})
def _swiglu_backward_range_impl(da, db, dout, a, b, add, lo, hi):
    if all(x.dtype == types.float32 for x in (da, db, dout, a, b)):
        return lambda da, db, dout, a, b, add, lo, hi: _swiglu_backward_f32(da, db, dout, a, b, add, lo, hi)

    def loop(da, db, dout, a, b, add, lo, hi):
        one = da.dtype.type(1.0)
        da, db, dout, a, b = da[lo:hi], db[lo:hi], dout[lo:hi], a[lo:hi], b[lo:hi]
        for i in range(hi - lo):
            v = a[i]
            s = _sigmoid(v)
            g = dout[i]
            ga = g * b[i] * s * (one + v * (one - s))
            gb = g * v * s
            if add:
                ga += da[i]
                gb += db[i]
            da[i] = ga
            db[i] = gb
    return loop


@kernel(parallel=True)
def _swiglu_backward_into(da, db, dout, a, b, add):
    """da (+)= dout * b * s (1 + a (1 - s)); db (+)= dout * a s; s = sigmoid(a); all (n,). ``add`` False
    writes da and db without reading them (no zero fill needed before)."""
    n = dout.shape[0]
    for_chunks(_swiglu_backward_range, (da, db, dout, a, b, add), n, _CHUNK, n)


@kernel(parallel=True)
def _swiglu_backward(da, db, dout, a, b):
    """da += dout * b * s (1 + a (1 - s)); db += dout * a s; s = sigmoid(a); all (n,). Its own chunks rather than
    a call of the parallel ``_swiglu_backward_into`` (docs/design.md, "Kernels that call parallel kernels")."""
    n = dout.shape[0]
    for_chunks(_swiglu_backward_range, (da, db, dout, a, b, True), n, _CHUNK, n)


def _check_approximate(approximate) -> bool:
    """True for the tanh approximation, False for the exact erf form."""
    if not isinstance(approximate, str) or approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    return approximate == "tanh"


def _check_beta(beta, dtype):
    """``beta`` as a finite scalar of ``dtype``."""
    return dtype.type(check_real("beta", beta))


def relu_forward(out, x):
    """``out = max(x, 0)`` (any shape, all equal)."""
    _same_shape(out=out, x=x, writes=("out",), inplace={"out": "x"})
    _relu_forward(*_flat(out, x))


def relu_backward(dx, dout, x):
    """``dx += dout * (x > 0)`` (the gradient at 0 is 0, as in torch)."""
    _same_shape(dx=dx, dout=dout, x=x, writes=("dx",))
    _relu_backward(*_flat(dx, dout, x))


def gelu_forward(out, x, approximate: str = "none"):
    """``out = gelu(x)``: ``"none"`` is ``x Phi(x)`` (erf), ``"tanh"`` torch's tanh approximation."""
    tanh = _check_approximate(approximate)
    _same_shape(out=out, x=x, writes=("out",), inplace={"out": "x"})
    (_gelu_tanh_forward if tanh else _gelu_forward)(*_flat(out, x))


def gelu_backward(dx, dout, x, approximate: str = "none"):
    """``dx += dout * gelu'(x)`` for the same ``approximate`` as the forward."""
    tanh = _check_approximate(approximate)
    _same_shape(dx=dx, dout=dout, x=x, writes=("dx",))
    (_gelu_tanh_backward if tanh else _gelu_backward)(*_flat(dx, dout, x))


def silu_forward(out, x):
    """``out = x * sigmoid(x)``."""
    _same_shape(out=out, x=x, writes=("out",), inplace={"out": "x"})
    _silu_forward(*_flat(out, x))


def silu_backward(dx, dout, x):
    """``dx += dout * silu'(x)``."""
    _same_shape(dx=dx, dout=dout, x=x, writes=("dx",))
    _silu_backward(*_flat(dx, dout, x))


def swish_forward(out, x, beta: float):
    """``out = x * sigmoid(beta * x)``; ``beta`` is a fixed finite real (``beta = 1`` is SiLU)."""
    _same_shape(out=out, x=x, writes=("out",), inplace={"out": "x"})
    _swish_forward(*_flat(out, x), _check_beta(beta, out.dtype))


def swish_backward(dx, dout, x, beta: float):
    """``dx += dout * d/dx [x sigmoid(beta x)]``; ``beta`` is not trained, so it has no gradient."""
    _same_shape(dx=dx, dout=dout, x=x, writes=("dx",))
    _swish_backward(*_flat(dx, dout, x), _check_beta(beta, dx.dtype))


def swiglu_forward(out, a, b):
    """``out = silu(a) * b``, ``a`` the gate and ``b`` the up projection (any shape, all equal)."""
    _same_shape(out=out, a=a, b=b, writes=("out",), inplace={"out": ("a", "b")})
    _swiglu_forward(*_flat(out, a, b))


def swiglu_backward(da, db, dout, a, b):
    """``da += dout * b * silu'(a)``, ``db += dout * silu(a)``."""
    _same_shape(da=da, db=db, dout=dout, a=a, b=b, writes=("da", "db"))
    _swiglu_backward(*_flat(da, db, dout, a, b))
