"""Fuzz cases of the public kernel wrappers (``qorus_jit.kernels.<family>``).

The valid call of each wrapper is that of tests/test_bad_inputs.py ``recipes()`` (the wrappers it leaves out
get one here, in the same form), its float arrays redrawn at random. :data:`TABLE` gives each argument's role
(an output written in place, an input, token ids, a key mask, a real, an int, a flag or a choice) and the
symbolic shape of each array; from it come the mutations of every argument, calls with a size-0 axis and
with random consistent sizes, and a float64 NumPy reference (:data:`REFS`, built on tests/naive) that every
call which returns is compared with, on a copy of its arguments taken just before the call.
"""

from __future__ import annotations

import functools
import inspect
import math

import numpy as np

from qorus_jit.kernels import (
    activations,
    attention,
    elementwise,
    embedding,
    loss,
    matmul,
    norm,
    optim,
    rope,
    softmax,
)
from tests.fuzz.harness import Case, HarnessError
from tests.fuzz.mutate import (
    DTYPES,
    Choice,
    Flag,
    Int,
    Real,
    as_f64,
    compare,
    noncontig,
    overlapping,
    readonly,
    rng,
    scalar_mutations,
    with_dtype,
)
from tests.naive import activations as n_act
from tests.naive import attention as n_att
from tests.naive import loss as n_loss
from tests.naive import norm as n_norm
from tests.naive import rope as n_rope
from tests.naive import softmax as n_soft
from tests.test_bad_inputs import recipes

F = np.float32


# ------------------------------------------------------------------------------------------------ roles


class Arr:
    """An array argument: ``kind`` "O" (written in place), "I" (read), "X" (token ids < ``high``), "M" (key
    mask); ``spec`` its axes as symbols ("N C"), ints or "2*S"; ``optional``: None is valid."""

    def __init__(self, kind, spec, optional=False, high=None):
        self.kind, self.spec, self.optional, self.high = kind, spec.split(), optional, high


def _o(*shape):
    return np.zeros(shape, F)


# The wrappers recipes() leaves out, in its form: name -> (function, positional args, optional indices).
def extra_recipes():
    ids = np.array([[0, 2, 1]], np.int64)
    cos, sin = rope.rope_cache(8, 4)
    return {
        "add_backward": (elementwise.add_backward, [_o(2, 3), _o(2, 3), _o(2, 3)], ()),
        "mul_forward": (elementwise.mul_forward, [_o(2, 3), _o(2, 3), _o(2, 3)], ()),
        "scale_backward": (elementwise.scale_backward, [_o(2, 3), _o(2, 3), 0.5], ()),
        "relu_forward": (activations.relu_forward, [_o(2, 3), _o(2, 3)], ()),
        "gelu_backward": (activations.gelu_backward, [_o(2, 3), _o(2, 3), _o(2, 3)], ()),
        "silu_forward": (activations.silu_forward, [_o(2, 3), _o(2, 3)], ()),
        "silu_backward": (activations.silu_backward, [_o(2, 3), _o(2, 3), _o(2, 3)], ()),
        "swish_forward": (activations.swish_forward, [_o(2, 3), _o(2, 3), 1.5], ()),
        "swish_backward": (activations.swish_backward, [_o(2, 3), _o(2, 3), _o(2, 3), 1.5], ()),
        "swiglu_forward": (activations.swiglu_forward, [_o(2, 3), _o(2, 3), _o(2, 3)], ()),
        "softmax_backward": (softmax.softmax_backward, [_o(2, 3), _o(2, 3), _o(2, 3)], ()),
        "causal_softmax_forward": (softmax.causal_softmax_forward, [_o(2, 3, 3), _o(2, 3, 3)], ()),
        "matmul_backward": (matmul.matmul_backward, [_o(2, 4), _o(4, 3), _o(2, 3), _o(2, 4), _o(4, 3)], (0, 1)),
        "bmm_forward": (matmul.bmm_forward, [_o(2, 3, 5), _o(2, 3, 4), _o(2, 4, 5)], ()),
        "rmsnorm_backward": (norm.rmsnorm_backward, [_o(2, 4), _o(4), _o(2, 4), _o(2, 4), _o(4), _o(2)], ()),
        "layernorm_forward": (norm.layernorm_forward, [_o(2, 4), _o(2), _o(2), _o(2, 4), _o(4), _o(4), 1e-5],
                              (5,)),
        "rope_backward": (rope.rope_backward, [_o(1, 3, 2, 4), _o(1, 3, 2, 4), cos, sin, 1, False], ()),
        "rope_tables": (rope.rope_tables, [_o(8, 2), _o(8, 2), 10000.0], ()),
        "rope_cache": (rope.rope_cache, [8, 4], ()),
        "cross_entropy_forward_backward": (loss.cross_entropy_forward_backward,
                                           [_o(3, 5), _o(3, 5), np.array([0, 4, 2])], ()),
        "mse_forward": (loss.mse_forward, [_o(2, 3), _o(2, 3)], ()),
        "adam_update": (optim.adam_update, [_o(2, 3), _o(2, 3), _o(2, 3), _o(2, 3), 1e-3, 0.9, 0.999, 1e-8,
                                            0.01, 2], ()),
        "embedding_forward_int32": (embedding.embedding_forward, [_o(1, 3, 4), ids.astype(np.int32), _o(5, 4)],
                                    ()),
    }


EW2 = [Arr("O", "d0 d1"), Arr("I", "d0 d1")]
EW3 = EW2 + [Arr("I", "d0 d1")]
ROUTE = {"route": ("blas", Choice("blas", "numba"))}
MASK = Arr("M", "B S")

# name -> (positional roles, {keyword: (valid value, role)}, the file that should fix it)
TABLE = {
    "add_forward": (EW3, {}, "elementwise"),
    "add_backward": ([Arr("O", "d0 d1"), Arr("O", "d0 d1"), Arr("I", "d0 d1")], {}, "elementwise"),
    "mul_forward": (EW3, {}, "elementwise"),
    "mul_backward": ([Arr("O", "d0 d1"), Arr("O", "d0 d1")] + [Arr("I", "d0 d1")] * 3, {}, "elementwise"),
    "scale_forward": (EW2 + [Real(checked=False)], {}, "elementwise"),
    "scale_backward": (EW2 + [Real(checked=False)], {}, "elementwise"),
    "relu_forward": (EW2, {}, "activations"),
    "relu_backward": (EW3, {}, "activations"),
    "gelu_forward": (EW2, {"approximate": ("tanh", Choice("none", "tanh"))}, "activations"),
    "gelu_backward": (EW3, {"approximate": ("none", Choice("none", "tanh"))}, "activations"),
    "silu_forward": (EW2, {}, "activations"),
    "silu_backward": (EW3, {}, "activations"),
    "swish_forward": (EW2 + [Real()], {}, "activations"),
    "swish_backward": (EW3 + [Real()], {}, "activations"),
    "swiglu_forward": (EW3, {}, "activations"),
    "swiglu_backward": ([Arr("O", "d0 d1"), Arr("O", "d0 d1")] + [Arr("I", "d0 d1")] * 3, {}, "activations"),
    "softmax_forward": ([Arr("O", "N C"), Arr("I", "N C")], {}, "softmax"),
    "softmax_backward": ([Arr("O", "N C"), Arr("I", "N C"), Arr("I", "N C")], {}, "softmax"),
    "causal_softmax_forward": ([Arr("O", "G T T"), Arr("I", "G T T")], {}, "softmax"),
    "causal_softmax_backward": ([Arr("O", "G T T"), Arr("I", "G T T"), Arr("I", "G T T")], {}, "softmax"),
    "linear_forward": ([Arr("O", "N Out"), Arr("I", "N In"), Arr("I", "Out In"), Arr("I", "Out", optional=True)],
                       ROUTE, "matmul"),
    "linear_backward": ([Arr("O", "N In", optional=True), Arr("O", "Out In"), Arr("O", "Out", optional=True),
                         Arr("I", "N Out"), Arr("I", "N In"), Arr("I", "Out In")], ROUTE, "matmul"),
    "matmul_forward": ([Arr("O", "M N"), Arr("I", "M K"), Arr("I", "K N")], ROUTE, "matmul"),
    "matmul_backward": ([Arr("O", "M K", optional=True), Arr("O", "K N", optional=True), Arr("I", "M N"),
                         Arr("I", "M K"), Arr("I", "K N")], ROUTE, "matmul"),
    "bmm_forward": ([Arr("O", "G M N"), Arr("I", "G M K"), Arr("I", "G K N")],
                    {"transpose_b": (False, Flag()), "route": ("numba", Choice("blas", "numba"))}, "matmul"),
    "bmm_backward": ([Arr("O", "G M K", optional=True), Arr("O", "G K N", optional=True), Arr("I", "G M N"),
                      Arr("I", "G M K"), Arr("I", "G K N")],
                     {"transpose_b": (False, Flag()), "route": ("numba", Choice("blas", "numba"))}, "matmul"),
    "rmsnorm_forward": ([Arr("O", "N C"), Arr("O", "N"), Arr("I", "N C"), Arr("I", "C"), Real(0, low_open=True)],
                        {}, "norm"),
    "rmsnorm_backward": ([Arr("O", "N C"), Arr("O", "C"), Arr("I", "N C"), Arr("I", "N C"), Arr("I", "C"),
                          Arr("I", "N")], {}, "norm"),
    "layernorm_forward": ([Arr("O", "N C"), Arr("O", "N"), Arr("O", "N"), Arr("I", "N C"), Arr("I", "C"),
                           Arr("I", "C", optional=True), Real(0, low_open=True)], {}, "norm"),
    "layernorm_backward": ([Arr("O", "N C"), Arr("O", "C"), Arr("O", "C", optional=True), Arr("I", "N C"),
                            Arr("I", "N C"), Arr("I", "C"), Arr("I", "N"), Arr("I", "N")], {}, "norm"),
    "rope_forward": ([Arr("O", "B T H 2*Dh"), Arr("I", "B T H 2*Dh"), Arr("I", "Tm Dh"), Arr("I", "Tm Dh"),
                      Int(0), Flag()], {}, "rope"),
    "rope_backward": ([Arr("O", "B T H 2*Dh"), Arr("I", "B T H 2*Dh"), Arr("I", "Tm Dh"), Arr("I", "Tm Dh"),
                       Int(0), Flag()], {}, "rope"),
    "rope_tables": ([Arr("O", "Tm Dh"), Arr("O", "Tm Dh"), Real(0, low_open=True)], {}, "rope"),
    "rope_cache": ([Int(1), Int(1)], {"theta": (10000.0, Real(0, low_open=True))}, "rope"),
    "embedding_forward": ([Arr("O", "B T C"), Arr("X", "B T", high="V"), Arr("I", "V C")], {}, "embedding"),
    "embedding_forward_int32": ([Arr("O", "B T C"), Arr("X", "B T", high="V"), Arr("I", "V C")], {}, "embedding"),
    "embedding_backward": ([Arr("O", "V C"), Arr("I", "B T C"), Arr("X", "B T", high="V")], {}, "embedding"),
    "attention_forward": ([Arr("O", "B T H D"), Arr("O", "B H T"), Arr("I", "B T H D"), Arr("I", "B S Hk D"),
                           Arr("I", "B S Hk D"), Flag()],
                          {"key_mask": (None, MASK), "scale": (None, Real(0, low_open=True, optional=True))},
                          "attention"),
    "attention_backward": ([Arr("O", "B T H D"), Arr("O", "B S Hk D"), Arr("O", "B S Hk D"), Arr("I", "B T H D"),
                            Arr("I", "B T H D"), Arr("I", "B S Hk D"), Arr("I", "B S Hk D"), Arr("I", "B T H D"),
                            Arr("I", "B H T"), Flag()],
                           {"key_mask": (None, MASK), "scale": (None, Real(0, low_open=True, optional=True)),
                            "accumulate": (True, Flag())}, "attention"),
    "attention_decode": ([Arr("O", "B H D"), Arr("I", "B H D"), Arr("I", "B Hk Tm D"), Arr("I", "B Hk Tm D"),
                          Int(1)],
                         {"key_mask": (None, Arr("M", "B Tm")), "scale": (None, Real(0, low_open=True, optional=True))},
                         "attention"),
    "kv_cache_write": ([Arr("O", "B Hk Tm D"), Arr("O", "B Hk Tm D"), Arr("I", "B Tn Hk D"), Arr("I", "B Tn Hk D"),
                        Int(0)], {}, "attention"),
    "cross_entropy_forward": ([Arr("O", "N"), Arr("I", "N V"), Arr("X", "N", high="V")],
                              {"ignore_index": (-100, Int())}, "loss"),
    "cross_entropy_backward": ([Arr("O", "N V"), Arr("I", "N V"), Arr("X", "N", high="V")],
                               {"ignore_index": (-100, Int()), "scale": (None, Real(optional=True))}, "loss"),
    "cross_entropy_forward_backward": ([Arr("O", "N V"), Arr("I", "N V"), Arr("X", "N", high="V")],
                                       {"ignore_index": (-100, Int())}, "loss"),
    "mse_forward": ([Arr("I", "d0 d1"), Arr("I", "d0 d1")], {}, "loss"),
    "mse_backward": ([Arr("O", "d0 d1"), Arr("I", "d0 d1"), Arr("I", "d0 d1")],
                     {"scale": (None, Real(optional=True))}, "loss"),
    "sgd_update": ([Arr("O", "d0 d1"), Arr("O", "d0 d1", optional=True), Arr("I", "d0 d1"), Real(0), Real(0)],
                   {"dampening": (0.0, Real()), "weight_decay": (0.01, Real(0)), "nesterov": (False, Flag()),
                    "first_step": (False, Flag())}, "optim"),
    "adam_update": ([Arr("O", "d0 d1"), Arr("O", "d0 d1"), Arr("O", "d0 d1"), Arr("I", "d0 d1"), Real(0),
                     Real(0, 1, high_open=True), Real(0, 1, high_open=True), Real(0, low_open=True), Real(0), Int(1)],
                    {}, "optim"),
    "adamw_update": ([Arr("O", "d0 d1"), Arr("O", "d0 d1"), Arr("O", "d0 d1"), Arr("I", "d0 d1"), Real(0),
                      Real(0, 1, high_open=True), Real(0, 1, high_open=True), Real(0, low_open=True), Real(0),
                      Int(1)], {}, "optim"),
}


# ------------------------------------------------------------------------------------------- references


def _rows(a):
    return a.reshape(-1, a.shape[-1]) if a.ndim else a


def _silu(x):
    return x * n_act.sigmoid(x)


def _softmax_bwd(dx, dout, out):
    return dx + out * (dout - (dout * out).sum(-1, keepdims=True))


def _causal_bwd(dx, dout, out):
    T = out.shape[-1]
    m = np.tril(np.ones((T, T)))
    g, o = dout * m, out * m
    return dx + m * (o * (g - (g * o).sum(-1, keepdims=True)))


def _rot(x, cos, sin, pos, inter, sign):
    """x (B, T, H, D) rotated by sign * angle with the given tables at rows pos..pos + T - 1."""
    B, T, H, D = x.shape
    c = cos[pos:pos + T][None, :, None, :]
    s = sign * sin[pos:pos + T][None, :, None, :]
    if inter:
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        a, b = x[..., :D // 2], x[..., D // 2:]
    out = np.empty_like(x)
    ra, rb = a * c - b * s, b * c + a * s
    if inter:
        out[..., 0::2], out[..., 1::2] = ra, rb
    else:
        out[..., :D // 2], out[..., D // 2:] = ra, rb
    return out


def _ln_bwd(dx, dw, db, dout, x, w, mean, rstd):
    m, r = mean.reshape(x.shape[:-1] + (1,)), rstd.reshape(x.shape[:-1] + (1,))
    xhat = (x - m) * r
    gw = dout * w
    C = x.shape[-1]
    ddx = r * (gw - gw.mean(-1, keepdims=True) - xhat * (gw * xhat).mean(-1, keepdims=True)) if C else gw
    out = {0: dx + ddx, 1: dw + _rows(dout * xhat).sum(0)}
    if db is not None:
        out[2] = db + _rows(dout).sum(0)
    return out


def _rms_bwd(dx, dw, dout, x, w, rstd):
    r = rstd.reshape(x.shape[:-1] + (1,))
    g = dout * w
    C = x.shape[-1]
    ddx = r * g - x * r**3 * (g * x).sum(-1, keepdims=True) / C if C else g
    return {0: dx + ddx, 1: dw + _rows(dout * x * r).sum(0)}


def _scale(scale, D):
    return 1.0 / math.sqrt(D) if scale is None else float(scale)


def _attention(q, k, v, causal, key_mask, scale):
    """tests/naive attention, also with no keys (S = 0: every row attends nothing, out 0, lse -inf)."""
    if k.shape[1] == 0:
        B, T, H, _ = q.shape
        return np.zeros(q.shape), np.full((B, H, T), -np.inf)
    return n_att.attention(q, k, v, causal, key_mask, scale)


def _att_fwd(v, kw):
    out, lse = _attention(v[2], v[3], v[4], bool(v[5]), kw.get("key_mask"), kw.get("scale"))
    return {0: out, 1: lse}


def _att_bwd(v, kw):
    dq, dk, dv, dout, q, k, vv, out, lse, causal = v
    B, T, H, D = q.shape
    S, Hk = k.shape[1], k.shape[2]
    rep = H // Hk if Hk else 1
    qh = q.transpose(0, 2, 1, 3)
    kh = n_att._expand(k, H) if Hk else np.zeros((B, H, S, D))
    vh = n_att._expand(vv, H) if Hk else np.zeros((B, H, S, D))
    scale = _scale(kw.get("scale"), D)
    ok = n_att.allowed(T, S, bool(causal), kw.get("key_mask"), B)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.where(ok & np.isfinite(lse)[..., None], np.exp(scale * qh @ kh.transpose(0, 1, 3, 2) - lse[..., None]),
                     0.0)
    do = dout.transpose(0, 2, 1, 3)
    dvh = p.transpose(0, 1, 3, 2) @ do
    dp = do @ vh.transpose(0, 1, 3, 2)
    ds = p * (dp - (do * out.transpose(0, 2, 1, 3)).sum(-1, keepdims=True))
    dqh = scale * ds @ kh
    dkh = scale * ds.transpose(0, 1, 3, 2) @ qh

    def fold(g):  # (B, H, S, D) -> (B, S, Hk, D), summing the query heads of each kv head
        return g.reshape(B, Hk, rep, S, D).sum(2).transpose(0, 2, 1, 3)

    acc = kw.get("accumulate", True)
    base = (dq, dk, dv) if acc else (0, 0, 0)
    return {0: base[0] + dqh.transpose(0, 2, 1, 3), 1: base[1] + fold(dkh), 2: base[2] + fold(dvh)}


def _att_decode(v, kw):
    out, q, kc, vc, length = v
    L = int(length)
    mask = kw.get("key_mask")
    if mask is not None:
        mask = np.asarray(mask)[:, :L]
    o, _ = _attention(q[:, None], kc[:, :, :L].transpose(0, 2, 1, 3), vc[:, :, :L].transpose(0, 2, 1, 3), False, mask,
                      kw.get("scale"))
    return {0: o[:, 0]}


def _kv_write(v, kw):
    kc, vc, k, vv, pos = v
    kc, vc, p = kc.copy(), vc.copy(), int(pos)
    kc[:, :, p:p + k.shape[1]] = k.transpose(0, 2, 1, 3)
    vc[:, :, p:p + k.shape[1]] = vv.transpose(0, 2, 1, 3)
    return {0: kc, 1: vc}


def _ce_fwd(v, kw):
    losses, mean = n_loss.cross_entropy(v[1], v[2].astype(np.int64), kw.get("ignore_index", -100))
    return {0: losses, "ret": mean}


def _ce_bwd(v, kw):
    g = n_loss.cross_entropy_grad(v[1], v[2].astype(np.int64), kw.get("ignore_index", -100), kw.get("scale"))
    return {0: v[0] + g}


def _ce_fb(v, kw):
    ig = kw.get("ignore_index", -100)
    _, mean = n_loss.cross_entropy(v[1], v[2].astype(np.int64), ig)
    return {0: n_loss.cross_entropy_grad(v[1], v[2].astype(np.int64), ig), "ret": mean}


def _sgd(v, kw):
    p, buf, g, lr, mom = v
    wd, damp = kw.get("weight_decay", 0.0), kw.get("dampening", 0.0)
    g = g + wd * p
    out = {}
    if mom != 0:
        buf = g.copy() if kw.get("first_step", False) else mom * buf + (1 - damp) * g
        out[1] = buf
        g = g + mom * buf if kw.get("nesterov", False) else buf
    out[0] = p - lr * g
    return out


def _adam(decoupled):
    def ref(v, kw):
        p, m, vv, g, lr, b1, b2, eps, wd, step = v
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        vv = b2 * vv + (1 - b2) * g * g
        p = p - lr / (1 - b1 ** step) * m / (np.sqrt(vv) / math.sqrt(1 - b2 ** step) + eps)
        return {0: p, 1: m, 2: vv}
    return ref


def _tables(Tm, Dh, theta):
    return n_rope.tables(Tm, 2 * Dh, theta) if Dh else (np.zeros((Tm, 0)), np.zeros((Tm, 0)))


def _mse_bwd(v, kw):
    scale = kw.get("scale")
    scale = (1.0 / v[1].size if v[1].size else 0.0) if scale is None else scale
    return {0: v[0] + 2.0 * (v[1] - v[2]) * scale}


def _relu_fwd(v, kw):
    return {0: n_act.relu(v[1])}


# name -> reference(values, keywords) -> {position or "ret": expected}; values are float64 copies of the
# arguments as passed (ids as int64, scalars as Python numbers)
REFS = {
    "add_forward": lambda v, kw: {0: v[1] + v[2]},
    "add_backward": lambda v, kw: {0: v[0] + v[2], 1: v[1] + v[2]},
    "mul_forward": lambda v, kw: {0: v[1] * v[2]},
    "mul_backward": lambda v, kw: {0: v[0] + v[2] * v[4], 1: v[1] + v[2] * v[3]},
    "scale_forward": lambda v, kw: {0: np.float32(v[2]) * v[1]},
    "scale_backward": lambda v, kw: {0: v[0] + np.float32(v[2]) * v[1]},
    "relu_forward": _relu_fwd,
    "relu_backward": lambda v, kw: {0: v[0] + v[1] * (v[2] > 0)},
    "gelu_forward": lambda v, kw: {0: n_act.gelu(v[1], kw.get("approximate", "none"))},
    "gelu_backward": lambda v, kw: {0: v[0] + v[1] * n_act.gelu_grad(v[2], kw.get("approximate", "none"))},
    "silu_forward": lambda v, kw: {0: _silu(v[1])},
    "silu_backward": lambda v, kw: {0: v[0] + v[1] * n_act.swish_grad(v[2], 1.0)},
    "swish_forward": lambda v, kw: {0: n_act.swish(v[1], v[2])},
    "swish_backward": lambda v, kw: {0: v[0] + v[1] * n_act.swish_grad(v[2], v[3])},
    "swiglu_forward": lambda v, kw: {0: _silu(v[1]) * v[2]},
    "swiglu_backward": lambda v, kw: {0: v[0] + v[2] * v[4] * n_act.swish_grad(v[3], 1.0),
                                      1: v[1] + v[2] * _silu(v[3])},
    "softmax_forward": lambda v, kw: {0: n_soft.softmax(v[1]) if v[1].shape[-1] else v[1]},
    "softmax_backward": lambda v, kw: {0: _softmax_bwd(*v)},
    "causal_softmax_forward": lambda v, kw: {0: n_soft.causal_softmax(v[1])},
    "causal_softmax_backward": lambda v, kw: {0: _causal_bwd(*v)},
    "linear_forward": lambda v, kw: {0: v[1] @ v[2].T + (0 if v[3] is None else v[3])},
    "linear_backward": lambda v, kw: {
        **({} if v[0] is None else {0: v[0] + v[3] @ v[5]}), 1: v[1] + v[3].T @ v[4],
        **({} if v[2] is None else {2: v[2] + v[3].sum(0)})},
    "matmul_forward": lambda v, kw: {0: v[1] @ v[2]},
    "matmul_backward": lambda v, kw: {**({} if v[0] is None else {0: v[0] + v[2] @ v[4].T}),
                                      **({} if v[1] is None else {1: v[1] + v[3].T @ v[2]})},
    "bmm_forward": lambda v, kw: {0: v[1] @ (v[2].transpose(0, 2, 1) if kw.get("transpose_b") else v[2])},
    "bmm_backward": lambda v, kw: {
        **({} if v[0] is None else {0: v[0] + v[2] @ (v[4] if kw.get("transpose_b") else v[4].transpose(0, 2, 1))}),
        **({} if v[1] is None else {1: v[1] + (v[2].transpose(0, 2, 1) @ v[3] if kw.get("transpose_b")
                                                 else v[3].transpose(0, 2, 1) @ v[2])})},
    "rmsnorm_forward": lambda v, kw: {0: n_norm.rmsnorm(v[2], v[3], v[4]),
                                      1: n_norm.rmsnorm_rstd(v[2], v[4]).reshape(v[1].shape)},
    "rmsnorm_backward": lambda v, kw: _rms_bwd(*v),
    "layernorm_forward": lambda v, kw: {0: n_norm.layernorm(v[3], v[4], v[5], v[6]),
                                        1: n_norm.layernorm_stats(v[3], v[6])[0].reshape(v[1].shape),
                                        2: n_norm.layernorm_stats(v[3], v[6])[1].reshape(v[2].shape)},
    "layernorm_backward": lambda v, kw: _ln_bwd(*v),
    "rope_forward": lambda v, kw: {0: _rot(v[1], v[2], v[3], int(v[4]), bool(v[5]), 1.0)},
    "rope_backward": lambda v, kw: {0: v[0] + _rot(v[1], v[2], v[3], int(v[4]), bool(v[5]), -1.0)},
    "rope_tables": lambda v, kw: dict(enumerate(_tables(v[0].shape[0], v[0].shape[1], v[2]))),
    "rope_cache": lambda v, kw: {"ret": _tables(int(v[0]), int(v[1]) // 2, kw.get("theta", 10000.0))},
    "embedding_forward": lambda v, kw: {0: v[2][v[1].astype(np.int64)]},
    "embedding_forward_int32": lambda v, kw: {0: v[2][v[1].astype(np.int64)]},
    "embedding_backward": lambda v, kw: {0: _scatter(v[0], v[1], v[2])},
    "attention_forward": _att_fwd,
    "attention_backward": _att_bwd,
    "attention_decode": _att_decode,
    "kv_cache_write": _kv_write,
    "cross_entropy_forward": _ce_fwd,
    "cross_entropy_backward": _ce_bwd,
    "cross_entropy_forward_backward": _ce_fb,
    "mse_forward": lambda v, kw: {"ret": n_loss.mse(v[0], v[1])},
    "mse_backward": _mse_bwd,
    "sgd_update": _sgd,
    "adam_update": _adam(False),
    "adamw_update": _adam(True),
}


def _scatter(dw, dout, ids):
    out = dw.copy()
    np.add.at(out, ids.astype(np.int64).reshape(-1), dout.reshape(ids.size, dw.shape[-1]))
    return out


# ------------------------------------------------------------------------------------------- valid calls


def _all_recipes():
    return {**recipes(), **extra_recipes()}


@functools.cache
def _static():
    """The recipes once, for their structure (names, shapes): never mutated."""
    return _all_recipes()


@functools.cache
def _names(name):
    return list(inspect.signature(_static()[name][0]).parameters)


@functools.cache
def _base_sizes(name):
    return _bind(name, _static()[name][1])


def _dims(spec, sizes):
    out = []
    for s in spec:
        if s.isdigit():
            out.append(int(s))
        elif s.startswith("2*"):
            out.append(2 * sizes[s[2:]])
        else:
            out.append(sizes[s])
    return tuple(out)


def _bind(name, args):
    """The symbol sizes of the recipe's arrays."""
    sizes = {}
    for role, a in zip(TABLE[name][0], args, strict=False):
        if isinstance(role, Arr) and isinstance(a, np.ndarray):
            for s, n in zip(role.spec, a.shape, strict=True):
                if s.startswith("2*"):
                    sizes.setdefault(s[2:], n // 2)
                elif not s.isdigit():
                    sizes.setdefault(s, n)
    if name == "embedding_backward" or name.startswith("embedding_forward"):
        sizes["V"] = 5
    if name.startswith("cross_entropy"):
        sizes["V"] = 5
    return sizes


def _fill(name, role, shape, g):
    if role.kind == "X":
        return g.integers(0, max(_HIGH[name], 1), shape) if _HIGH[name] else np.zeros(shape, np.int64)
    if role.kind == "M":
        m = (g.random(shape) < 0.7).astype(np.uint8)
        if m.ndim == 2 and m.shape[1]:
            m[:, 0] = 1
        return m
    return g.standard_normal(shape).astype(F)


_HIGH: dict[str, int] = {}


def build(name, sizes=None, salt="base"):
    """(function, positional args, keywords) of a valid call of ``name``: the recipe's (sizes None) or one of
    the given symbol sizes, float arrays drawn at random."""
    fn, args, _ = _all_recipes()[name]
    roles, kws, _ = TABLE[name]
    base = _bind(name, args)
    sizes = dict(base if sizes is None else sizes)
    _HIGH[name] = sizes.get("V", 0)
    g = rng(name, salt)
    out = []
    for role, a in zip(roles, args, strict=True):
        if isinstance(role, Arr):
            shape = _dims(role.spec, sizes)
            if role.kind == "X" and sizes == base and isinstance(a, np.ndarray):
                out.append(a.copy())
            else:
                out.append(_fill(name, role, shape, g))
        else:
            out.append(a)
    kw = {}
    for k, (val, role) in kws.items():
        kw[k] = _fill(name, role, _dims(role.spec, sizes), g) if isinstance(role, Arr) and k == "key_mask" \
            and salt.startswith("mask") else val
    _prepare(name, out, kw, sizes)
    return fn, out, kw


def _prepare(name, args, kw, sizes):
    """Make derived inputs consistent: the positions of rope and the caches, attention's saved out and lse."""
    if name.startswith("rope_") and name != "rope_tables" and name != "rope_cache":
        args[4] = min(args[4], max(sizes["Tm"] - sizes["T"], 0))
    if name == "kv_cache_write":
        args[4] = min(args[4], max(sizes["Tm"] - sizes["Tn"], 0))
    if name == "attention_decode":
        args[4] = max(1, min(args[4], sizes["Tm"]))
    if name == "attention_backward" and sizes["Hk"] and sizes["H"] % sizes["Hk"] == 0:
        try:  # the saved out and lse of a forward with these arguments (left as drawn when they are bad)
            q, k, v = (a.astype(np.float64) for a in args[4:7])
            out, lse = _attention(q, k, v, bool(args[9]), kw.get("key_mask"), kw.get("scale"))
            args[7], args[8] = np.ascontiguousarray(out, F), np.ascontiguousarray(lse, F)
        except (TypeError, ValueError):
            pass


def _random_sizes(name, g):
    base = _base_sizes(name)
    sizes = {s: int(g.integers(1, 6)) for s in base}
    if "Hk" in sizes:
        sizes["H"] = sizes["Hk"] * int(g.integers(1, 3))
    if "S" in sizes and "T" in sizes:
        sizes["S"] = max(sizes["S"], sizes["T"])  # every causal query row has a key
    if "Tm" in sizes:
        sizes["Tm"] = sizes["Tm"] + sizes.get("T", 0) + sizes.get("Tn", 0)
    if name.startswith("rope_") and name not in ("rope_tables", "rope_cache"):
        sizes["Tm"] = max(sizes["Tm"], sizes["T"] + 1)
    if "V" in sizes:
        sizes["V"] = max(sizes["V"], 2)
    return sizes


# ------------------------------------------------------------------------------------------------ checks


def _snapshot(x):
    if isinstance(x, np.ndarray) and x.dtype.kind in "iub":
        return x.astype(np.int64)
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)
    if x is None or isinstance(x, str):
        return x
    return as_f64(x)


def _run_checked(name, fn, args, kw):
    """Call ``fn`` and return what the check needs: the arguments after the call, the return value and the
    float64 snapshot of the arguments before it."""
    snap = [_snapshot(a) for a in args]
    snap_kw = {k: _snapshot(v) for k, v in kw.items()}
    ret = fn(*args, **kw)
    return args, kw, ret, snap, snap_kw


def _checker(name):
    def check(result):
        args, kw, ret, snap, snap_kw = result
        if any(s is None and a is not None for s, a in zip(snap, args, strict=True)):
            return "accepted an argument that is not numbers"
        try:
            want = REFS[name](snap, snap_kw)
        except Exception as e:
            return f"accepted arguments the reference cannot use ({type(e).__name__}: {e})"
        names = _names(name)
        for key, w in want.items():
            if key == "ret":
                if isinstance(w, tuple):
                    for i, (gw, ww) in enumerate(zip(ret, w, strict=True)):
                        p = compare(gw, ww, f"returned[{i}]")
                        if p:
                            return p
                    continue
                p = compare(ret, w, "the returned value")
            else:
                p = compare(args[key], w, names[key])
            if p:
                return p
        for i, (role, a) in enumerate(zip(TABLE[name][0], args, strict=True)):  # inputs stay as they were
            if isinstance(role, Arr) and role.kind != "O" and isinstance(a, np.ndarray) and snap[i] is not None:
                if not any(j != i and isinstance(b, np.ndarray) and np.shares_memory(a, b) for j, b in enumerate(args)):
                    p = compare(a, snap[i], f"{names[i]} (an input, changed by the call)", rtol=0, atol=0)
                    if p:
                        return p
        return None
    return check


# --------------------------------------------------------------------------------------------- mutations


def _shared(name, sym):
    """Whether the symbol appears in two array arguments or in a derived form: changing it in one argument
    makes the call inconsistent."""
    n = sum(sym in role.spec or f"2*{sym}" in role.spec for role in TABLE[name][0] if isinstance(role, Arr))
    n += sum(sym in role.spec for _, role in TABLE[name][1].values() if isinstance(role, Arr))
    return n >= 2


def _array_mutations(name, i, role, a, args):
    """(label, make(value) -> new value, expect, names) for array argument ``i`` whose valid value is ``a``."""
    everyone = tuple(_names(name))
    me = (_names(name)[i],)
    out = []
    if not role.optional:
        out.append(("None", lambda a: None, "error", me))
    out += [("list", lambda a: a.tolist(), "either", me), ("str", lambda a: "abc", "error", me),
            ("dict", lambda a: {}, "error", me), ("bool", lambda a: True, "error", me),
            ("0d", lambda a: np.float32(1.0), "error", me),
            ("noncontig", noncontig, "either", me), ("extra-axis", lambda a: a[None], "error", everyone)]
    if a.ndim >= 2:
        out.append(("drop-axis", lambda a: np.ascontiguousarray(a[0]), "error", everyone))
    for ax, sym in enumerate(role.spec):
        if not sym.isdigit() and _shared(name, sym.removeprefix("2*")) or sym.startswith("2*"):
            def grow(a, ax=ax):
                shape = list(a.shape)
                shape[ax] += 1
                b = np.zeros(shape, a.dtype)
                b[tuple(slice(0, n) for n in a.shape)] = a
                return b
            out.append((f"axis{ax}+1", grow, "error", everyone))
    if role.kind in "OI":
        for label, dt in DTYPES:  # float64 is valid: a mismatch with the others, named by any of them
            out.append((label, lambda a, dt=dt: with_dtype(a, dt), "either", everyone if label == "float64" else me))
    if role.kind == "O":
        out.append(("readonly", readonly, "error", me))
    if role.kind == "X":
        high = _HIGH.get(name, 5)
        for label, val in (("negative", -1), ("=high", high), ("huge", 2**40), ("int64-min", -(2**63))):
            def put(a, val=val):
                b = a.astype(np.int64)
                b.flat[-1] = val
                return b
            out.append((f"id-{label}", put, "error", me))
        out += [("id-float", lambda a: a.astype(np.float64), "either", me),
                ("id-uint8", lambda a: a.astype(np.uint8), "either", me),
                ("id-int16", lambda a: a.astype(np.int16), "either", me),
                ("id-bool", lambda a: a.astype(bool), "either", me),
                ("id-fraction", lambda a: a.astype(np.float64) + 0.5, "error", me)]
    return out


def _mask_mutations(name, key, role):
    me = (key,)
    return [("wrong-shape", lambda m: np.ones((m.shape[0], m.shape[1] + 1), np.uint8), "error", me),
            ("str", lambda m: "abc", "error", me), ("float", lambda m: m.astype(np.float32), "either", me),
            ("bool", lambda m: m.astype(bool), "ok", me), ("list", lambda m: m.tolist(), "either", me),
            ("all-masked", lambda m: np.zeros_like(m), "either", me), ("1-D", lambda m: m[0], "error", me),
            ("noncontig", noncontig, "either", me), ("int64", lambda m: m.astype(np.int64), "ok", me),
            ("nan", lambda m: np.full(m.shape, np.nan, np.float32), "either", me)]


def _case(name, label, make, expect, names):
    """A Case calling ``make()`` -> (fn, args, kw) and checking any result against the reference."""
    def call():
        try:
            fn, args, kw = make()
        except Exception as e:
            raise HarnessError(f"building the call: {type(e).__name__}: {e}") from e
        return _run_checked(name, fn, args, kw)
    return Case(id=f"kernels/{name}/{label}", call=call, expect=expect, names=names, check=_checker(name),
                fix=f"qorus_jit/kernels/{TABLE[name][2]}.py")


def _cases_of(name):
    roles, kws, _ = TABLE[name]
    names = _names(name)
    fn, args0, kw0 = build(name)
    out = [_case(name, "valid", lambda: build(name), "ok", ())]
    for r in range(3 if _base_sizes(name) else 0):
        sizes = _random_sizes(name, rng(name, "sizes", r))
        out.append(_case(name, f"valid-random-{r}", lambda s=sizes, r=r: build(name, s, f"r{r}"), "ok", ()))
    if "key_mask" in kw0:
        def with_mask():
            fn, args, kw = build(name)
            kw["key_mask"] = _fill(name, kws["key_mask"][1], _dims(kws["key_mask"][1].spec, _bind(name, args)),
                                   rng(name, "mask"))
            _prepare(name, args, kw, _bind(name, args))
            return fn, args, kw
        out.append(_case(name, "valid-mask", with_mask, "ok", ()))
    every = tuple(names) + tuple(kws)
    for sym in _base_sizes(name):
        sizes = {**_base_sizes(name), sym: 0}
        out.append(_case(name, f"size0-{sym}", lambda s=sizes: build(name, s, "zero"), "either", every))

    for i, role in enumerate(roles):
        arg = names[i]
        if isinstance(role, Arr):
            for label, mut, expect, nm in _array_mutations(name, i, role, args0[i], args0):
                def make(i=i, mut=mut):
                    fn, args, kw = build(name)
                    args[i] = mut(args[i])
                    return fn, args, kw
                out.append(_case(name, f"{arg}/{label}", make, expect, nm))
            if role.kind == "O":
                for j, other in enumerate(roles):
                    if isinstance(other, Arr) and other.kind == "I" and args0[j] is not None:
                        def alias(i=i, j=j):
                            fn, args, kw = build(name)
                            args[i] = args[j]
                            return fn, args, kw

                        def shifted(i=i, j=j):
                            fn, args, kw = build(name)
                            args[i], args[j] = overlapping(args[i], args[j])
                            return fn, args, kw
                        if args0[i] is not None and args0[i].shape == args0[j].shape:
                            out.append(_case(name, f"{arg}/alias-{names[j]}", alias, "either", (arg, names[j])))
                        out.append(_case(name, f"{arg}/overlap-{names[j]}", shifted, "either", (arg, names[j])))
        else:
            for label, val, expect in scalar_mutations(role, args0[i]):
                def make(i=i, val=val):
                    fn, args, kw = build(name)
                    args[i] = val
                    return fn, args, kw
                out.append(_case(name, f"{arg}/{label}", make, expect, (arg,)))
    for key, (val, role) in kws.items():
        if isinstance(role, Arr):
            for label, mut, expect, nm in _mask_mutations(name, key, role):
                def make(key=key, mut=mut, role=role):
                    fn, args, kw = build(name)
                    kw[key] = m = _fill(name, role, _dims(role.spec, _bind(name, args)), rng(name, "mask"))
                    _prepare(name, args, kw, _bind(name, args))
                    kw[key] = mut(m)
                    return fn, args, kw
                out.append(_case(name, f"{key}/{label}", make, expect, nm))
        else:
            for label, v, expect in scalar_mutations(role, val):
                def make(key=key, v=v):
                    fn, args, kw = build(name)
                    kw[key] = v
                    _prepare(name, args, kw, _bind(name, args))
                    return fn, args, kw
                out.append(_case(name, f"{key}/{label}", make, expect, (key,)))
    return out


def _grad_list_cases():
    """grad_norm and clip_grad_norm take a list of arrays."""
    g = rng("grads")
    good = [g.standard_normal((2, 3)).astype(F), g.standard_normal(4).astype(F)]

    def norm_ref(gs):
        return math.sqrt(sum(float((np.asarray(x, np.float64) ** 2).sum()) for x in gs))

    def make(fn, grads, *rest):
        def call():
            before = [np.array(x, np.float64) if isinstance(x, np.ndarray) else None for x in
                      (grads if isinstance(grads, (list, tuple)) else [grads])]
            return fn(grads, *rest), grads, before, rest
        return call

    def check_norm(res):
        ret, grads, before, rest = res
        return compare(ret, norm_ref(before), "the norm") if all(b is not None for b in before) else \
            "accepted a list holding something that is not an array"

    def check_clip(res):
        ret, grads, before, rest = res
        p = check_norm(res)
        if p:
            return p
        n, max_norm = norm_ref(before), float(rest[0])
        coef = max_norm / (n + 1e-6)
        gs = grads if isinstance(grads, (list, tuple)) else [grads]
        for k, (x, b) in enumerate(zip(gs, before, strict=True)):
            want = b * coef if math.isfinite(n) and coef < 1 else b
            p = compare(x, want, f"grads[{k}]")
            if p:
                return p
        return None

    variants = [
        ("valid", lambda: [x.copy() for x in good], "ok", ()),
        ("empty-list", lambda: [], "ok", ()),
        ("tuple", lambda: tuple(x.copy() for x in good), "ok", ()),
        ("one-array", lambda: good[0].copy(), "ok", ()),
        ("None", lambda: None, "error", ("grads",)),
        ("dict", lambda: {"a": good[0].copy()}, "either", ("grads",)),
        ("generator", lambda: (x.copy() for x in good), "either", ("grads",)),
        ("list-with-None", lambda: [good[0].copy(), None], "error", ("grads", "grads[1]")),
        ("list-with-list", lambda: [good[0].copy(), [1.0, 2.0]], "either", ("grads", "grads[1]")),
        ("float16", lambda: [good[0].astype(np.float16)], "either", ("grads", "grads[0]")),
        ("int8", lambda: [good[0].astype(np.int8)], "either", ("grads", "grads[0]")),
        ("noncontig", lambda: [noncontig(good[0])], "either", ("grads", "grads[0]")),
        ("object", lambda: [with_dtype(good[0], object)], "either", ("grads", "grads[0]")),
        ("nan", lambda: [np.full(3, np.nan, F)], "ok", ()),
        ("big-endian", lambda: [good[0].astype(">f4")], "either", ("grads", "grads[0]")),
        ("mixed-dtypes", lambda: [good[0].copy(), good[1].astype(np.float64)], "either", ("grads", "grads[1]")),
        ("size0", lambda: [np.zeros((0, 3), F)], "ok", ()),
    ]
    out = []
    for label, grads, expect, names in variants:
        out.append(Case(f"kernels/grad_norm/grads/{label}", lambda grads=grads: make(optim.grad_norm, grads())(),
                        expect, names, check_norm, fix="qorus_jit/kernels/optim.py"))
        out.append(Case(f"kernels/clip_grad_norm/grads/{label}",
                        lambda grads=grads: make(optim.clip_grad_norm, grads(), 0.5)(), expect, names, check_clip,
                        fix="qorus_jit/kernels/optim.py"))
    for label, v, expect in scalar_mutations(Real(0, finite=False), 0.5):
        out.append(Case(f"kernels/clip_grad_norm/max_norm/{label}",
                        lambda v=v: make(optim.clip_grad_norm, [x.copy() for x in good], v)(), expect,
                        ("max_norm",), check_clip, fix="qorus_jit/kernels/optim.py"))
    ro = [readonly(good[0])]
    out.append(Case("kernels/clip_grad_norm/grads/readonly", lambda: make(optim.clip_grad_norm, ro, 1e-3)(),
                    "error", ("grads", "grads[0]"), check_clip, fix="qorus_jit/kernels/optim.py"))
    return out


def _work_cases():
    """attention's ``work`` scratch and the helpers that size it."""
    fix = "qorus_jit/kernels/attention.py"
    out = []
    q_shape, k_shape = (1, 3, 2, 4), (1, 3, 2, 4)
    for label, val, expect in (("too-small", lambda n: np.zeros(1, F), "error"),
                               ("float64", lambda n: np.zeros(n, np.float64), "either"),
                               ("2-D", lambda n: np.zeros((1, n), F), "error"),
                               ("readonly", lambda n: readonly(np.zeros(n, F)), "error"),
                               ("list", lambda n: [0.0] * n, "either"),
                               ("noncontig", lambda n: noncontig(np.zeros(n, F)), "either"),
                               ("big", lambda n: np.zeros(n + 100, F), "ok")):
        for name in ("attention_forward", "attention_backward"):
            def make(name=name, val=val):
                fn, args, kw = build(name)
                kw["work"] = val(attention.attention_work_size(q_shape, k_shape))
                return fn, args, kw
            out.append(_case(name, f"work/{label}", make, expect, ("work",)))
    for label, qs, ks, expect in (("valid", q_shape, k_shape, "ok"), ("None", None, k_shape, "error"),
                                  ("3-D", (1, 3, 2), k_shape, "error"), ("str", "abc", k_shape, "error"),
                                  ("negative", (1, -3, 2, 4), k_shape, "error"),
                                  ("np.int64", tuple(np.int64(n) for n in q_shape), k_shape, "ok"),
                                  ("floats", (1.0, 3.0, 2.0, 4.0), k_shape, "either"),
                                  ("k-None", q_shape, None, "error")):
        out.append(Case(f"kernels/attention_work_size/{label}",
                        lambda qs=qs, ks=ks: attention.attention_work_size(qs, ks), expect, ("q_shape", "k_shape"),
                        (lambda r: None if isinstance(r, (int, np.integer)) and r >= 0 else f"returned {r!r}"),
                        fix=fix))
    for label, args, expect in (("valid", (1, 2, 3), "ok"), ("zero-B", (0, 2, 3), "either"),
                                ("None", (None, 2, 3), "error"), ("str", ("1", 2, 3), "error"),
                                ("negative", (-1, 2, 3), "error"), ("np.int64", (np.int64(1), 2, 3), "ok")):
        out.append(Case(f"kernels/backward_chunks/{label}", lambda args=args: attention.backward_chunks(*args), expect,
                        ("B", "Hkv", "S"),
                        (lambda r: None if isinstance(r, (int, np.integer)) and r >= 1 else f"returned {r!r}"),
                        fix=fix))
    return out


def cases():
    out = []
    for name in TABLE:
        out += _cases_of(name)
    return out + _grad_list_cases() + _work_cases()
