"""Fuzz cases of the rest of ``qorus_jit.__all__``: threads, schedules, optimizers, losses, datasets, training
settings, the trainer and the profiler, and the tokenizers' encode and decode."""

from __future__ import annotations

import numpy as np

import qorus_jit as q
from tests.fuzz.calls import Custom, call_cases, same
from tests.fuzz.harness import Case
from tests.fuzz.mutate import Choice, Flag, Int, Real, noncontig, rng

F = np.float32


def _threads_cases():
    fix = "qorus_jit/core/numerics.py"

    def call(kw):
        before = q.get_num_threads()
        try:
            q.set_num_threads(**kw)
            return q.get_num_threads()
        finally:
            q.set_num_threads(before)
    roles = dict(n=Custom(("zero", 0, "error"), ("negative", -1, "error"), ("str", "1", "error"),
                          ("None", None, "error"),
                          ("fraction", 1.5, "error"), ("bool", True, "error"), ("np.int64", np.int64(1), "ok"),
                          ("too-many", 10**6, "error"), ("float-integral", 1.0, "either"), ("huge", 2**64, "error")))
    return call_cases("api/set_num_threads", call, lambda: dict(n=1), roles, fix=fix)


def _schedule_cases():
    fix = "qorus_jit/train/schedule.py"
    out = []

    def key(s):
        return [float(s(i)) for i in range(12)]

    lr, steps = Real(0), Int(1)
    for name, fn, valid, roles in (
            ("constant", q.constant, dict(lr=0.1), dict(lr=lr)),
            ("step_decay", q.step_decay, dict(lr=0.1, step_size=3, gamma=0.5),
             dict(lr=lr, step_size=steps, gamma=Real(0))),
            ("cosine", q.cosine, dict(lr=0.1, total_steps=10, min_lr=0.01), dict(lr=lr, total_steps=steps,
                                                                                min_lr=Real(0))),
            ("linear", q.linear, dict(lr=0.1, total_steps=10, min_lr=0.01), dict(lr=lr, total_steps=steps,
                                                                                min_lr=Real(0))),
            ("warmup_cosine", q.warmup_cosine, dict(lr=0.1, warmup_steps=2, total_steps=10, min_lr=0.0),
             dict(lr=lr, warmup_steps=Int(0), total_steps=steps, min_lr=Real(0))),
            ("warmup", q.warmup, dict(schedule=q.constant(0.1), warmup_steps=3),
             dict(schedule=Custom(("None", None, "error"), ("str", "cosine", "error"), ("number", 0.1, "error"),
                                  ("lambda", lambda: (lambda s: 0.1), "either")),
                  warmup_steps=Int(0))),
            ("make_schedule", lambda **k: q.make_schedule(k.pop("name"), k.pop("lr"), **k),
             dict(name="cosine", lr=0.1, warmup_steps=2, total_steps=10),
             dict(name=Choice("cosine", "linear", "constant"), lr=lr, warmup_steps=Int(0), total_steps=steps))):
        out += call_cases(f"api/{name}", lambda k, fn=fn: fn(**k), lambda valid=valid: dict(valid), roles, key=key,
                          fix=fix, skip={(a, "huge") for a in roles} | {(a, "beyond-int64") for a in roles})
    sched = q.cosine(0.1, 10)
    for label, step, expect in (("negative", -1, "error"), ("str", "1", "error"), ("None", None, "error"),
                                ("fraction", 1.5, "either"), ("np.int64", np.int64(3), "ok"), ("past-end", 100, "ok"),
                                ("huge", 2**70, "either")):
        out.append(Case(f"api/schedule-call/step/{label}", lambda step=step: sched(step), expect, ("step",),
                        lambda r: None if isinstance(r, float) and r == r else f"returned {r!r}", fix=fix))
    return out


def _tiny_model():
    return q.MLP([4, 3], rng=0)


def _optimizer_cases():
    fix = "qorus_jit/train/optim.py"
    out = []

    def key(opt):
        m = opt.model
        for g in m.gradients().values():
            g[...] = 0.5
        opt.step()
        return {k: v.copy() for k, v in m.parameters().items()}

    def make(cls):
        def call(kw):
            return cls(_tiny_model(), **kw)
        return call

    model_role = Custom(("None", None, "error"), ("str", "x", "error"), ("dict", {"w": np.ones(2, F)}, "error"),
                        ("list", [np.ones(2, F)], "error"))
    for name, cls, valid, roles in (
            ("SGD", q.SGD, dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=False),
             dict(lr=Real(0), momentum=Real(0), dampening=Real(), weight_decay=Real(0), nesterov=Flag(),
                  no_decay=Custom(("str", "bias", "error"), ("int", 3, "error"), ("unknown", ["nope"], "error"),
                                  ("set", lambda: {"fc0.bias"}, "ok"), ("callable", lambda: (lambda n: True), "ok")))),
            ("Adam", q.Adam, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
             dict(lr=Real(0), eps=Real(0, low_open=True), weight_decay=Real(0),
                  betas=Custom(("one", (1.0, 0.999), "error"), ("negative", (-0.1, 0.9), "error"),
                               ("three", (0.9, 0.9, 0.9), "error"), ("str", "0.9", "error"),
                               ("nan", (float("nan"), 0.9), "error"),
                               ("list", [0.9, 0.999], "ok", lambda: (0.9, 0.999)),
                               ("np-array", np.array([0.9, 0.999]), "either", lambda: (0.9, 0.999)),
                               ("None", None, "error")))),
            ("AdamW", q.AdamW, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
             dict(lr=Real(0), eps=Real(0, low_open=True), weight_decay=Real(0),
                  betas=Custom(("one", (0.9, 1.0), "error"), ("scalar", 0.9, "error"),
                               ("np.float32", (np.float32(0.9), np.float32(0.999)), "ok",
                                lambda: (float(np.float32(0.9)), float(np.float32(0.999)))))))):
        out += call_cases(f"api/{name}", make(cls), lambda valid=valid: dict(valid), roles, key=key, fix=fix)
        out.append(Case(f"api/{name}/model/None", lambda cls=cls, valid=valid: cls(None, **valid), "error",
                        ("model",), fix=fix))
        for label, m, _ in model_role.mutations[1:]:
            out.append(Case(f"api/{name}/model/{label}", lambda cls=cls, m=m, valid=valid: cls(m, **valid), "error",
                            ("model",), fix=fix))

    def lr_set(v):
        def call():
            opt = q.SGD(_tiny_model(), 0.1)
            opt.lr = v
            return opt.lr
        return call
    for label, v, expect in (("nan", float("nan"), "error"), ("negative", -1.0, "error"), ("str", "1", "error"),
                             ("np.float32", np.float32(0.5), "ok")):
        out.append(Case(f"api/Optimizer/lr-setter/{label}", lr_set(v), expect, ("lr",),
                        lambda r: None if isinstance(r, float) else f"lr is a {type(r).__name__}", fix=fix))

    def bad_grad(mutate):
        def call():
            m = _tiny_model()
            opt = q.SGD(m, 0.1)
            name = next(iter(m.gradients()))
            g = m.gradients()[name]
            g[...] = 1.0
            mutate(m, name, g)
            opt.step()
            return {k: v.copy() for k, v in m.parameters().items()}
        return call
    for label, mutate, expect in (
            ("nan-grad", lambda m, n, g: g.fill(np.nan), "either"),
            ("grad-replaced-float64", lambda m, n, g: m.children()["fc0"]._grads.__setitem__("weight",
                                                                                            g.astype(np.float64)),
             "error"),
            ("grad-replaced-wrong-shape", lambda m, n, g: m.children()["fc0"]._grads.__setitem__("weight", g[:1]),
             "error")):
        out.append(Case(f"api/SGD/step/{label}", bad_grad(mutate), expect, ("weight", "fc0.weight", "gradient"),
                        lambda r: None, fix=fix))
    out += [Case("api/decay_groups/None", lambda: q.decay_groups(None), "error", ("model",), fix=fix),
            Case("api/decay_groups/str", lambda: q.decay_groups("x"), "error", ("model",), fix=fix),
            Case("api/decay_groups/valid", lambda: q.decay_groups(_tiny_model()), "ok", (), lambda r: None, fix=fix)]
    return out


def _loss_cases():
    fix = "qorus_jit/train/losses.py"
    out = []
    g = rng("loss")
    logits = g.standard_normal((2, 3, 5)).astype(F)
    targets = g.integers(0, 5, (2, 3))

    def ce(kw):
        fn = q.CrossEntropyLoss(kw.pop("ignore_index", -100))
        loss, grad = fn(**kw)
        return loss, np.array(grad)
    out += call_cases("api/CrossEntropyLoss", ce, lambda: dict(logits=logits.copy(), targets=targets.copy(), scale=1.0,
                                                               ignore_index=-100),
                      dict(scale=Real(), ignore_index=Int(),
                           logits=Custom(("float64", lambda: logits.astype(np.float64), "either", logits.copy),
                                         ("list", lambda: logits.tolist(), "either", logits.copy),
                                         ("noncontig", lambda: noncontig(logits), "either", logits.copy),
                                         ("1-D", lambda: logits[0, 0], "error"), ("None", None, "error"),
                                         ("str", "x", "error"), ("nan", lambda: np.full_like(logits, np.nan), "either"),
                                         ("size0", lambda: logits[:0], "either")),
                           targets=Custom(("=V", lambda: np.full((2, 3), 5), "error"),
                                          ("negative", lambda: np.full((2, 3), -1), "error"),
                                          ("float", lambda: targets.astype(F), "either", targets.copy),
                                          ("list", lambda: targets.tolist(), "either", targets.copy),
                                          ("int32", lambda: targets.astype(np.int32), "ok", targets.copy),
                                          ("wrong-shape", lambda: targets[:, :2], "error"), ("None", None, "error"),
                                          ("all-ignored", lambda: np.full((2, 3), -100), "ok"),
                                          ("huge", lambda: np.full((2, 3), 2**40), "error"))),
                      fix=fix, names={"logits": ("logits",), "targets": ("targets",)},
                      skip={("logits", "size0")})
    pred = g.standard_normal((4, 2)).astype(F)
    target = g.standard_normal((4, 2)).astype(F)

    def mse(kw):
        loss, grad = q.MSELoss()(**kw)
        return loss, np.array(grad)
    out += call_cases("api/MSELoss", mse, lambda: dict(pred=pred.copy(), target=target.copy(), scale=1.0),
                      dict(scale=Real(),
                           pred=Custom(("float64", lambda: pred.astype(np.float64), "either", pred.copy),
                                       ("list", lambda: pred.tolist(), "either", pred.copy), ("None", None, "error"),
                                       ("size0", lambda: pred[:0], "error"), ("str", "x", "error")),
                           target=Custom(("float64", lambda: target.astype(np.float64), "either", target.copy),
                                         ("list", lambda: target.tolist(), "either", target.copy),
                                         ("None", None, "error"),
                                         ("wrong-size", lambda: target[:3], "error"), ("str", "x", "error"),
                                         ("flat", lambda: target.reshape(-1), "either", target.copy))), fix=fix)
    for label, v, expect in (("cross_entropy", "cross_entropy", "ok"), ("mse", "mse", "ok"), ("nope", "nope", "error"),
                             ("None", None, "error"), ("int", 3, "error"), ("instance", q.MSELoss(), "ok")):
        out.append(Case(f"api/make_loss/{label}", lambda v=v: q.make_loss(v), expect, ("loss",), lambda r: None,
                        fix=fix))
    return out


def _data_cases():
    fix_a, fix_t = "qorus_jit/data/arrays.py", "qorus_jit/data/text.py"
    out = []
    X = rng("X").standard_normal((10, 3)).astype(F)
    y = np.arange(10) % 3

    def key(ds):
        return [tuple(np.array(a) for a in ds.next_batch()) for _ in range(3)]
    out += call_cases("api/ArrayDataset", lambda k: q.ArrayDataset(**k),
                      lambda: dict(X=X.copy(), y=y.copy(), batch_size=4, shuffle=True, seed=0, drop_last=False),
                      dict(batch_size=Int(1), shuffle=Flag(), seed=Int(0), drop_last=Flag(),
                           X=Custom(("list", lambda: X.tolist(), "either", X.copy), ("None", None, "error"),
                                    ("empty", lambda: X[:0], "error"), ("1-D", lambda: X[:, 0], "either"),
                                    ("float64", lambda: X.astype(np.float64), "either", X.copy), ("str", "x", "error")),
                           y=Custom(("short", lambda: y[:5], "error"), ("None", None, "error"),
                                    ("list", lambda: y.tolist(), "either", y.copy), ("str", "x", "error"))),
                      key=key, fix=fix_a, skip={("batch_size", "huge"), ("batch_size", "beyond-int64")})

    def split_key(r):
        return [np.array(a) for a in r]
    out += call_cases("api/train_test_split", lambda k: q.train_test_split(**k),
                      lambda: dict(X=X.copy(), y=y.copy(), test_fraction=0.2, seed=0),
                      dict(test_fraction=Real(0, 1, low_open=True, high_open=True), seed=Int(0),
                           X=Custom(("None", None, "error"), ("str", "x", "error"),
                                    ("list", lambda: X.tolist(), "either", X.copy)),
                           y=Custom(("short", lambda: y[:5], "error"), ("None", None, "error"))),
                      key=split_key, fix=fix_a, skip={("seed", "beyond-int64")})
    tokens = (np.arange(200) % 7).astype(np.int32)

    def text_key(ds):
        return [tuple(np.array(a) for a in ds.train_batch(2)) for _ in range(2)]
    out += call_cases("api/TextDataset", lambda k: q.TextDataset(**k),
                      lambda: dict(tokens=tokens.copy(), seq_len=8, val_fraction=0.1, seed=0, vocab_size=7),
                      dict(seq_len=Int(1), val_fraction=Real(0, 1, low_open=True, high_open=True), seed=Int(0),
                           vocab_size=Int(1, optional=True),
                           tokens=Custom(("list", lambda: tokens.tolist(), "either", tokens.copy),
                                         ("None", None, "error"),
                                         ("float", lambda: tokens.astype(F), "error"),
                                         ("negative", lambda: -tokens - 1, "error"), ("short", lambda: tokens[:5],
                                                                                      "error"),
                                         ("2-D", lambda: tokens.reshape(20, 10), "error"),
                                         ("=vocab", lambda: tokens + 1, "error"), ("str", "abc", "error"))),
                      key=text_key, fix=fix_t, skip={("seq_len", "huge"), ("seq_len", "beyond-int64")})
    ds = q.TextDataset(tokens.copy(), 8, vocab_size=7)
    for label, bs, expect in (("zero", 0, "error"), ("negative", -1, "error"), ("str", "2", "error"),
                              ("np.int64", np.int64(2), "ok"), ("None", None, "error"), ("float", 2.0, "either")):
        out.append(Case(f"api/TextDataset/train_batch/{label}", lambda bs=bs: ds.train_batch(bs), expect,
                        ("batch_size",), lambda r: None, fix=fix_t))
    return out


def _config_cases():
    fix = "qorus_jit/train/run.py"
    out = []
    for field, bad in (("steps", (0, -1, "x", 1.5, True, None)), ("lr", (float("nan"), -1.0, "x", float("inf"))),
                       ("dim", (0, "x", 2.5)), ("arch", ("nope", 3, None)), ("optimizer", ("nope", 3)),
                       ("schedule", ("nope",)), ("beta1", (1.0, -0.1)), ("val_fraction", (1.0, -0.1, float("nan"))),
                       ("tie_embeddings", ("yes", 1, None)), ("data", (3, None)), ("threads", (-1, "x")),
                       ("temperature", (-1.0, float("nan"))), ("warmup_steps", (-2, "x")),
                       ("n_kv_heads", (3, -1)), ("seq_len", (0,)), ("name", ("../x", 3))):
        for v in bad:
            out.append(Case(f"api/TrainConfig/{field}/{v!r}", lambda field=field, v=v: q.TrainConfig(**{field: v}),
                            "error", (field,), fix=fix))
    for field, v in (("steps", np.int64(5)), ("lr", np.float32(0.01)), ("tie_embeddings", np.bool_(False))):
        out.append(Case(f"api/TrainConfig/{field}/numpy", lambda field=field, v=v: q.TrainConfig(**{field: v}), "ok",
                        (), lambda c, field=field, v=v: same(getattr(c, field), v.item()), fix=fix))
    out += [Case("api/TrainConfig/from_dict/unknown", lambda: q.TrainConfig.from_dict({"nope": 1}), "error",
                 ("nope",), fix=fix),
            Case("api/TrainConfig/from_dict/list", lambda: q.TrainConfig.from_dict([1]), "error", ("*",), fix=fix),
            Case("api/start_run/not-a-config", lambda: q.start_run({"steps": 1}), "error", ("cfg",), fix=fix),
            Case("api/start_run/None", lambda: q.start_run(None), "error", ("cfg",), fix=fix)]
    return out


def _trainer_cases():
    fix = "qorus_jit/train/trainer.py"
    out = []
    X = rng("tX").standard_normal((16, 4)).astype(F)
    y = np.arange(16) % 3

    def trainer(**over):
        def call():
            m = q.MLP([4, 3], rng=0)
            kw = dict(steps=2, batch_size=None, loss="cross_entropy", progress=False)  # the dataset's batch size
            kw.update(over)
            data = kw.pop("data", q.ArrayDataset(X, y, batch_size=4))
            opt = kw.pop("optimizer", q.SGD(m, 0.1))
            t = q.Trainer(kw.pop("model", m), opt, data, **kw)
            return t.fit()
        return call
    for label, over, expect, names in (
            ("valid", {}, "ok", ()), ("steps-zero", dict(steps=0), "error", ("steps",)),
            ("steps-str", dict(steps="2"), "error", ("steps",)), ("steps-np.int64", dict(steps=np.int64(2)), "ok", ()),
            ("batch-zero", dict(batch_size=0), "error", ("batch_size",)),
            ("loss-nope", dict(loss="nope"), "error", ("loss",)), ("grad_accum-zero", dict(grad_accum=0), "error",
                                                                  ("grad_accum",)),
            ("clip-negative", dict(clip=-1.0), "error", ("clip",)), ("clip-nan", dict(clip=float("nan")), "error",
                                                                     ("clip",)),
            ("schedule-str", dict(schedule="cosine"), "error", ("schedule",)),
            ("schedule-number", dict(schedule=0.1), "error", ("schedule",)),
            ("eval_every-negative", dict(eval_every=-1), "error", ("eval_every",)),
            ("val_data-str", dict(val_data="x", eval_every=1), "error", ("val_data",)),
            ("data-None", dict(data=None), "error", ("data",)), ("data-list", dict(data=[1, 2]), "error", ("data",)),
            ("optimizer-None", dict(optimizer=None), "error", ("optimizer",)),
            ("optimizer-of-another-model", dict(optimizer=q.SGD(q.MLP([4, 3]), 0.1)), "error", ("optimizer",)),
            ("model-None", dict(model=None), "error", ("model",)),
            ("loss-mse-targets", dict(loss="mse"), "error", ("target", "pred", "loss")),
            ("progress-str", dict(progress="no"), "error", ("progress",)),
            ("run_dir-int", dict(run_dir=3, ckpt_every=1), "error", ("run_dir",)),
            ("keep-zero", dict(keep_checkpoints=0), "error", ("keep_checkpoints",)),
            ("log_every-zero", dict(log_every=0), "error", ("log_every",)),
            ("extra_state-str", dict(extra_state="x"), "error", ("extra_state",))):
        out.append(Case(f"api/Trainer/{label}", trainer(**over), expect, names, lambda r: None, fix=fix))

    def prof(**kw):
        def call():
            m = q.MLP([4, 3], rng=0)
            return q.profile(m, kw.get("optimizer", q.SGD(m, 0.1)), kw.get("loss"), kw.get("steps", 2))
        return call
    for label, kw, expect, names in (("steps-zero", dict(steps=0), "error", ("steps",)),
                                     ("steps-str", dict(steps="2"), "error", ("steps",)),
                                     ("optimizer-str", dict(optimizer="sgd"), "error", ("optimizer",)),
                                     ("loss-nope", dict(loss="nope"), "error", ("loss",))):
        out.append(Case(f"api/profile/{label}", prof(**kw), expect, names, fix="qorus_jit/train/profiler.py"))
    return out


def _tokenizer_cases():
    out = []
    byte = q.ByteTokenizer()
    bpe = q.BPETokenizer.train(["the cat sat on the mat " * 10], vocab_size=280)
    from tests.test_llama2c import make_vocab

    pieces, scores = make_vocab()
    l2c = q.Llama2cTokenizer(pieces, scores)
    for name, tok, fix in (("ByteTokenizer", byte, "qorus_jit/tokenizers/byte.py"),
                           ("BPETokenizer", bpe, "qorus_jit/tokenizers/bpe.py"),
                           ("Llama2cTokenizer", l2c, "qorus_jit/tokenizers/llama2c.py")):
        V = tok.vocab_size
        for label, text, expect in (("None", None, "error"), ("int", 3, "error"), ("bytes", b"ab", "error"),
                                    ("surrogate", "a\ud800b", "error"), ("list", ["a"], "error"),
                                    ("np.str_", np.str_("the cat"), "ok"), ("empty", "", "ok"),
                                    ("nul", "a\0b", "ok"), ("long", "the cat " * 2000, "ok")):
            out.append(Case(f"api/{name}/encode/{label}", lambda tok=tok, text=text: tok.encode(text), expect,
                            ("text",), lambda r: None if isinstance(r, np.ndarray) and r.ndim == 1 else repr(r),
                            fix=fix))
        valid_ids = list(tok.encode("the cat"))
        for label, ids, expect in (("valid", valid_ids, "ok"), ("np", np.array(valid_ids), "ok"),
                                   ("=vocab", [V], "error"), ("negative", [-1], "error"), ("huge", [2**40], "error"),
                                   ("beyond-int64", [2**64], "error"), ("floats", [1.5], "error"),
                                   ("float-integral", [1.0], "either"), ("nested", [[1]], "error"),
                                   ("str", "abc", "error"), ("None", None, "error"), ("empty", [], "ok"),
                                   ("int", 5, "error"), ("bool", [True], "either"), ("np.int8", np.array([1], np.int8),
                                                                                   "ok"),
                                   ("noncontig", noncontig(np.array(valid_ids)), "ok"),
                                   ("generator", (i for i in valid_ids), "either")):
            out.append(Case(f"api/{name}/decode/{label}", lambda tok=tok, ids=ids: tok.decode(ids), expect,
                            ("ids",), lambda r: None if isinstance(r, str) else repr(r), fix=fix))
        out.append(Case(f"api/{name}/round-trip", lambda tok=tok: tok.decode(tok.encode("the cat sat é")), "ok", (),
                        lambda r: None if r.endswith("the cat sat é") else repr(r), fix=fix))
    for label, args, expect, names in (
            ("pieces-None", (None, [0.0]), "error", ("pieces",)), ("scores-short", (pieces, scores[:5]), "error",
                                                                   ("scores",)),
            ("pieces-str", (["a", "b", "c"], [0.0] * 3), "either", ("pieces",)),
            ("scores-nan", (pieces, np.full(len(pieces), np.nan)), "either", ("scores",)),
            ("max-len-short", (pieces, scores, 1), "error", ("max_token_length",))):
        out.append(Case(f"api/Llama2cTokenizer/init/{label}", lambda args=args: q.Llama2cTokenizer(*args), expect,
                        names, lambda r: None, fix="qorus_jit/tokenizers/llama2c.py"))
    for label, args, expect, names in (("vocab-zero", (["abc"], 0), "error", ("vocab_size",)),
                                       ("texts-None", (None, 300), "error", ("texts_or_files",)),
                                       ("texts-str", ("the cat", 300), "either", ("texts_or_files",)),
                                       ("vocab-str", (["abc"], "300"), "error", ("vocab_size",))):
        out.append(Case(f"api/BPETokenizer/train/{label}", lambda args=args: q.BPETokenizer.train(*args), expect,
                        names, lambda r: None, fix="qorus_jit/tokenizers/bpe.py"))
    out.append(Case("api/BPETokenizer/init/str", lambda: q.BPETokenizer("x"), "error", ("tokenizer",),
                    fix="qorus_jit/tokenizers/bpe.py"))
    return out


def _text_role_cases():
    """The sentence encoder's constructor arguments (its folder loading is in cases_loaders)."""
    fix = "qorus_jit/infer/embeddings.py"
    from tests.test_embeddings import VOCAB, make_tokenizer

    bert = q.Bert(q.BertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=len(VOCAB), max_seq_len=16),
                  rng=0)
    out = []
    for label, kw, expect, names in (("valid", {}, "ok", ()), ("model-None", dict(model=None), "error", ("model",)),
                                     ("model-llama", dict(model=q.Llama(q.LlamaConfig(dim=16, n_layers=1, n_heads=2,
                                                                                       hidden_dim=32, vocab_size=50))),
                                      "error", ("model",)),
                                     ("pooling-nope", dict(pooling="nope"), "error", ("pooling",)),
                                     ("normalize-str", dict(normalize="no"), "error", ("normalize",)),
                                     ("max_seq_len-zero", dict(max_seq_len=0), "error", ("max_seq_len",)),
                                     ("max_seq_len-above-model", dict(max_seq_len=64), "error", ("max_seq_len",)),
                                     ("pad_id-vocab", dict(pad_id=len(VOCAB)), "error", ("pad_id",)),
                                     ("tokenizer-None", dict(tokenizer=None), "error", ("tokenizer",))):
        def call(kw=kw):
            args = dict(model=bert, tokenizer=make_tokenizer())
            args.update(kw)
            return q.SentenceEncoder(**args)
        out.append(Case(f"api/SentenceEncoder/init/{label}", call, expect, names, lambda r: None, fix=fix))
    return out


def cases():
    return (_threads_cases() + _schedule_cases() + _optimizer_cases() + _loss_cases() + _data_cases()
            + _config_cases() + _trainer_cases() + _tokenizer_cases() + _text_role_cases())
