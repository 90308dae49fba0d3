"""Fuzz cases of the models (Llama, GPT-2, BERT, MLP) and their entry points: config fields, forward ids,
backward gradients, incremental decoding, generation and its options, sentence pooling.

Valid but unusual calls are compared with the plain call on the same values (int64 ids, Python scalars);
incremental decoding of a prompt must give the logits of a full forward.
"""

from __future__ import annotations

import json

import numpy as np

from qorus_jit.infer.generate import generate, generate_text, sample_text
from qorus_jit.layers import DecodeState
from qorus_jit.models import GPT2, MLP, Bert, BertConfig, GPT2Config, Llama, LlamaConfig, mean_pool
from qorus_jit.tokenizers import ByteTokenizer
from tests.fuzz.calls import Custom, Seed, call_cases, same
from tests.fuzz.harness import Case, HarnessError
from tests.fuzz.mutate import DTYPES, Choice, Flag, Int, Real, noncontig, readonly, rng, with_dtype

F = np.float32
V = 11  # vocabulary of the tiny models
T_MAX = 12

CONFIGS = {
    "Llama": (Llama, LlamaConfig, dict(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32, vocab_size=V,
                                       max_seq_len=T_MAX, norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=False,
                                       attention_bias=False, mlp_bias=False),
              dict(dim=Int(1), n_layers=Int(1), n_heads=Int(1), n_kv_heads=Int(1, optional=True), hidden_dim=Int(1),
                   vocab_size=Int(1), max_seq_len=Int(1), norm_eps=Real(0, low_open=True),
                   rope_theta=Real(0, low_open=True), tie_embeddings=Flag(), attention_bias=Flag(), mlp_bias=Flag()),
              "llama"),
    "GPT2": (GPT2, GPT2Config, dict(dim=16, n_layers=1, n_heads=2, vocab_size=V, max_seq_len=T_MAX, norm_eps=1e-5,
                                    activation="gelu_new", hidden_dim=64, tie_embeddings=True),
             dict(dim=Int(1), n_layers=Int(1), n_heads=Int(1), vocab_size=Int(1), max_seq_len=Int(1),
                  norm_eps=Real(0, low_open=True), activation=Choice("gelu_new", "gelu", "relu"),
                  hidden_dim=Int(1, optional=True), tie_embeddings=Flag()),
             "gpt2"),
    "Bert": (Bert, BertConfig, dict(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=V, max_seq_len=T_MAX,
                                    type_vocab_size=2, norm_eps=1e-12, activation="gelu", pad_token_id=0),
             dict(dim=Int(1), n_layers=Int(1), n_heads=Int(1), hidden_dim=Int(1), vocab_size=Int(1),
                  max_seq_len=Int(1), type_vocab_size=Int(1), norm_eps=Real(0, low_open=True),
                  activation=Choice("gelu", "relu", "gelu_new"), pad_token_id=Int(0)),
             "bert"),
}
_HUGE = ("huge", "beyond-int64")  # a config that parses may ask for any size; a model of it cannot be built


def model(arch, **over):
    cls, cfg_cls, kw, _, _ = CONFIGS[arch]
    return cls(cfg_cls(**{**kw, **over}), rng=0)


def ids(B=2, T=5, salt="ids"):
    return rng(salt, B, T).integers(0, V, (B, T))


def _copy(y):
    return None if y is None else np.array(y)


# ---------------------------------------------------------------------------------------------- configs


def _config_key(arch):
    cls = CONFIGS[arch][0]

    def key(config):
        try:
            text = json.dumps(config.to_dict(), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:  # a config that cannot be saved in run.json or config.json
            text = f"to_dict() is not JSON: {e}"
        try:
            hf = json.dumps(config.to_hf(), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            hf = f"to_hf() is not JSON: {e}"
        return text, hf, _copy(cls(config, rng=0).forward(ids()))
    return key


def _config_cases():
    out = []
    for arch, (cls, cfg_cls, kw, roles, fix) in CONFIGS.items():
        names = {f: (f,) for f in roles}
        c = call_cases(f"models/{cfg_cls.__name__}", lambda k, cfg_cls=cfg_cls: cfg_cls(**k), lambda kw=kw: dict(kw),
                       roles, key=_config_key(arch), fix=f"qorus_jit/models/{fix}.py", names=names,
                       skip={(f, label) for f in roles for label in _HUGE})
        out += c
        for label, fn, expect, nm in (
                ("from_dict-unknown", lambda cfg_cls=cfg_cls, kw=kw: cfg_cls.from_dict({**kw, "nope": 1}), "error",
                 ("nope", "from_dict")),
                ("from_dict-not-a-dict", lambda cfg_cls=cfg_cls: cfg_cls.from_dict([1]), "error", ("from_dict",)),
                ("from_dict-None", lambda cfg_cls=cfg_cls: cfg_cls.from_dict(None), "error", ("from_dict",)),
                ("from_hf-not-a-dict", lambda cfg_cls=cfg_cls: cfg_cls.from_hf([1]), "error", ("config",)),
                ("from_hf-empty", lambda cfg_cls=cfg_cls: cfg_cls.from_hf({}), "error",
                 ("hidden_size", "n_embd", "dim")),
                ("positional", lambda cfg_cls=cfg_cls: cfg_cls(16, 1, 2), "error", ("*",)),
                ("model-config-dict", lambda cls=cls, kw=kw: cls(dict(kw)), "error", ("config",)),
                ("model-config-None", lambda cls=cls: cls(None), "error", ("config",)),
                ("model-other-config", lambda cls=cls, arch=arch: cls(_other_config(arch)), "error", ("config",)),
                ("model-rng-str", lambda cls=cls, cfg_cls=cfg_cls, kw=kw: cls(cfg_cls(**kw), rng="abc"), "error",
                 ("rng",))):
            out.append(Case(f"models/{cfg_cls.__name__}/{label}", fn, expect, nm, lambda r: None,
                            fix=f"qorus_jit/models/{fix}.py"))
    return out


def _other_config(arch):
    other = "GPT2" if arch != "GPT2" else "Llama"
    return CONFIGS[other][1](**CONFIGS[other][2])


# ---------------------------------------------------------------------------------------------- forward


def _run_forward(arch, x, **kw):
    m = model(arch)
    return _copy(m.forward(x, **kw))


def _forward_cases(arch):
    fix = f"qorus_jit/models/{CONFIGS[arch][4]}.py"
    out = []

    def case(label, make, expect, names=("ids",), want="same", kw=None):
        """``make(ids)`` -> mutated ids; ``want``: "same" (the output for the ids as int64), "shape" (only the
        shape (B, T, width) of the mutated ids), or a function of the base output."""
        def call():
            base = ids()
            try:
                m = make(base)
            except Exception as e:
                raise HarnessError(f"mutating: {e}") from e
            return _run_forward(arch, m, **(kw or {})), m

        def check(res):
            y, m = res
            if want == "shape":
                width = V if arch != "Bert" else 16
                shape = np.shape(m) + (width,)
                return None if np.shape(y) == shape else f"output shape {np.shape(y)}, expected {shape}"
            try:
                plain = np.array(m).astype(np.int64)
            except (TypeError, ValueError):
                return "accepted ids that are not integers"
            w = _run_forward(arch, plain if want == "same" else ids(), **(kw or {}))
            return same(y, w if want == "same" else want(w), "output")
        out.append(Case(f"models/{arch}/forward/ids/{label}", call, expect, names, check, fix=fix))

    for label, v in (("None", None), ("str", "abc"), ("dict", {}), ("bool", True), ("float-0d", 1.5)):
        case(label, lambda a, v=v: v, "error")
    for label, mut in (("list", lambda a: a.tolist()), ("int32", lambda a: a.astype(np.int32)),
                       ("readonly", readonly), ("noncontig", noncontig)):
        case(label, mut, "ok" if label in ("int32", "readonly") else "either")
    for label, mut in (("uint8", lambda a: a.astype(np.uint8)), ("int16", lambda a: a.astype(np.int16)),
                       ("float-integral", lambda a: a.astype(np.float64)), ("bool", lambda a: a > 5),
                       ("object", lambda a: a.astype(object)), ("big-endian", lambda a: a.astype(">i8"))):
        case(f"dtype-{label}", mut, "either")
    case("fraction", lambda a: a + 0.5, "error")
    for label, v in (("negative", -1), ("=vocab", V), ("huge", 2**40), ("int64-min", -(2**63))):
        def put(a, v=v):
            b = a.copy()
            b[-1, -1] = v
            return b
        case(f"id-{label}", put, "error")
    case("1-D", lambda a: a[0], "either", want=lambda w: w[0])
    case("3-D", lambda a: a[None], "either", want=lambda w: w[None])
    case("0-d", lambda a: np.int64(3), "error")
    case("size0-T", lambda a: a[:, :0], "either", want="shape")
    case("size0-B", lambda a: a[:0], "either", want="shape")
    case("T=max_seq_len", lambda a: rng("long").integers(0, V, (1, T_MAX)), "ok")
    case("T>max_seq_len", lambda a: rng("long").integers(0, V, (1, T_MAX + 1)), "error")
    if arch == "Bert":
        out += _bert_cases(fix)
    return out


def _bert_cases(fix):
    out = []
    x = ids()
    mask = np.ones(x.shape, np.int64)
    mask[0, -2:] = 0
    types = np.zeros(x.shape, np.int64)
    types[:, 3:] = 1

    def run(**kw):
        def call():
            got = _run_forward("Bert", ids(), **{k: v() for k, v in kw.items()})
            return got
        return call

    def same_as(**kw):
        def check(y):
            want = _run_forward("Bert", ids(), **{k: v() for k, v in kw.items()})
            return same(y, want, "output")
        return check

    def finite(y):
        return None if np.all(np.isfinite(y)) else "output not finite"

    for label, v, expect, chk in (
            ("valid", lambda: mask, "ok", same_as(attention_mask=lambda: mask)),
            ("bool", lambda: mask.astype(bool), "ok", same_as(attention_mask=lambda: mask)),
            ("uint8", lambda: mask.astype(np.uint8), "ok", same_as(attention_mask=lambda: mask)),
            ("float", lambda: mask.astype(F), "either", same_as(attention_mask=lambda: mask)),
            ("list", lambda: mask.tolist(), "either", same_as(attention_mask=lambda: mask)),
            ("noncontig", lambda: noncontig(mask), "either", same_as(attention_mask=lambda: mask)),
            ("wrong-shape", lambda: mask[:, :-1], "error", None), ("1-D", lambda: mask[0], "error", None),
            ("str", lambda: "abc", "error", None), ("all-zero", lambda: np.zeros_like(mask), "either", finite),
            ("nan", lambda: np.full(mask.shape, np.nan), "either", finite),
            ("values-2", lambda: mask * 2, "either", same_as(attention_mask=lambda: mask))):
        out.append(Case(f"models/Bert/forward/attention_mask/{label}", run(attention_mask=v), expect,
                        ("attention_mask",), chk, fix=fix))
    for label, v, expect, chk in (
            ("valid", lambda: types, "ok", same_as(token_type_ids=lambda: types)),
            ("int32", lambda: types.astype(np.int32), "ok", same_as(token_type_ids=lambda: types)),
            ("list", lambda: types.tolist(), "either", same_as(token_type_ids=lambda: types)),
            ("=type_vocab", lambda: types * 2, "error", None), ("negative", lambda: -types, "either",
                                                               same_as(token_type_ids=lambda: types * 0)),
            ("wrong-shape", lambda: types[:, :-1], "error", None), ("float", lambda: types.astype(F), "either",
                                                                   same_as(token_type_ids=lambda: types)),
            ("str", lambda: "abc", "error", None), ("1-D", lambda: types[0], "error", None)):
        out.append(Case(f"models/Bert/forward/token_type_ids/{label}", run(token_type_ids=v), expect,
                        ("token_type_ids",), chk, fix=fix))
    return out


# --------------------------------------------------------------------------------------------- backward


def _backward_cases(arch):
    fix = f"qorus_jit/models/{CONFIGS[arch][4]}.py"
    out = []

    def fresh():
        m = model(arch)
        y = m.forward(ids())
        return m, y

    def grads(m):
        return {k: g.copy() for k, g in m.gradients().items()}

    def case(label, make, expect):
        def call():
            m, y = fresh()
            dy = make(rng("dy", arch).standard_normal(y.shape).astype(F))
            snap = None
            try:
                snap = np.array(dy, F)
            except (TypeError, ValueError):
                pass
            m.backward(dy)
            return grads(m), snap

        def check(res):
            got, snap = res
            if snap is None:
                return "accepted a gradient without numbers"
            m, _ = fresh()
            m.backward(snap)
            return same(got, grads(m), "gradients")
        out.append(Case(f"models/{arch}/backward/dy/{label}", call, expect, ("dy",), check, fix=fix))

    for label, v in (("None", None), ("str", "abc"), ("dict", {}), ("bool", True)):
        case(label, lambda d, v=v: v, "error")
    for label, dt in DTYPES:
        case(label, lambda d, dt=dt: with_dtype(d, dt), "either")
    case("list", lambda d: d.tolist(), "either")
    case("noncontig", noncontig, "either")
    case("readonly", readonly, "ok")
    for label, mut in (("extra-axis", lambda d: d[None]), ("drop-first", lambda d: d[1:]),
                       ("last+1", lambda d: np.concatenate([d, d[..., :1]], -1)), ("0-d", lambda d: np.float32(1)),
                       ("size0", lambda d: d[:0]), ("T-1", lambda d: d[:, 1:])):
        case(label, mut, "error")
    out.append(Case(f"models/{arch}/backward/before-forward",
                    lambda: model(arch).backward(np.zeros((2, 5, V if arch != "Bert" else 16), F)), "error", ("*",),
                    errors=(TypeError, ValueError, RuntimeError), fix=fix))
    return out


# --------------------------------------------------------------------------------------------- decoding


def _decode_cases(arch):
    fix = f"qorus_jit/models/{CONFIGS[arch][4]}.py"
    out = []

    def decode(state_fn, steps, over=None):
        """Prefill ids[0, :3] and decode the rest one token at a time; returns every position's logits."""
        def call():
            m = model(arch, **(over or {}))
            state = state_fn()
            x = ids()[:1]
            rows = []
            for lo, hi in steps:
                y = m.forward_decode(x[:, lo:hi], state=state)
                rows.append(_copy(y))
                state.advance(hi - lo)
            return np.concatenate(rows, axis=1), m
        return call

    def equals_forward(res):
        y, m = res
        return same(y, _copy(m.forward(ids()[:1]))[:, :y.shape[1]], "decoded logits")

    steps = [(0, 3), (3, 4), (4, 5)]
    for label, state, expect, names in (
            ("valid", lambda: DecodeState(1, T_MAX), "ok", ()),
            ("None", lambda: None, "error", ("state",)),
            ("str", lambda: "abc", "error", ("state",)),
            ("batch-2", lambda: DecodeState(2, T_MAX), "error", ("state", "ids")),
            ("too-short", lambda: DecodeState(1, 4), "error", ("state", "ids")),
            ("longer-than-model", lambda: DecodeState(1, 64), "either", ("state", "ids"))):
        out.append(Case(f"models/{arch}/forward_decode/state/{label}", decode(state, steps), expect, names,
                        equals_forward, fix=fix))
    if arch == "Llama":
        out.append(Case("models/Llama/forward_decode/biases", decode(lambda: DecodeState(1, T_MAX), steps,
                                                                     dict(attention_bias=True, mlp_bias=True)),
                        "ok", (), equals_forward, fix=fix))
        out.append(Case("models/Llama/forward_decode/tied", decode(lambda: DecodeState(1, T_MAX), steps,
                                                                   dict(tie_embeddings=True)), "ok", (),
                        equals_forward, fix=fix))

    def one(make_ids, expect, label, names=("ids",)):
        def call():
            m = model(arch)
            state = DecodeState(1, T_MAX)
            return _copy(m.forward_decode(make_ids(), state=state))
        out.append(Case(f"models/{arch}/forward_decode/ids/{label}", call, expect, names, lambda r: None, fix=fix))

    one(lambda: np.array([[V]]), "error", "=vocab")
    one(lambda: np.array([[-1]]), "error", "negative")
    one(lambda: np.array([[1.5]]), "error", "fraction")
    one(lambda: np.array([[2**40]]), "error", "huge")
    one(lambda: "abc", "error", "str")
    one(lambda: None, "error", "None")
    one(lambda: np.array([3]), "either", "1-D")
    one(lambda: np.array([[3]], np.int32), "ok", "int32")
    one(lambda: [[3]], "either", "list")
    one(lambda: np.zeros((1, 0), np.int64), "either", "size0")
    one(lambda: np.zeros((1, T_MAX + 1), np.int64), "error", "past-context", ("ids", "state"))

    def past_end():
        m = model(arch)
        state = DecodeState(1, T_MAX)
        for t in range(T_MAX + 1):
            m.forward_decode(np.array([[t % V]]), state=state)
            state.advance(1)
    out.append(Case(f"models/{arch}/forward_decode/one-past-context", past_end, "error", ("ids", "state"), fix=fix))

    def not_advanced():
        m = model(arch)
        state = DecodeState(1, T_MAX)
        m.forward_decode(np.array([[1]]), state=state)
        return _copy(m.forward_decode(np.array([[2]]), state=state))  # state.advance forgotten
    out.append(Case(f"models/{arch}/forward_decode/not-advanced", not_advanced, "error", ("state",), fix=fix))
    return out


# ------------------------------------------------------------------------------------------- generation


def _gen_model(arch="Llama", vocab=V):
    return model(arch) if vocab == V else model(arch, vocab_size=vocab)


def _generation_cases():
    fix = "qorus_jit/infer/generate.py"
    out = []
    valid = dict(prompt=[1, 2, 3], max_new_tokens=4, temperature=0.0, top_k=5, top_p=None, seed=0,
                 stop_tokens=(), max_seq_len=T_MAX)
    roles = dict(
        max_new_tokens=Int(0), temperature=Real(0), top_k=Int(1, optional=True),
        top_p=Custom(("zero", 0.0, "error"), ("above-1", 1.5, "error"), ("nan", float("nan"), "error"),
                     ("negative", -0.1, "error"), ("np.float32", np.float32(0.5), "ok"), ("str", "0.5", "error"),
                     ("one", 1.0, "ok"), ("bool", True, "error")),
        seed=Custom(("str", "abc", "error"), ("negative", -1, "error"), ("float", 0.5, "error"),
                    ("np.int64", np.int64(0), "ok"), ("list", [0], "either"), ("dict", {}, "error"),
                    ("generator", lambda: np.random.default_rng(0), "either")),
        stop_tokens=Custom(("None", None, "error"), ("str", "ab", "error"), ("floats", [1.5], "error"),
                           ("np-array", np.array([5]), "ok"), ("int", 5, "error"), ("set", {5}, "ok"),
                           ("out-of-vocab", [V + 3], "either"), ("nested", [[1]], "error")),
        prompt=Custom(("empty", [], "error"), ("nested", [[1, 2]], "error"), ("str", "abc", "error"),
                      ("=vocab", [1, V], "error"), ("negative", [-1, 2], "error"), ("floats", [1.5, 2.0], "error"),
                      ("float-integral", [1.0, 2.0, 3.0], "either"), ("np-int32", np.array([1, 2, 3], np.int32), "ok"),
                      ("generator", lambda: (i for i in (1, 2, 3)), "ok"), ("None", None, "error"),
                      ("too-long", list(range(T_MAX + 1)), "error"), ("2-D-array", np.array([[1, 2, 3]]), "error"),
                      ("huge-id", [2**63 - 1], "error"), ("beyond-int64", [2**64], "error"),
                      ("bools", [True, False], "either"), ("dict", {1: 2}, "error")),
        max_seq_len=Int(1, optional=True),
    )
    roles["temperature"] = Real(0)
    roles["temperature"].valid = lambda v: v == 0 or (v == v and v > 0 and v != float("inf"))

    def key(gen):
        return list(gen), gen.finish_reason

    def run(kw):  # slide=False: a huge max_new_tokens then runs to the context, not on for ever
        m = kw.pop("model", None) or _gen_model()
        return generate(m, slide=False, **kw)

    out += call_cases("models/generate", run, lambda: dict(valid), roles, key=key, fix=fix,
                      skip={("max_new_tokens", "beyond-int64")})
    for label, make, expect in (("MLP", lambda: MLP([4, 3]), "error"), ("Bert", lambda: model("Bert"), "error"),
                                ("None", lambda: None, "error"), ("str", lambda: "llama", "error"),
                                ("GPT2", lambda: model("GPT2"), "ok")):
        out.append(Case(f"models/generate/model/{label}", lambda make=make: list(generate(make(), [1, 2], 3,
                                                                                          temperature=0.0)),
                        expect, ("model",), lambda r: None, fix=fix))

    tok = ByteTokenizer()
    big = dict(vocab_size=256)

    def text_call(fn, **kw):
        def call():
            return fn(model("Llama", **big), tok if "tokenizer" not in kw else kw.pop("tokenizer"), **kw)
        return call

    for label, kw, expect, names in (
            ("valid", dict(prompt="ab", max_new_tokens=3, temperature=0.0), "ok", ()),
            ("prompt-None", dict(prompt=None, max_new_tokens=3), "error", ("prompt", "text")),
            ("prompt-int", dict(prompt=3, max_new_tokens=3), "error", ("prompt", "text")),
            ("prompt-bytes", dict(prompt=b"ab", max_new_tokens=3), "error", ("prompt", "text")),
            ("prompt-empty", dict(prompt="", max_new_tokens=3), "error", ("prompt",)),
            ("tokenizer-None", dict(tokenizer=None, prompt="ab", max_new_tokens=3), "error", ("tokenizer",)),
            ("tokenizer-str", dict(tokenizer="byte", prompt="ab", max_new_tokens=3), "either", ("tokenizer",)),
            ("max_new_tokens-str", dict(prompt="ab", max_new_tokens="3"), "error", ("max_new_tokens",))):
        out.append(Case(f"models/generate_text/{label}", text_call(generate_text, **kw), expect, names,
                        lambda r: None if isinstance(r, str) else f"returned {type(r).__name__}", fix=fix))
    for label, kw, expect, names in (
            ("valid", dict(prompt="ab", n_tokens=3, temperature=0.0), "ok", ()),
            ("n_tokens-negative", dict(prompt="ab", n_tokens=-1), "error", ("n_tokens",)),
            ("n_tokens-str", dict(prompt="ab", n_tokens="3"), "error", ("n_tokens",)),
            ("n_tokens-float", dict(prompt="ab", n_tokens=2.5), "error", ("n_tokens",)),
            ("temperature-nan", dict(prompt="ab", n_tokens=3, temperature=float("nan")), "error", ("temperature",)),
            ("temperature-negative", dict(prompt="ab", n_tokens=3, temperature=-1.0), "error", ("temperature",)),
            ("temperature-str", dict(prompt="ab", n_tokens=3, temperature="1"), "error", ("temperature",)),
            ("seed-str", dict(prompt="ab", n_tokens=3, seed="abc"), "error", ("seed",)),
            ("prompt-None", dict(prompt=None, n_tokens=3), "error", ("prompt", "text")),
            ("prompt-int", dict(prompt=3, n_tokens=3), "error", ("prompt", "text")),
            ("prompt-empty", dict(prompt="", n_tokens=3, temperature=0.0), "ok", ()),
            ("tokenizer-None", dict(tokenizer=None, prompt="ab", n_tokens=3), "error", ("tokenizer",)),
            ("long-prompt", dict(prompt="x" * 40, n_tokens=2, temperature=0.0), "ok", ())):
        out.append(Case(f"models/sample_text/{label}", text_call(sample_text, **kw), expect, names,
                        lambda r: None if isinstance(r, str) else f"returned {type(r).__name__}", fix=fix))
    out.append(Case("models/sample_text/vocab-too-small", lambda: sample_text(model("Llama"), tok, "ab", 3), "error",
                    ("tokenizer", "prompt", "ids", "vocab_size"), fix=fix))
    out.append(Case("models/generate_text/vocab-too-small", lambda: generate_text(model("Llama"), tok, "ab", 3),
                    "error", ("tokenizer", "prompt", "vocab_size"), fix=fix))
    return out


# ----------------------------------------------------------------------------------------- pooling, MLP


def _pool_cases():
    fix = "qorus_jit/models/bert.py"
    h = rng("hidden").standard_normal((2, 4, 3)).astype(F)
    m = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    want = np.stack([h[0, :2].mean(0), h[1].mean(0)])
    out = []
    for label, hh, mm, expect, names in (
            ("valid", h, m, "ok", ()), ("bool-mask", h, m.astype(bool), "ok", ()),
            ("list-mask", h, m.tolist(), "ok", ()), ("float64-hidden", h.astype(np.float64), m, "either", ()),
            ("mask-wrong-shape", h, m[:, :3], "error", ("attention_mask",)),
            ("mask-1-D", h, m[0], "error", ("attention_mask",)),
            ("mask-None", h, None, "error", ("attention_mask",)),
            ("mask-str", h, "abc", "error", ("attention_mask",)),
            ("hidden-None", None, m, "error", ("hidden",)),
            ("hidden-2-D", h[0], m, "error", ("hidden",)),
            ("hidden-str", "abc", m, "error", ("hidden",)),
            ("all-zero-mask", h, np.zeros_like(m), "either", ("attention_mask",)),
            ("mask-values-2", h, m * 2, "either", ("attention_mask",)),
            ("mask-negative", h, -m, "error", ("attention_mask",))):
        def check(r, label=label):
            if label == "all-zero-mask":
                return None if np.all(np.isfinite(r)) else "not finite"
            return same(r, want, "pooled")
        out.append(Case(f"models/mean_pool/{label}", lambda hh=hh, mm=mm: mean_pool(hh, mm), expect, names, check,
                        fix=fix))
    return out


def _mlp_cases():
    fix = "qorus_jit/models/mlp.py"
    x = rng("mlp-x").standard_normal((2, 4)).astype(F)

    def key(m):
        return _copy(m.forward(x))

    roles = dict(
        sizes=Custom(("one", [4], "error"), ("empty", [], "error"), ("None", None, "error"),
                     ("zero", [4, 0, 3], "error"), ("negative", [4, -1, 3], "error"), ("floats", [4.0, 8, 3], "error"),
                     ("str", ["4", 8, 3], "error"), ("np.int64", [np.int64(4), np.int64(8), 3], "ok"),
                     ("tuple", (4, 8, 3), "ok"), ("np-array", np.array([4, 8, 3]), "ok"), ("string", "483", "error"),
                     ("bools", [True, 8, 3], "error"), ("generator", lambda: (n for n in (4, 8, 3)), "either")),
        activation=Choice("relu", "gelu", "silu"), bias=Flag(), rng=Seed())
    return call_cases("models/MLP/init", lambda k: MLP(**k), lambda: dict(sizes=[4, 8, 3], activation="relu",
                                                                           bias=True, rng=0), roles, key=key, fix=fix)


def cases():
    out = _config_cases()
    for arch in CONFIGS:
        out += _forward_cases(arch) + _backward_cases(arch)
        if arch != "Bert":
            out += _decode_cases(arch)
    return out + _generation_cases() + _pool_cases() + _mlp_cases()
