"""Optimizers against torch.optim step for step (an MLP, and a small Llama against transformers with AdamW,
warmup + cosine and clipping), weight-decay groups, state round trips and bad inputs."""

import doctest
import json
import math
import tracemalloc

import numpy as np
import pytest

import qorus_jit
import qorus_jit.train.optim as O
from qorus_jit.kernels.loss import cross_entropy_forward_backward
from qorus_jit.models import GPT2, MLP, Bert, BertConfig, GPT2Config, Llama, LlamaConfig
from qorus_jit.train.optim import SGD, Adam, AdamW, decay_groups
from qorus_jit.train.schedule import warmup_cosine
from tests.helpers import torch_or_skip
from tests.models.reference import transformers_or_skip

SIZES = [8, 16, 4]
TORCH_NAMES = {"fc0.weight": "0.weight", "fc0.bias": "0.bias", "fc1.weight": "2.weight", "fc1.bias": "2.bias"}


def _batches(n, seed=1, rows=32):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((rows, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], rows))
            for _ in range(n)]


def _ours_step(model, opt, x, y, clip=None):
    """One training step of ours: forward, mean cross-entropy, backward into zeroed grads, (clip), update."""
    logits = model.forward(x)
    dlogits = np.empty_like(logits)
    loss = cross_entropy_forward_backward(dlogits, logits, y)
    opt.zero_grad()
    model.backward(dlogits)
    if clip is not None:
        opt.clip_grad_norm(clip)
    opt.step()
    return loss


def _torch_mlp(torch, model):
    ref = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    params = model.parameters()
    with torch.no_grad():
        for ours, theirs in TORCH_NAMES.items():
            ref.get_parameter(theirs).copy_(torch.from_numpy(params[ours].copy()))
    return ref


def _torch_groups(named, weight_decay, mirror, no_decay_rule):
    """torch param groups: one group (everything decayed) or the no-decay convention by ``no_decay_rule``."""
    named = list(named)
    if not mirror:
        return [{"params": [p for _, p in named], "weight_decay": weight_decay}]
    return [{"params": [p for n, p in named if not no_decay_rule(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if no_decay_rule(n, p)], "weight_decay": 0.0}]


def _rel(a, b):
    """Largest absolute difference over the largest magnitude of the reference."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# (ours, torch class, torch kwargs, weight_decay, mirror default groups)
CASES = {
    "sgd": (lambda m: SGD(m, lr=0.1), "SGD", dict(lr=0.1), 0.0, False),
    "sgd-momentum": (lambda m: SGD(m, lr=0.1, momentum=0.9, weight_decay=0.01, no_decay=()),
                     "SGD", dict(lr=0.1, momentum=0.9), 0.01, False),
    "sgd-dampening": (lambda m: SGD(m, lr=0.1, momentum=0.8, dampening=0.1, weight_decay=0.01),
                      "SGD", dict(lr=0.1, momentum=0.8, dampening=0.1), 0.01, True),
    "sgd-nesterov": (lambda m: SGD(m, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
                     "SGD", dict(lr=0.05, momentum=0.9, nesterov=True), 0.01, True),
    "adam-l2": (lambda m: Adam(m, lr=1e-2, weight_decay=0.01), "Adam", dict(lr=1e-2), 0.01, True),
    "adam-l2-all": (lambda m: Adam(m, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05, no_decay=()),
                    "Adam", dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6), 0.05, False),
    "adamw": (lambda m: AdamW(m, lr=1e-2, weight_decay=0.1), "AdamW", dict(lr=1e-2), 0.1, True),
    "adamw-all": (lambda m: AdamW(m, lr=1e-2, weight_decay=0.1, no_decay=()), "AdamW", dict(lr=1e-2), 0.1, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mlp_matches_torch_for_20_steps(case):
    torch = torch_or_skip()
    make, cls, kwargs, wd, mirror = CASES[case]
    model = MLP(SIZES, rng=0)
    ref = _torch_mlp(torch, model)
    opt = make(model)
    groups = _torch_groups(((ours, ref.get_parameter(t)) for ours, t in TORCH_NAMES.items()), wd, mirror,
                           lambda n, p: p.ndim < 2)
    topt = getattr(torch.optim, cls)(groups, **kwargs)
    worst_loss = 0.0
    for x, y in _batches(20):
        ours = _ours_step(model, opt, x, y)
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        topt.step()
        worst_loss = max(worst_loss, abs(ours - loss.item()) / abs(loss.item()))
    assert worst_loss < 1e-5, f"{case}: loss relative difference {worst_loss:.2e}"
    params = model.parameters()
    for ours, theirs in TORCH_NAMES.items():
        err = _rel(params[ours], ref.get_parameter(theirs).detach().numpy())
        assert err < 1e-5, f"{case}: {ours} relative difference {err:.2e}"
    assert opt.step_count == 20


def test_llama_adamw_warmup_cosine_clipping_matches_transformers(tmp_path):
    """The end-to-end parity of training: same Llama, same batches, AdamW with the default no-decay groups,
    warmup + cosine, clipping at 1.0, 20 steps; each step's loss and the final weights agree with torch."""
    torch = torch_or_skip()
    transformers = transformers_or_skip()
    cfg = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, vocab_size=61, max_seq_len=32,
                      norm_eps=1e-5)
    model = Llama(cfg, rng=0)
    qorus_jit.save_pretrained(model, tmp_path)
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").float().train()
    assert {n for n, _ in ref.named_parameters()} == set(model.parameters())

    lr, wd, warm, total, B, T, V = 1e-2, 0.1, 5, 20, 4, 16, 61
    # default groups, written independently: embeddings and 1-D tensors (norms) take no decay
    rule = lambda n, p: p.ndim < 2 or "embed_tokens" in n  # noqa: E731
    groups = _torch_groups(ref.named_parameters(), wd, True, rule)
    assert decay_groups(model) == ([n for n, p in ref.named_parameters() if not rule(n, p)],
                                   [n for n, p in ref.named_parameters() if rule(n, p)])
    topt = torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(
        topt, lambda k: (k + 1) / warm if k < warm else 0.5 * (1 + math.cos(math.pi * (k - warm) / (total - warm))))
    opt = AdamW(model, lr=lr, weight_decay=wd)
    schedule = warmup_cosine(lr, warm, total)

    rng = np.random.default_rng(3)
    dlogits = np.empty((B * T, V), np.float32)
    losses, norms = [], []
    for _ in range(total):
        seq = rng.integers(0, V, (B, T + 1))
        ids, targets = np.ascontiguousarray(seq[:, :-1]), np.ascontiguousarray(seq[:, 1:]).reshape(-1)
        # ours
        opt.lr = schedule(opt.step_count)
        logits = model.forward(ids)
        ours = cross_entropy_forward_backward(dlogits, logits.reshape(-1, V), targets)
        opt.zero_grad()
        model.backward(dlogits.reshape(B, T, V))
        our_norm = opt.clip_grad_norm(1.0)
        opt.step()
        # torch
        topt.zero_grad()
        out = ref(torch.from_numpy(ids)).logits
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, V), torch.from_numpy(targets))
        loss.backward()
        their_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0).item()
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)
        topt.step()
        sched.step()
        losses.append(abs(ours - loss.item()) / loss.item())
        norms.append(abs(our_norm - their_norm) / their_norm)
    assert max(losses) < 1e-3, f"loss relative differences {max(losses):.2e}"
    assert max(norms) < 1e-3, f"grad-norm relative differences {max(norms):.2e}"
    theirs = dict(ref.named_parameters())
    worst = max(_rel(p, theirs[n].detach().numpy()) for n, p in model.parameters().items())
    assert worst < 1e-3, f"final weights relative difference {worst:.2e}"


# -- weight-decay groups --------------------------------------------------------------------------------------


def _convention(names_shapes, embedding_markers):
    decayed = [n for n, s in names_shapes if len(s) >= 2 and not any(m in n for m in embedding_markers)]
    return decayed, [n for n, s in names_shapes if n not in decayed]


@pytest.mark.parametrize("tie", [False, True])
def test_decay_groups_llama(tie):
    cfg = LlamaConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, vocab_size=20, max_seq_len=8,
                      tie_embeddings=tie, attention_bias=True)
    model = Llama(cfg, rng=0)
    decayed, not_decayed = decay_groups(model)
    assert ("model.embed_tokens.weight" in not_decayed and "model.norm.weight" in not_decayed
            and "model.layers.1.input_layernorm.weight" in not_decayed
            and "model.layers.0.post_attention_layernorm.weight" in not_decayed
            and "model.layers.0.self_attn.q_proj.bias" in not_decayed)
    assert "model.layers.0.mlp.gate_proj.weight" in decayed and "model.layers.1.self_attn.o_proj.weight" in decayed
    assert ("lm_head.weight" in decayed) != tie
    assert (decayed, not_decayed) == _convention([(n, p.shape) for n, p in model.parameters().items()],
                                                 ["embed_tokens"])
    order = list(model.parameters())
    assert decayed == [n for n in order if n in decayed] and not_decayed == [n for n in order if n in not_decayed]
    assert sorted(decayed + not_decayed) == sorted(order)
    opt = AdamW(model)
    assert opt.decayed == decayed and opt.not_decayed == not_decayed


def test_decay_groups_gpt2():
    model = GPT2(GPT2Config(dim=16, n_layers=2, n_heads=2, vocab_size=20, max_seq_len=8), rng=0)
    decayed, not_decayed = decay_groups(model)
    for name in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                 "transformer.h.0.ln_1.bias", "transformer.h.1.attn.c_attn.bias", "transformer.h.0.mlp.c_fc.bias"):
        assert name in not_decayed, name
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_proj.weight",
                 "transformer.h.0.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight"):
        assert name in decayed, name
    assert "lm_head.weight" not in decayed + not_decayed  # tied: listed once, by the embedding
    assert (decayed, not_decayed) == _convention([(n, p.shape) for n, p in model.parameters().items()],
                                                 ["wte", "wpe"])
    assert AdamW(model).not_decayed == not_decayed


def test_decay_groups_bert():
    model = Bert(BertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, vocab_size=20, max_seq_len=8), rng=0)
    decayed, not_decayed = decay_groups(model)
    for name in ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                 "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
                 "encoder.layer.0.attention.output.LayerNorm.weight", "encoder.layer.1.output.LayerNorm.bias",
                 "encoder.layer.0.attention.self.query.bias"):
        assert name in not_decayed, name
    for name in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.output.dense.weight",
                 "encoder.layer.0.intermediate.dense.weight", "encoder.layer.1.output.dense.weight"):
        assert name in decayed, name
    assert (decayed, not_decayed) == _convention([(n, p.shape) for n, p in model.parameters().items()],
                                                 ["embeddings."])
    assert SGD(model, lr=0.1, weight_decay=0.01).decayed == decayed


def _old_rule(model):
    """The rule decay_groups followed before parameters carried their marks: not decayed are the parameters
    with fewer than 2 axes and those owned by an Embedding or PositionEmbedding, found by walking the tree."""
    from qorus_jit.layers import Embedding
    from qorus_jit.layers.embedding import PositionEmbedding

    embedded = set()

    def walk(layer, prefix):
        if isinstance(layer, (Embedding, PositionEmbedding)):
            embedded.update(prefix + k for k in layer._params)
        for name, child in layer._children.items():
            walk(child, f"{prefix}{name}." if name else prefix)

    walk(model, "")
    params = model.parameters()
    not_decayed = [n for n, p in params.items() if p.ndim < 2 or n in embedded]
    return [n for n in params if n not in not_decayed], not_decayed


MODELS = {
    "mlp": lambda: MLP([4, 8, 8, 2], rng=0),
    "llama": lambda: Llama(LlamaConfig(dim=16, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=32, vocab_size=20,
                                       max_seq_len=8, attention_bias=True), rng=0),
    "llama-tied": lambda: Llama(LlamaConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, vocab_size=20,
                                            max_seq_len=8, tie_embeddings=True), rng=0),
    "gpt2": lambda: GPT2(GPT2Config(dim=16, n_layers=2, n_heads=2, vocab_size=20, max_seq_len=8), rng=0),
    "bert": lambda: Bert(BertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, vocab_size=20, max_seq_len=8),
                         rng=0),
}


@pytest.mark.parametrize("name", MODELS)
def test_decay_marks_give_the_old_rule(name):
    """The layers' marks (Layer.no_decay) split every model as the old type-and-shape rule did."""
    model = MODELS[name]()
    want = _old_rule(model)
    assert want[0] and want[1]
    assert decay_groups(model) == want
    assert model.no_decay() == want[1]
    opt = AdamW(model)
    assert (opt.decayed, opt.not_decayed) == want


def test_no_decay_override_and_decay_applied_only_to_decayed():
    model = MLP(SIZES, rng=0)
    assert AdamW(model, no_decay=()).not_decayed == []
    assert AdamW(model, no_decay=["fc0.weight"]).not_decayed == ["fc0.weight"]
    assert AdamW(model, no_decay=lambda n: n.startswith("fc1")).not_decayed == ["fc1.weight", "fc1.bias"]
    # zero gradients: AdamW only scales the decayed parameters by 1 - lr * wd; the others stay exact
    before = {n: p.copy() for n, p in model.parameters().items()}
    opt = AdamW(model, lr=0.1, weight_decay=0.5)
    model.zero_grad()
    opt.step()
    for n, p in model.parameters().items():
        want = before[n] * np.float32(1 - 0.1 * 0.5) if n.endswith("weight") else before[n]
        np.testing.assert_array_equal(p, want, err_msg=n)


class _Plain:
    """A model that is not a qorus Layer: parameters() and gradients() dicts only."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.p = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}
        self.g = {k: np.ones_like(v) for k, v in self.p.items()}

    def parameters(self):
        return self.p

    def gradients(self):
        return self.g


def test_plain_model_object():
    m = _Plain()
    assert decay_groups(m) == (["w"], ["b"])
    w0 = m.p["w"].copy()
    opt = SGD(m, lr=0.5, weight_decay=0.1)
    opt.step()
    np.testing.assert_allclose(m.p["w"], w0 - 0.5 * (1 + 0.1 * w0), rtol=1e-6)
    np.testing.assert_array_equal(m.p["b"], np.full(4, -0.5, np.float32))
    assert opt.grad_norm() == pytest.approx(math.sqrt(16))
    opt.zero_grad()  # no zero_grad() on the model: the gradients are filled with 0
    assert all(not g.any() for g in m.g.values())


# -- clipping -------------------------------------------------------------------------------------------------


def test_clip_grad_norm_matches_torch():
    torch = torch_or_skip()
    model = MLP(SIZES, rng=0)
    rng = np.random.default_rng(5)
    for g in model.gradients().values():
        g[...] = rng.standard_normal(g.shape)
    grads = [torch.from_numpy(g.copy()).requires_grad_(False) for g in model.gradients().values()]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt = SGD(model, lr=0.1)
    want_norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in model.gradients().values()))
    assert opt.grad_norm() == pytest.approx(want_norm, rel=1e-12)
    norm = opt.clip_grad_norm(0.5)
    their = torch.nn.utils.clip_grad_norm_(params, 0.5).item()
    assert norm == pytest.approx(want_norm, rel=1e-12) and norm == pytest.approx(their, rel=1e-6)
    for g, p in zip(model.gradients().values(), params, strict=True):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert opt.grad_norm() == pytest.approx(0.5, rel=1e-5)
    assert opt.clip_grad_norm(10.0) == pytest.approx(0.5, rel=1e-5)  # below max_norm: untouched
    assert opt.grad_norm() == pytest.approx(0.5, rel=1e-5)


def test_clip_grad_norm_nan_is_returned_untouched():
    model = MLP(SIZES, rng=0)
    for g in model.gradients().values():
        g.fill(1.0)
    model.gradients()["fc1.bias"][0] = np.nan
    before = [g.copy() for g in model.gradients().values()]
    assert math.isnan(SGD(model, lr=0.1).clip_grad_norm(1.0))
    for g, b in zip(model.gradients().values(), before, strict=True):
        np.testing.assert_array_equal(g, b)


# -- state ----------------------------------------------------------------------------------------------------


def _round_trip_disk(tmp_path, tensors, meta):
    """Through safetensors and JSON, as a checkpoint would (no pickle)."""
    from safetensors.numpy import load_file, save_file

    save_file(tensors, tmp_path / "optim.safetensors")
    (tmp_path / "optim.json").write_text(json.dumps(meta))
    return load_file(tmp_path / "optim.safetensors"), json.loads((tmp_path / "optim.json").read_text())


STATE_CASES = {
    "sgd-nesterov": (lambda m: SGD(m, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
                     lambda m: SGD(m, lr=1.0)),
    "adam": (lambda m: Adam(m, lr=1e-2, weight_decay=0.01), lambda m: Adam(m, lr=0.5, betas=(0.5, 0.5))),
    "adamw": (lambda m: AdamW(m, lr=1e-2, weight_decay=0.1), lambda m: AdamW(m, weight_decay=0.0, no_decay=())),
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_state_dict_round_trip_resumes_bit_identically(tmp_path, case):
    make, make_other = STATE_CASES[case]
    schedule = warmup_cosine(1e-2, 3, 10)
    batches = _batches(10, seed=7)
    model = MLP(SIZES, rng=0)
    opt = make(model)

    def run(model, opt, part):
        for x, y in part:
            opt.lr = schedule(opt.step_count)
            _ours_step(model, opt, x, y, clip=1.0)

    run(model, opt, batches[:5])
    tensors, meta = _round_trip_disk(tmp_path, *opt.state_dict())
    assert meta["step_count"] == 5 and meta["kind"] == opt.kind

    fresh = MLP(SIZES, rng=123)  # other weights, other hyperparameters: all replaced by the loads
    fresh.load_parameters({n: p.copy() for n, p in model.parameters().items()})
    fresh_opt = make_other(fresh)
    fresh_opt.load_state_dict(tensors, meta)
    assert repr(fresh_opt) == repr(opt) and fresh_opt.step_count == 5

    run(model, opt, batches[5:])
    run(fresh, fresh_opt, batches[5:])
    for n, p in model.parameters().items():
        assert np.array_equal(p, fresh.parameters()[n]), n
    (t1, m1), (t2, m2) = opt.state_dict(), fresh_opt.state_dict()
    assert m1 == m2 and t1.keys() == t2.keys()
    assert all(np.array_equal(t1[k], t2[k]) for k in t1)


def test_state_dict_contents():
    model = MLP(SIZES, rng=0)
    opt = AdamW(model, lr=1e-3)
    tensors, meta = opt.state_dict()
    assert tensors == {} and meta["step_count"] == 0
    for x, y in _batches(2):
        _ours_step(model, opt, x, y)
    tensors, meta = opt.state_dict()
    assert sorted(tensors) == sorted(f"{n}.{b}" for n in TORCH_NAMES for b in ("exp_avg", "exp_avg_sq"))
    assert meta["kind"] == "adamw" and meta["steps"] == dict.fromkeys(TORCH_NAMES, 2)
    assert meta["hyperparameters"] == {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
    assert meta["no_decay"] == ["fc0.bias", "fc1.bias"]
    assert json.loads(json.dumps(meta)) == meta
    for k, v in tensors.items():  # copies, not the live buffers
        assert v.shape == model.parameters()[k.rsplit(".", 1)[0]].shape and v.dtype == np.float32
    before = {k: v.copy() for k, v in tensors.items()}
    _ours_step(model, opt, *_batches(1)[0])
    assert all(np.array_equal(before[k], tensors[k]) for k in tensors)
    sgd_tensors, sgd_meta = SGD(model, lr=0.1).state_dict()
    assert sgd_tensors == {} and sgd_meta["kind"] == "sgd"


def _state_after_steps(make, n=2):
    model = MLP(SIZES, rng=0)
    opt = make(model)
    for x, y in _batches(n):
        _ours_step(model, opt, x, y)
    return model, opt


@pytest.mark.parametrize("edit,pattern", [
    (lambda t, m: m.update(kind="sgd"), "kind"),
    (lambda t, m: t.pop("fc1.weight.exp_avg"), "missing fc1.weight.exp_avg"),
    (lambda t, m: t.update({"fc1.weight.momentum_buffer": t["fc1.weight.exp_avg"]}),
     "unexpected fc1.weight.momentum_buffer"),
    (lambda t, m: t.update({"fc0.bias.exp_avg_sq": np.zeros(15, np.float32)}), "fc0.bias.exp_avg_sq.*shape"),
    (lambda t, m: t.update({"fc0.bias.exp_avg": np.zeros(16, np.float64)}), "fc0.bias.exp_avg.*dtype"),
    (lambda t, m: m["buffers"].update({"nope.weight": ["exp_avg"]}), "nope.weight"),
    (lambda t, m: m["buffers"].update({"fc0.bias": ["exp_avg", "exp_avg_sq", "momentum_buffer"]}),
     "momentum_buffer"),
    (lambda t, m: m["hyperparameters"].update(betas=[0.9, 1.0]), r"betas\[1\]"),
    (lambda t, m: m["hyperparameters"].pop("eps"), "eps"),
    (lambda t, m: m.pop("steps"), "steps"),
    (lambda t, m: m.update(steps=[1, 2]), "steps"),
    (lambda t, m: m["buffers"].update({"fc0.bias": "exp_avg"}), "fc0.bias"),
    (lambda t, m: m.update(step_count=-1), "step_count"),
    (lambda t, m: m.update(no_decay=["fc9.bias"]), "fc9.bias"),
    (lambda t, m: m["steps"].update({"fc0.bias": 0}), "fc0.bias"),
])
def test_load_state_dict_rejects_mismatches(edit, pattern):
    _, opt = _state_after_steps(lambda m: AdamW(m, lr=1e-2))
    tensors, meta = opt.state_dict()
    before_t, before_m = opt.state_dict()
    edit(tensors, meta)
    target_model, target = _state_after_steps(lambda m: AdamW(m, lr=1e-2))
    with pytest.raises(ValueError, match=pattern):
        target.load_state_dict(tensors, meta)
    # nothing changed on failure
    after_t, after_m = target.state_dict()
    assert after_m == before_m and all(np.array_equal(after_t[k], before_t[k]) for k in before_t)


def test_load_state_dict_rejects_other_kinds_and_shapes():
    _, sgd = _state_after_steps(lambda m: SGD(m, lr=0.1, momentum=0.9))
    _, adam = _state_after_steps(lambda m: Adam(m))
    with pytest.raises(ValueError, match="kind: expected 'adamw'.*got 'sgd'"):
        AdamW(MLP(SIZES, rng=0)).load_state_dict(*sgd.state_dict())
    with pytest.raises(ValueError, match="kind: expected 'adam'.*got 'adamw'"):
        Adam(MLP(SIZES, rng=0)).load_state_dict(*AdamW(MLP(SIZES, rng=0)).state_dict())
    with pytest.raises(ValueError, match="kind"):
        SGD(MLP(SIZES, rng=0), lr=0.1).load_state_dict(*adam.state_dict())
    # a model of other shapes: the first tensor of a wrong shape is named
    with pytest.raises(ValueError, match=r"fc0\.weight\.momentum_buffer.*shape"):
        SGD(MLP([8, 12, 4], rng=0), lr=0.1).load_state_dict(*sgd.state_dict())
    with pytest.raises(TypeError, match="meta"):
        SGD(MLP(SIZES, rng=0), lr=0.1).load_state_dict({}, None)


# -- bad inputs -----------------------------------------------------------------------------------------------


def _model():
    return MLP(SIZES, rng=0)


class _NoParams:
    def parameters(self):
        return {}

    def gradients(self):
        return {}


@pytest.mark.parametrize("call,exc,name", [
    (lambda: SGD(_model(), lr=-0.1), ValueError, "lr"),
    (lambda: SGD(_model(), lr=float("nan")), ValueError, "lr"),
    (lambda: SGD(_model(), lr="0.1"), ValueError, "lr"),
    (lambda: SGD(_model(), lr=0.1, momentum=-0.5), ValueError, "momentum"),
    (lambda: SGD(_model(), lr=0.1, dampening=float("inf")), ValueError, "dampening"),
    (lambda: SGD(_model(), lr=0.1, weight_decay=-1), ValueError, "weight_decay"),
    (lambda: SGD(_model(), lr=0.1, nesterov=True), ValueError, "nesterov"),
    (lambda: SGD(_model(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "nesterov"),
    (lambda: SGD(_model(), lr=0.1, momentum=0.9, nesterov=1), ValueError, "nesterov"),
    (lambda: Adam(_model(), lr=-1e-3), ValueError, "lr"),
    (lambda: Adam(_model(), betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    (lambda: Adam(_model(), betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (lambda: Adam(_model(), betas=(0.9,)), ValueError, "betas"),
    (lambda: Adam(_model(), betas=0.9), ValueError, "betas"),
    (lambda: Adam(_model(), eps=0.0), ValueError, "eps"),
    (lambda: AdamW(_model(), eps=-1e-8), ValueError, "eps"),
    (lambda: AdamW(_model(), weight_decay=-0.1), ValueError, "weight_decay"),
    (lambda: AdamW(_model(), no_decay=["fc9.bias"]), ValueError, "no_decay"),
    (lambda: AdamW(_model(), no_decay="fc0.bias"), TypeError, "no_decay"),
    (lambda: AdamW(_model(), no_decay=3), TypeError, "no_decay"),
    (lambda: AdamW(object()), TypeError, "model"),
    (lambda: AdamW(_NoParams()), ValueError, "model"),
    (lambda: decay_groups(object()), TypeError, "model"),
])
def test_bad_arguments_name_the_argument(call, exc, name):
    with pytest.raises(exc, match=rf"^{name}"):
        call()


def test_bad_lr_and_max_norm_and_gradients_at_use():
    model = _model()
    opt = AdamW(model)
    with pytest.raises(ValueError, match="^lr:"):
        opt.lr = -1.0
    with pytest.raises(ValueError, match="^lr:"):
        opt.lr = float("inf")
    assert opt.lr == 1e-3
    with pytest.raises(ValueError, match="^max_norm:"):
        opt.clip_grad_norm(-1.0)
    m = _Plain()
    m.g["w"] = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="^gradient w: expected shape"):
        SGD(m, lr=0.1).step()
    m.g["w"] = np.ones((3, 4), np.float64)
    with pytest.raises(TypeError, match="^gradient w: expected dtype float32"):
        SGD(m, lr=0.1).step()
    m.g = {"x": np.ones(2, np.float32)}
    with pytest.raises(ValueError, match="^model: gradient x"):
        SGD(m, lr=0.1).step()
    m = _Plain()
    m.p["alias"] = m.p["w"]
    m.g["alias"] = np.zeros_like(m.p["w"])
    with pytest.raises(ValueError, match="alias: shares memory with w"):
        SGD(m, lr=0.1)


# -- allocation, repr, docs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda m: SGD(m, lr=0.1, momentum=0.9), lambda m: AdamW(m)])
def test_steps_after_the_first_allocate_nothing_sizable(make):
    model = MLP([256, 256, 256], rng=0)
    opt = make(model)
    for g in model.gradients().values():
        g.fill(0.01)
    opt.step()  # allocates the state buffers once
    nbytes = sum(p.nbytes for p in model.parameters().values())
    tracemalloc.start()
    try:
        for _ in range(3):
            opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < nbytes // 20, f"{peak} bytes allocated per step (parameters: {nbytes})"


def test_repr():
    assert repr(SGD(_model(), lr=0.1, momentum=0.9)) == \
        "SGD(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, no_decay=2 parameters)"
    assert repr(AdamW(_model(), no_decay=())) == \
        "AdamW(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, no_decay=0 parameters)"


def test_docstring_examples():
    assert doctest.testmod(O).failed == 0
