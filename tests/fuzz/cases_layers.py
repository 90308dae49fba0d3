"""Fuzz cases of the layers: constructor arguments, forward inputs, backward gradients and their variants
(``out=``, ``accumulate=``, ``residual=``), decoding state, and the Layer and Graph methods a user calls.

A call that is valid but unusual must give what the plain call gives on the same values: a float64, float16,
big-endian, int8 or object array, a list, a non-contiguous or read-only view of the canonical input is
compared with a fresh layer's output on that input as float32; an empty batch must give an empty output of
the right shape.
"""

from __future__ import annotations

import numpy as np

from qorus_jit.layers import (
    GELU,
    Activation,
    Add,
    DecodeState,
    Embedding,
    FeedForward,
    Graph,
    KVCache,
    LayerNorm,
    Linear,
    MultiHeadAttention,
    PositionEmbedding,
    ReLU,
    RMSNorm,
    Sequential,
    SiLU,
    Softmax,
    Swish,
    TransformerBlock,
)
from tests.fuzz.calls import Custom, Seed, call_cases, same
from tests.fuzz.harness import Case, HarnessError
from tests.fuzz.mutate import DTYPES, Choice, Flag, Int, Real, noncontig, overlapping, readonly, rng, with_dtype

F = np.float32


class Spec:
    """A layer to fuzz: ``make(**kw)``, the valid keywords and their roles, its forward inputs (``inputs()``
    -> list; ``kinds``: "x" a float array, "ids" token ids, "mask" a key mask) and forward keywords, the
    output shape for an input shape, and what its inputs accept (``any_shape``: any ndim and last axis)."""

    def __init__(self, name, make, kw, roles, inputs, kinds, fix, out_shape, any_shape=False, min_ndim=1,
                 forward_kw=None, backward=True):
        self.name, self.make, self.kw, self.roles, self.inputs, self.kinds = name, make, kw, roles, inputs, kinds
        self.fix, self.out_shape, self.any_shape, self.min_ndim = fix, out_shape, any_shape, min_ndim
        self.forward_kw, self.backward = forward_kw or {}, backward

    def layer(self, **over):
        return self.make(**{**self.kw, **over})


def _x(*shape, salt="x"):
    return rng(salt, *shape).standard_normal(shape).astype(F)


def _ids(shape, high):
    return rng("ids", *shape).integers(0, high, shape)


def _last(n):
    return lambda s: s[:-1] + (n,)


SPECS = [
    Spec("Linear", Linear, dict(in_features=4, out_features=3, bias=True, rng=0),
         dict(in_features=Int(1), out_features=Int(1), bias=Flag(), rng=Seed()),
         lambda: [_x(2, 4)], ["x"], "linear", _last(3)),
    Spec("LayerNorm", LayerNorm, dict(dim=4, eps=1e-5, bias=True), dict(dim=Int(1), eps=Real(0, low_open=True),
                                                                         bias=Flag()),
         lambda: [_x(2, 4)], ["x"], "norm", lambda s: s),
    Spec("RMSNorm", RMSNorm, dict(dim=4, eps=1e-5), dict(dim=Int(1), eps=Real(0, low_open=True)),
         lambda: [_x(2, 4)], ["x"], "norm", lambda s: s),
    Spec("Activation", Activation, dict(name="gelu_tanh"), dict(name=Choice("relu", "gelu", "gelu_tanh", "silu")),
         lambda: [_x(2, 3)], ["x"], "activations", lambda s: s, any_shape=True),
    Spec("ReLU", ReLU, {}, {}, lambda: [_x(2, 3)], ["x"], "activations", lambda s: s, any_shape=True),
    Spec("SiLU", SiLU, {}, {}, lambda: [_x(2, 3)], ["x"], "activations", lambda s: s, any_shape=True),
    Spec("GELU", GELU, dict(approximate="tanh"), dict(approximate=Choice("none", "tanh")),
         lambda: [_x(2, 3)], ["x"], "activations", lambda s: s, any_shape=True),
    Spec("Swish", Swish, dict(beta=1.5), dict(beta=Real()), lambda: [_x(2, 3)], ["x"], "activations",
         lambda s: s, any_shape=True),
    Spec("Softmax", Softmax, {}, {}, lambda: [_x(2, 3)], ["x"], "activations", lambda s: s, any_shape=True),
    Spec("Embedding", Embedding, dict(num_embeddings=5, dim=4, rng=0),
         dict(num_embeddings=Int(1), dim=Int(1), rng=Seed()),
         lambda: [_ids((2, 3), 5)], ["ids"], "embedding", lambda s: s + (4,)),
    Spec("PositionEmbedding", PositionEmbedding, dict(max_positions=8, dim=4, rng=0),
         dict(max_positions=Int(1), dim=Int(1), rng=Seed()),
         lambda: [_x(1, 3, 4)], ["x"], "embedding", lambda s: s, min_ndim=3, forward_kw={"pos": (2, Int(0))}),
    Spec("MultiHeadAttention", MultiHeadAttention,  # rope=None (no rotary positions) is valid: see _EXPECTS
         dict(dim=8, n_heads=2, n_kv_heads=1, causal=True, rope="rotate_half", rope_theta=10000.0, max_seq_len=8,
              bias=True, out_bias=False, fused_qkv=False, rng=0),
         dict(dim=Int(1), n_heads=Int(1), n_kv_heads=Int(1, optional=True), causal=Flag(),
              rope=Choice("rotate_half", "interleaved"), rope_theta=Real(0, low_open=True), max_seq_len=Int(1),
              bias=Flag(), out_bias=Flag(), fused_qkv=Flag(), rng=Seed(),
              names=Custom(("str", "abc", "error"), ("list", ["q_proj"], "error"), ("None", None, "ok"),
                           ("int-values", {"q_proj": 1}, "error"), ("unknown-key", {"nope": "x"}, "either"))),
         lambda: [_x(1, 3, 8)], ["x"], "attention", lambda s: s, min_ndim=3,
         forward_kw={"key_mask": (None, "mask")}),
    Spec("FeedForward", FeedForward, dict(dim=4, hidden_dim=8, kind="swiglu", bias=False, rng=0),
         dict(dim=Int(1), hidden_dim=Int(1), kind=Choice("swiglu", "gelu", "relu"), bias=Flag(), rng=Seed()),
         lambda: [_x(2, 4)], ["x"], "feedforward", lambda s: s),
    Spec("FeedForward-gelu", FeedForward, dict(dim=4, hidden_dim=8, kind="gelu", bias=True, rng=0), {},
         lambda: [_x(2, 4)], ["x"], "feedforward", lambda s: s),
    Spec("TransformerBlock", TransformerBlock,
         dict(dim=8, n_heads=2, hidden_dim=16, n_kv_heads=1, norm="rms", norm_eps=1e-5, prenorm=True, mlp="swiglu",
              causal=True, rope="rotate_half", max_seq_len=8, rng=0),
         dict(dim=Int(1), n_heads=Int(1), hidden_dim=Int(1), n_kv_heads=Int(1, optional=True),
              norm=Choice("rms", "layer"), norm_eps=Real(0, low_open=True), prenorm=Flag(),
              mlp=Choice("swiglu", "gelu"), causal=Flag(), max_seq_len=Int(1), rng=Seed()),
         lambda: [_x(1, 3, 8)], ["x"], "block", lambda s: s, min_ndim=3, forward_kw={"key_mask": (None, "mask")}),
    Spec("TransformerBlock-postnorm", TransformerBlock,
         dict(dim=8, n_heads=2, hidden_dim=16, norm="layer", prenorm=False, mlp="gelu", causal=False, rope=None,
              max_seq_len=8, attn_bias=True, out_bias=True, rng=0), {},
         lambda: [_x(1, 3, 8)], ["x"], "block", lambda s: s, min_ndim=3, forward_kw={"key_mask": (None, "mask")}),
    Spec("Add", Add, {}, {}, lambda: [_x(2, 3, salt="a"), _x(2, 3, salt="b")], ["x", "x"], "graph", lambda s: s,
         any_shape=True),
    Spec("Sequential", lambda: Sequential(Linear(4, 3, rng=0), ReLU(), Linear(3, 2, rng=1)), {}, {},
         lambda: [_x(2, 4)], ["x"], "graph", _last(2)),
]

_ARG_NAMES = {"Add": ("a", "b")}
_EXPECTS = {"MultiHeadAttention": {("rope", "None"): "either"}}  # mutations that are valid for that layer


def _arg_name(spec, i):
    if spec.name in _ARG_NAMES:
        return _ARG_NAMES[spec.name][i]
    return spec.kinds[i] if spec.kinds[i] != "x" or i == 0 else f"x{i}"


def _forward(spec, layer, inputs, kw=None):
    return layer.forward(*inputs, **(kw or {}))


def _copy(y):
    return None if y is None else np.array(y)


def _f32(v):
    """The canonical float32 input holding the values of a mutated one (None if it has none)."""
    try:
        return np.array(v, dtype=F)  # a copy: the original may be written by the call
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- forward


def _value_mutations():
    """(label, mutate, expect): the same values in another container (compared with the float32 call)."""
    out = [("list", lambda a: a.tolist(), "either"), ("noncontig", noncontig, "either"),
           ("readonly", readonly, "ok")]
    out += [(label, (lambda a, dt=dt: with_dtype(a, dt)), "either") for label, dt in DTYPES]
    return out


def _forward_cases(spec):
    fix = f"qorus_jit/layers/{spec.fix}.py"
    out = []
    for i, kind in enumerate(spec.kinds):
        name = _arg_name(spec, i)
        names = (name,) if spec.name != "Add" else ("a", "b")

        def case(label, mutate, expect, want, names=names, i=i, name=name):
            """``want(base output, mutated input)`` -> expected output, or a string: the problem."""
            def call():
                inputs = spec.inputs()
                try:
                    m = mutate(inputs[i])
                except Exception as e:
                    raise HarnessError(f"mutating: {e}") from e
                args = list(inputs)
                args[i] = m
                y = _forward(spec, spec.layer(), args)
                return _copy(y), args, inputs
            def check(res):
                y, args, inputs = res
                w = want(args[i], inputs)
                return w if isinstance(w, str) else same(y, w, "output")
            out.append(Case(f"layers/{spec.name}/forward/{name}/{label}", call, expect, names, check, fix=fix))

        def like_f32(m, inputs, i=i, kind=kind):
            c = _f32(m) if kind != "ids" else np.asarray(m).astype(np.int64)
            if c is None:
                return "accepted an input without numbers"
            args = list(inputs)
            args[i] = c
            return _copy(_forward(spec, spec.layer(), args))

        def shape_only(m, inputs, i=i):
            return np.zeros(spec.out_shape(np.shape(m)), F) if spec.name != "Add" else np.zeros(np.shape(m), F)

        for label, v in (("None", None), ("str", "abc"), ("dict", {}), ("bool", True)):
            case(label, lambda a, v=v: v, "error", lambda m, inputs: "accepted")
        if kind == "ids":
            for label, mut in (("list", lambda a: a.tolist()), ("noncontig", noncontig), ("int32",
                               lambda a: a.astype(np.int32)), ("readonly", readonly), ("uint8",
                               lambda a: a.astype(np.uint8)), ("int16", lambda a: a.astype(np.int16)),
                               ("float-integral", lambda a: a.astype(np.float64)), ("3-D", lambda a: a[None]),
                               ("1-D", lambda a: a[0])):
                case(label, mut, "either", like_f32)
            for label, v in (("negative", -1), ("=vocab", 5), ("huge", 2**40), ("int64-min", -(2**63))):
                def put(a, v=v):
                    b = a.copy()
                    b.flat[-1] = v
                    return b
                case(f"id-{label}", put, "error", lambda m, inputs: "accepted")
            case("id-fraction", lambda a: a + 0.5, "error", lambda m, inputs: "accepted")
            case("0-d", lambda a: np.int64(1), "either", like_f32)
            case("size0-T", lambda a: a[:, :0], "either", shape_only)
            case("size0-B", lambda a: a[:0], "either", shape_only)
            continue
        for label, mut, expect in _value_mutations():
            case(label, mut, expect, like_f32)
        case("0-d", lambda a: np.float32(1.0), "either" if spec.any_shape else "error", like_f32)
        case("size0-first", lambda a: a[:0], "either", shape_only)
        last_names = names if spec.name != "Add" else ("a", "b")
        if spec.any_shape:
            case("size0-last", lambda a: a[..., :0], "either" if spec.name != "Add" else "error", shape_only,
                 last_names)
            case("extra-axis", lambda a: a[None], "either" if spec.name != "Add" else "error",
                 lambda m, inputs: like_f32(m, inputs), last_names)
        else:
            case("last+1", lambda a: np.concatenate([a, a[..., :1]], -1), "error", lambda m, inputs: "accepted")
            case("size0-last", lambda a: a[..., :0], "error", lambda m, inputs: "accepted")
            if spec.min_ndim >= 3:
                case("extra-axis", lambda a: a[None], "either" if spec.name == "PositionEmbedding" else "error",
                     like_f32)
                case("drop-axis", lambda a: a[0], "error", lambda m, inputs: "accepted")
                case("size0-T", lambda a: a[:, :0], "either", shape_only)
            else:
                case("extra-axis", lambda a: a[None], "either", lambda m, inputs: like_f32(m, inputs))
                case("1-D", lambda a: a[0], "either", lambda m, inputs: like_f32(m, inputs))
        case("nan", lambda a: np.full(a.shape, np.nan, F), "either", like_f32)
    for key, (v0, role) in spec.forward_kw.items():
        out += _forward_kw_cases(spec, key, v0, role, fix)
    return out


def _forward_kw_cases(spec, key, v0, role, fix):
    """Mutations of a forward keyword: ``pos`` (an int) or ``key_mask`` (B, T)."""
    x = spec.inputs()[0]
    B, T = x.shape[0], x.shape[-2]
    if role == "mask":
        valid_mask = np.ones((B, T), np.uint8)
        valid_mask[:, -1] = 0
        muts = [("valid", valid_mask, "ok"), ("bool", valid_mask.astype(bool), "ok"),
                ("int64", valid_mask.astype(np.int64), "ok"), ("list", valid_mask.tolist(), "either"),
                ("float", valid_mask.astype(F), "either"), ("noncontig", noncontig(valid_mask), "either"),
                ("wrong-shape", np.ones((B, T + 1), np.uint8), "error"), ("1-D", valid_mask[0], "error"),
                ("str", "abc", "error"), ("all-masked", np.zeros((B, T), np.uint8), "either"),
                ("nan", np.full((B, T), np.nan, F), "either")]
        base_kw = {key: valid_mask}
    else:
        muts = [(label, v, expect) for label, v, expect in _int_mutations(v0)]
        muts += [("past-end", 6, "error")]
        base_kw = {key: v0}

    def go(v):
        def call():
            want = _copy(_forward(spec, spec.layer(), spec.inputs(), base_kw))
            got = _copy(_forward(spec, spec.layer(), spec.inputs(), {key: v}))
            return got, want
        return call

    def check(res):
        got, want = res
        return same(got, want, "output")

    out = []
    for label, v, expect in muts:
        c = check
        if label in ("all-masked", "nan"):
            def c(res):
                return None if np.all(np.isfinite(res[0])) else "output not finite"
        names = (key, "x") if label in ("past-end", "huge", "beyond-int64") else (key,)
        out.append(Case(f"layers/{spec.name}/forward/{key}/{label}", go(v), expect, names, c, fix=fix))
    return out


def _int_mutations(v):
    from tests.fuzz.mutate import scalar_mutations

    return scalar_mutations(Int(0), v)


# ---------------------------------------------------------------------------------------------- backward


def _grads(layer):
    return {k: g.copy() for k, g in layer.gradients().items()}


def _backward_cases(spec):
    fix = f"qorus_jit/layers/{spec.fix}.py"
    out = []

    def fresh():
        layer = spec.layer()
        y = _forward(spec, layer, spec.inputs())
        dy = rng("dy", spec.name).standard_normal(y.shape).astype(F)
        return layer, y, dy

    def run(layer, dy, **kw):
        dx = layer.backward(dy, **kw)
        dx = tuple(_copy(d) for d in dx) if isinstance(dx, tuple) else _copy(dx)
        return dx, _grads(layer)

    def case(label, mutate, expect, names, want=None, kw=None):
        """``mutate(dy)`` -> (dy, keywords); ``want(base dx, base grads, dy)`` -> expected (dx, grads)."""
        def call():
            layer, y, dy = fresh()
            try:
                dy2, kw2 = mutate(dy, layer, y)
            except Exception as e:
                raise HarnessError(f"mutating: {e}") from e
            # the values as passed, before the call may write into them (out=, or what overlaps it)
            snap = _f32(dy2), {k: _f32(v) if isinstance(v, (np.ndarray, list)) else v for k, v in kw2.items()}
            got = run(layer, dy2, **kw2)
            return got, snap

        def check(res):
            got, (c, wkw) = res
            if c is None or any(v is None for v in wkw.values()):
                return "accepted an argument without numbers"
            layer, _, _ = fresh()
            want = run(layer, c, **wkw)
            return same(got, want, "backward")
        out.append(Case(f"layers/{spec.name}/backward/{label}", call, expect, names, check, fix=fix))

    for label, v in (("None", None), ("str", "abc"), ("dict", {}), ("bool", True)):
        case(f"dy/{label}", lambda dy, layer, y, v=v: (v, {}), "error", ("dy",))
    for label, mut, expect in _value_mutations():
        case(f"dy/{label}", lambda dy, layer, y, mut=mut: (mut(dy), {}), expect, ("dy",))
    for label, mut in (("extra-axis", lambda d: d[None]), ("drop-first", lambda d: d[1:]),
                       ("last+1", lambda d: np.concatenate([d, d[..., :1]], -1)), ("0-d", lambda d: np.float32(1)),
                       ("size0", lambda d: d[:0])):
        case(f"dy/{label}", lambda dy, layer, y, mut=mut: (mut(dy), {}), "error", ("dy",))
    case("dy/is-output", lambda dy, layer, y: (y, {}), "either", ("dy",))

    def before_forward():
        layer = spec.layer()
        y_shape = spec.out_shape(np.shape(spec.inputs()[0]))
        return layer.backward(np.zeros(y_shape, F))
    out.append(Case(f"layers/{spec.name}/backward/before-forward", before_forward,
                    "either" if spec.name == "Add" else "error", ("*",), check=lambda r: None,
                    errors=(TypeError, ValueError, RuntimeError), fix=fix))

    variants = getattr(spec.layer(), "backward_variants", frozenset())
    x_shape = np.shape(spec.inputs()[0])
    if "out" in variants:
        case("out/valid", lambda dy, layer, y: (dy, {"out": np.zeros(x_shape, F)}), "ok", ("out",))
        case("out/accumulate", lambda dy, layer, y: (dy, {"out": np.ones(x_shape, F), "accumulate": True}), "ok",
             ("out",))
        for label, mk, expect in (
                ("readonly", lambda dy: readonly(np.zeros(x_shape, F)), "error"),
                ("wrong-shape", lambda dy: np.zeros(x_shape[:-1] + (x_shape[-1] + 1,), F), "error"),
                ("float64", lambda dy: np.zeros(x_shape, np.float64), "either"),
                ("list", lambda dy: np.zeros(x_shape).tolist(), "error"),
                ("noncontig", lambda dy: noncontig(np.zeros(x_shape, F)), "either"),
                ("is-dy", lambda dy: dy if dy.shape == x_shape else np.zeros(x_shape, F), "either"),
                ("overlaps-dy", lambda dy: overlapping(np.zeros(x_shape, F), dy)[0], "either")):
            def mutate(dy, layer, y, mk=mk, label=label):
                o = mk(dy)
                if label == "overlaps-dy":
                    o, dy = overlapping(np.zeros(x_shape, F), dy)
                return dy, {"out": o}
            case(f"out/{label}", mutate, expect, ("out", "dy"))
        case("accumulate/without-out", lambda dy, layer, y: (dy, {"accumulate": True}), "error", ("accumulate",))
        case("accumulate/str", lambda dy, layer, y: (dy, {"out": np.zeros(x_shape, F), "accumulate": "no"}),
             "error", ("accumulate",))
    else:
        case("out/not-a-variant", lambda dy, layer, y: (dy, {"out": np.zeros(x_shape, F)}), "error", ("out",))
    if "residual" in variants:
        case("residual/valid", lambda dy, layer, y: (dy, {"residual": np.ones(x_shape, F)}), "ok", ("residual",))
        case("residual/wrong-shape", lambda dy, layer, y: (dy, {"residual": np.ones(x_shape[1:], F)}), "error",
             ("residual",))
        case("residual/float64", lambda dy, layer, y: (dy, {"residual": np.ones(x_shape)}), "either",
             ("residual",))
        case("residual/with-accumulate", lambda dy, layer, y: (dy, {"residual": np.ones(x_shape, F),
                                                                    "out": np.zeros(x_shape, F),
                                                                    "accumulate": True}), "error",
             ("residual", "accumulate"))
        case("residual/str", lambda dy, layer, y: (dy, {"residual": "abc"}), "error", ("residual",))
    else:
        case("residual/not-a-variant", lambda dy, layer, y: (dy, {"residual": np.zeros(x_shape, F)}), "error",
             ("residual",))
    return out


# ------------------------------------------------------------------------------------------ construction


def _ctor_cases(spec):
    fix = f"qorus_jit/layers/{spec.fix}.py"
    if not spec.roles:
        return []

    def key(layer):
        y = _copy(_forward(spec, layer, spec.inputs()))
        return y, {k: v.copy() for k, v in layer.parameters().items()}

    return call_cases(f"layers/{spec.name}/init", lambda kw: spec.make(**kw), lambda: dict(spec.kw), spec.roles,
                      key=key, fix=fix, expects=_EXPECTS.get(spec.name))


# ------------------------------------------------------------------------------------------------ decoding


def _decode_cases():
    fix = "qorus_jit/layers/attention.py"
    out = []
    mha = dict(dim=8, n_heads=2, n_kv_heads=1, rope="rotate_half", max_seq_len=8, rng=0)

    def decode(state_fn, x_fn, layer_cls=MultiHeadAttention, kw=None):
        def call():
            layer = layer_cls(**(kw or mha))
            state = state_fn()
            y = layer.forward_decode(x_fn(), state=state)
            return _copy(y), layer
        return call

    def equals_forward(res):
        """Decoding the canonical input in one call equals the plain forward."""
        y, layer = res
        return same(y, _copy(layer.forward(_x(1, 3, 8))), "decoded output")

    x = lambda: _x(1, 3, 8)  # noqa: E731
    for label, state, expect, names in (
            ("valid", lambda: DecodeState(1, 8), "ok", ()),
            ("None", lambda: None, "error", ("state",)),
            ("str", lambda: "abc", "error", ("state",)),
            ("batch-2", lambda: DecodeState(2, 8), "error", ("state", "x")),
            ("too-short", lambda: DecodeState(1, 2), "error", ("state", "x")),
            ("pos-ahead", lambda: _moved(DecodeState(1, 8), 2), "error", ("state",)),
            ("pos-negative", lambda: _moved(DecodeState(1, 8), -1), "error", ("state",)),
            ("pos-str", lambda: _moved(DecodeState(1, 8), "a"), "error", ("state",))):
        out.append(Case(f"layers/MultiHeadAttention/forward_decode/state/{label}", decode(state, x), expect, names,
                        equals_forward, fix=fix))
    for label, xx, expect in (("float64", lambda: _x(1, 3, 8).astype(np.float64), "either"),
                              ("2-D", lambda: _x(3, 8), "error"), ("None", lambda: None, "error"),
                              ("size0-T", lambda: _x(1, 0, 8), "either")):
        out.append(Case(f"layers/MultiHeadAttention/forward_decode/x/{label}", decode(lambda: DecodeState(1, 8), xx),
                        expect, ("x",), (lambda r: None) if label == "size0-T" else equals_forward, fix=fix))
    for cls, kw in ((KVCache, dict(batch=1, max_seq_len=8, n_kv_heads=1, head_dim=4)),
                    (DecodeState, dict(batch=1, max_seq_len=8))):
        roles = {k: Int(1) for k in kw}
        out += call_cases(f"layers/{cls.__name__}/init", lambda k, cls=cls: cls(**k), lambda kw=kw: dict(kw), roles,
                          key=lambda s: tuple(sorted((k, int(v)) for k, v in vars(s).items()
                                                     if isinstance(v, (int, np.integer)))),
                          fix=fix)
    out.append(Case("layers/DecodeState/advance/str", lambda: DecodeState(1, 8).advance("a"), "error", ("n",),
                    fix=fix))
    out.append(Case("layers/DecodeState/advance/negative", lambda: DecodeState(1, 8).advance(-1), "error", ("n",),
                    fix=fix))
    out.append(Case("layers/DecodeState/advance/past-end", lambda: DecodeState(1, 8).advance(9), "error", ("n",),
                    fix=fix))
    return out


def _moved(state, pos):
    state.pos = pos
    return state


# ----------------------------------------------------------------------------------- Layer and Graph methods


def _method_cases():
    fix_base, fix_graph = "qorus_jit/layers/base.py", "qorus_jit/layers/graph.py"
    out = []

    def load(params, strict=True):
        def call():
            layer = Linear(4, 3, rng=0)
            layer.load_parameters(params(), strict=strict)
            return {k: v.copy() for k, v in layer.parameters().items()}
        return call

    good = lambda: {"weight": np.ones((3, 4)), "bias": np.zeros(3)}  # noqa: E731
    for label, params, expect, names in (
            ("valid", good, "ok", ()),
            ("float32", lambda: {k: v.astype(F) for k, v in good().items()}, "ok", ()),
            ("lists", lambda: {k: v.tolist() for k, v in good().items()}, "either", ("weight",)),
            ("missing", lambda: {"weight": np.ones((3, 4))}, "error", ("params", "bias")),
            ("extra", lambda: {**good(), "nope": np.ones(2)}, "error", ("params", "nope")),
            ("wrong-shape", lambda: {**good(), "weight": np.ones((4, 3))}, "error", ("weight",)),
            ("str-values", lambda: {**good(), "weight": "abc"}, "error", ("weight",)),
            ("None-value", lambda: {**good(), "weight": None}, "error", ("weight",)),
            ("object-values", lambda: {**good(), "weight": with_dtype(np.ones((3, 4)), object)}, "either",
             ("weight",)),
            ("not-a-dict", lambda: [np.ones((3, 4))], "error", ("params",)),
            ("None", lambda: None, "error", ("params",)),
            ("int-key", lambda: {**good(), 1: np.ones(2)}, "error", ("params", "1")),
            ("broadcastable", lambda: {**good(), "bias": np.zeros(1)}, "error", ("bias",)),
            ("complex", lambda: {**good(), "weight": np.ones((3, 4), complex)}, "error", ("weight",)),
            ("nan", lambda: {**good(), "weight": np.full((3, 4), np.nan)}, "either", ("weight",))):
        out.append(Case(f"layers/Layer/load_parameters/{label}", load(params), expect, names,
                        lambda r: None, fix=fix_base))
    out.append(Case("layers/Layer/load_parameters/strict-str", load(good, strict="no"), "error", ("strict",),
                    fix=fix_base))
    out.append(Case("layers/Layer/add_parameter/decay-str", lambda: Linear(2, 2).add_parameter("p", np.ones(2),
                                                                                              decay="no"),
                    "error", ("decay",), fix=fix_base))
    out.append(Case("layers/Layer/add_parameter/str-value", lambda: Linear(2, 2).add_parameter("p", "abc"), "error",
                    ("value", "p"), fix=fix_base))
    out.append(Case("layers/Layer/add_child/not-a-layer", lambda: Linear(2, 2).add_child("c", "abc"), "error",
                    ("layer", "c"), fix=fix_base))
    out.append(Case("layers/Layer/grad/unknown", lambda: Linear(2, 2).grad("nope"), "error", ("name", "nope"),
                    errors=(TypeError, ValueError, KeyError), fix=fix_base))

    def graph(build):
        def call():
            g = Graph(inputs=["x"], output="y")
            build(g)
            return g
        return call
    lin = lambda: Linear(4, 4, rng=0)  # noqa: E731
    for label, build, expect, names in (
            ("valid", lambda g: g.add("fc", lin(), "x", "y"), "ok", ()),
            ("undefined-input", lambda g: g.add("fc", lin(), "h", "y"), "error", ("h", "fc")),
            ("redefined-output", lambda g: g.add("fc", lin(), "x", "x"), "error", ("x", "fc")),
            ("not-a-layer", lambda g: g.add("fc", "abc", "x", "y"), "error", ("layer", "fc")),
            ("inputs-None", lambda g: g.add("fc", lin(), None, "y"), "error", ("inputs", "fc")),
            ("inputs-int", lambda g: g.add("fc", lin(), 3, "y"), "error", ("inputs", "fc")),
            ("name-None", lambda g: g.add(None, lin(), "x", "y"), "error", ("name",)),
            ("output-None", lambda g: g.add("fc", lin(), "x", None), "error", ("output", "fc")),
            ("duplicate-name", lambda g: (g.add("fc", lin(), "x", "h"), g.add("fc", lin(), "h", "y")), "error",
             ("fc", "name")),
            ("same-layer-twice", lambda g: (g.add("a", (m := lin()), "x", "h"), g.add("b", m, "h", "y")), "either",
             ("layer", "b"))):
        out.append(Case(f"layers/Graph/add/{label}", graph(build), expect, names, lambda r: None, fix=fix_graph))
    for label, fn, expect, names in (
            ("inputs-empty", lambda: Graph(inputs=[], output="y"), "error", ("inputs",)),
            ("inputs-str", lambda: Graph(inputs="xy", output="y"), "either", ("inputs",)),
            ("inputs-None", lambda: Graph(inputs=None, output="y"), "error", ("inputs",)),
            ("output-None", lambda: Graph(inputs=["x"], output=None), "error", ("output",)),
            ("inputs-duplicate", lambda: Graph(inputs=["x", "x"], output="y"), "error", ("inputs",)),
            ("forward-missing-input", lambda: graph(lambda g: g.add("fc", lin(), "x", "y"))().forward(), "error",
             ("inputs",)),
            ("forward-extra-input", lambda: graph(lambda g: g.add("fc", lin(), "x", "y"))().forward(_x(2, 4),
                                                                                                     _x(2, 4)),
             "error", ("inputs",)),
            ("forward-unknown-name", lambda: graph(lambda g: g.add("fc", lin(), "x", "y"))().forward(z=_x(2, 4)),
             "error", ("inputs", "z")),
            ("forward-no-output", lambda: Graph(inputs=["x"], output="y").forward(_x(2, 4)), "error", ("output",)),
            ("sequential-not-a-layer", lambda: Sequential(lin(), "abc"), "error", ("layer", "1")),
            ("sequential-bad-pair", lambda: Sequential(("a", lin(), 3)), "error", ("layers", "a")),
            ("sequential-empty-forward", lambda: Sequential().forward(_x(2, 4)), "either", ("x", "layers"))):
        out.append(Case(f"layers/Graph/{label}", fn, expect, names, lambda r: None, fix=fix_graph))
    return out


def cases():
    out = []
    for spec in SPECS:
        out += _ctor_cases(spec) + _forward_cases(spec)
        if spec.backward:
            out += _backward_cases(spec)
    return out + _decode_cases() + _method_cases()
