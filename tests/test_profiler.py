"""The profiler: results unchanged, everything put back, rows covering the layers and kernels, sane sums.

No assertion here is on an absolute time (the machine is shared); only on relations between the figures.
"""

import sys

import numpy as np
import pytest

from qorus_jit.kernels import trusted as K
from qorus_jit.kernels.activations import _relu_forward
from qorus_jit.layers import Layer
from qorus_jit.models import GPT2, MLP, Bert, BertConfig, GPT2Config, Llama, LlamaConfig
from qorus_jit.train.losses import CrossEntropyLoss
from qorus_jit.train.optim import AdamW
from qorus_jit.train.profiler import profile

TINY = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=40, max_seq_len=16)
EPS = 1e-6  # ms: float rounding of sums


class DoubleReLU(Layer):
    """A user layer in a user module, calling a kernel through kernels.trusted (``2 * relu(x)``)."""

    def forward(self, x):
        y = self.buffer("y", x.shape)
        K.relu_forward(y.reshape(-1), x.reshape(-1))
        y *= 2
        return y

    def backward(self, dy):
        return dy


class BoundReLU(DoubleReLU):
    """The same, with the kernel bound to a name at import time: it runs, but is not timed."""

    def forward(self, x):
        y = self.buffer("y", x.shape)
        _relu_forward(y.reshape(-1), x.reshape(-1))
        y *= 2
        return y


def _llama_setup():
    model = Llama(LlamaConfig(**TINY, tie_embeddings=False), rng=0)
    return model, AdamW(model, lr=1e-2, weight_decay=0.1), CrossEntropyLoss()


def _batches(n=3, B=2, T=12, V=TINY["vocab_size"]):
    rng = np.random.default_rng(1)
    return [(rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))) for _ in range(n)]


def _train(model, opt, loss_fn, batches):
    """Steps over ``batches``; returns copies of each step's logits and loss, and the final gradients."""
    out = []
    for x, y in batches:
        opt.zero_grad()
        logits = model.forward(x)
        loss, dlogits = loss_fn(logits, y)
        out.append((logits.copy(), loss))
        model.backward(dlogits)
        opt.step()
    return out, {k: g.copy() for k, g in model.gradients().items()}


def _snapshot(objs):
    """Identity of every name in the qorus_jit modules and this one, of the class attributes of the objects'
    classes, and of the objects' own attributes (and their class); copies of the dicts, compared by ``_same``."""
    mods = {n: dict(vars(m)) for n, m in list(sys.modules.items())
            if (n == "qorus_jit" or n.startswith("qorus_jit.") or n == __name__) and m is not None}
    classes = {c: dict(vars(c)) for o in objs for c in type(o).__mro__}
    inst = [(o, type(o), dict(vars(o))) for o in objs]
    return mods, classes, inst


def _same(a, b):
    mods_a, cls_a, inst_a = a
    mods_b, cls_b, inst_b = b
    assert mods_a.keys() == mods_b.keys()
    for n in mods_a:
        assert mods_a[n].keys() == mods_b[n].keys(), n
        changed = [k for k in mods_a[n] if mods_a[n][k] is not mods_b[n][k]]
        assert not changed, (n, changed)
    for c in cls_a:
        assert cls_a[c].keys() == cls_b[c].keys(), c
        assert all(cls_a[c][k] is cls_b[c][k] for k in cls_a[c]), c
    for (o, t, d), (o2, t2, d2) in zip(inst_a, inst_b, strict=True):
        assert o is o2 and t is t2 and type(o) is t
        assert d.keys() == d2.keys(), type(o).__name__
        # running changes the layers' state (saved inputs, buffers); what is callable must be the same object
        assert all(d[k] is d2[k] for k in d if callable(d[k]) and not isinstance(d[k], type)), type(o).__name__


def _all_objects(model, *others):
    layers = []

    def walk(layer):
        if any(layer is seen for seen in layers):
            return
        layers.append(layer)
        for child in [*layer._children.values(), *(v for v in vars(layer).values() if isinstance(v, Layer))]:
            walk(child)

    walk(model)
    return layers + list(others)


def test_results_identical_with_and_without_profiler():
    batches = _batches()
    ref, ref_grads = _train(*_llama_setup(), batches)
    model, opt, loss_fn = _llama_setup()
    with profile(model, optimizer=opt, loss=loss_fn):
        got, grads = _train(model, opt, loss_fn, batches)
    for (l1, s1), (l2, s2) in zip(ref, got, strict=True):
        assert np.array_equal(l1, l2) and s1 == s2
    assert ref_grads.keys() == grads.keys()
    assert all(np.array_equal(ref_grads[k], grads[k]) for k in grads)
    # and after the profile, the same model goes on exactly as an unprofiled one
    ref_model, ref_opt, ref_loss = _llama_setup()
    _train(ref_model, ref_opt, ref_loss, batches)
    after, _ = _train(model, opt, loss_fn, batches[:1])
    again, _ = _train(ref_model, ref_opt, ref_loss, batches[:1])
    assert np.array_equal(after[0][0], again[0][0])


def test_mlp_activation_kernels_identical():
    """ReLU's kernels and GELU's (exact or tanh, chosen per instance) are timed; everything is put back."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    dy = rng.standard_normal((16, 3)).astype(np.float32)
    for act, kernel in (("relu", "activations._relu_forward"), ("gelu", "activations._gelu_forward")):
        ref = MLP([8, 16, 16, 3], activation=act, rng=0)
        y_ref = ref.forward(x).copy()
        dx_ref = ref.backward(dy).copy()
        model = MLP([8, 16, 16, 3], activation=act, rng=0)
        model.forward(np.zeros_like(x))  # the layers' state attributes exist before the snapshot
        model.backward(np.zeros_like(dy))
        before = _snapshot(_all_objects(model))
        with profile(model) as prof:
            y = model.forward(x).copy()
            dx = model.backward(dy).copy()
        _same(before, _snapshot(_all_objects(model)))
        assert np.array_equal(y, y_ref) and np.array_equal(dx, dx_ref)
        names = {r["name"] for r in prof.rows("kernel")}
        assert kernel in names and kernel.replace("forward", "backward") in names
        callers = {r["caller"] for r in prof.rows("kernel") if r["name"] == kernel}
        assert callers == {type(model._children["act0"]).__name__}


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_other_architectures_identical(arch):
    """GPT-2 (fused q/k/v, learned positions, tied head, tanh GELU) and BERT (post-norm, LayerNorm, a padding
    mask): same outputs and input gradients, kernels of every layer kind timed, names put back."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 40, (2, 8))
    if arch == "gpt2":
        def make():
            return GPT2(GPT2Config(dim=32, n_layers=2, n_heads=4, vocab_size=40, max_seq_len=16), rng=0)
        args, kwargs, wanted = (ids,), {}, ("embedding.", "norm._layernorm_forward", "activations._gelu_tanh_forward")
    else:
        def make():
            return Bert(BertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=40, max_seq_len=16),
                        rng=0)
        mask = np.ones((2, 8), np.int64)
        mask[1, 5:] = 0
        args, kwargs, wanted = (ids,), {"attention_mask": mask}, ("norm._layernorm_forward", "activations._gelu_f")
    ref = make()
    y_ref = ref.forward(*args, **kwargs).copy()
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    ref.backward(dy)
    model = make()
    model.load_parameters(ref.parameters())  # (their biases are drawn without the seed)
    model.forward(*args, **kwargs)
    model.backward(dy)
    model.zero_grad()
    before = _snapshot(_all_objects(model))
    with profile(model) as prof:
        y = model.forward(*args, **kwargs).copy()
        model.backward(dy)
    _same(before, _snapshot(_all_objects(model)))
    assert np.array_equal(y, y_ref)
    assert all(np.array_equal(g, ref.gradients()[k]) for k, g in model.gradients().items())
    kernels = {r["name"] for r in prof.rows("kernel")}
    for prefix in wanted + ("matmul._linear_forward", "attention.attention_forward", "attention.attention_backward"):
        assert any(k.startswith(prefix) for k in kernels), prefix
    assert prof.steps == 1


def test_originals_restored():
    model, opt, loss_fn = _llama_setup()
    _train(model, opt, loss_fn, _batches(1))  # the layers' state attributes exist before the snapshot
    objs = _all_objects(model, opt, loss_fn)
    before = _snapshot(objs)
    with profile(model, optimizer=opt, loss=loss_fn):
        _train(model, opt, loss_fn, _batches(1))
        assert type(loss_fn) is not CrossEntropyLoss and isinstance(loss_fn, CrossEntropyLoss)
        assert "forward" in vars(model._children["model.layers.0"])
    _same(before, _snapshot(objs))
    assert type(loss_fn) is CrossEntropyLoss
    assert model.forward.__func__ is type(model).forward


def test_originals_restored_after_exception():
    model, opt, loss_fn = _llama_setup()
    _train(model, opt, loss_fn, _batches(1))
    objs = _all_objects(model, opt, loss_fn)
    before = _snapshot(objs)
    x, _ = _batches(1)[0]
    with pytest.raises(ValueError, match="ids"):
        with profile(model, optimizer=opt, loss=loss_fn) as prof:
            model.forward(x)
            model.forward(x + TINY["vocab_size"])  # ids out of range: the embedding raises
    _same(before, _snapshot(objs))
    assert prof._stack == [] and not prof._in_kernel
    with profile(model) as prof2:  # a new profile starts cleanly
        model.forward(x)
    assert prof2.steps == 1


def test_user_layer_module_kernels():
    """A layer class defined outside qorus_jit calling a kernel through kernels.trusted is timed too."""
    model = MLP([4, 6], rng=0)
    model.add("double", DoubleReLU(), model.output, "d")
    model.output = "d"
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    ref = model.forward(x).copy()
    before = _snapshot(_all_objects(model))
    with profile(model) as prof:
        y = model.forward(x).copy()
    _same(before, _snapshot(_all_objects(model)))
    assert np.array_equal(y, ref)
    rows = [r for r in prof.rows("kernel") if r["name"] == "activations._relu_forward"]
    assert [r["caller"] for r in rows] == ["DoubleReLU"]


def test_one_dispatch_hook():
    """The profiler swaps the entries of kernels.trusted and nothing else of any module: inside the block
    each entry is a timing wrapper of the kernel, after it the kernel itself. A kernel bound to a name at
    import time still runs (same result) but is not timed."""
    model = MLP([4, 6], rng=0)
    model.add("double", BoundReLU(), model.output, "d")
    model.output = "d"
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    ref = model.forward(x).copy()
    entries = {n: getattr(K, n) for n in K.__all__}
    mods, _, _ = _snapshot([])
    with profile(model) as prof:
        inside, _, _ = _snapshot([])
        y = model.forward(x).copy()
        swapped = {n: getattr(K, n) for n in K.__all__}
    for n, kernel in entries.items():
        assert swapped[n] is not kernel and swapped[n].__wrapped__ is kernel, n
        assert getattr(K, n) is kernel, n
    changed = {name: {k for k in d if inside[name].get(k) is not d[k]} for name, d in mods.items()}
    assert {name for name, keys in changed.items() if keys} == {K.__name__}
    assert changed[K.__name__] == set(K.__all__)
    assert np.array_equal(y, ref)
    kernels = {r["name"]: r["caller"] for r in prof.rows("kernel")}
    assert kernels["matmul._linear_forward"] == "Linear" and "activations._relu_forward" not in kernels


def test_rows_cover_layers_and_kernels():
    model, opt, loss_fn = _llama_setup()
    batches = _batches(3)
    _train(model, opt, loss_fn, batches[:1])
    with profile(model, optimizer=opt, loss=loss_fn) as prof:
        _train(model, opt, loss_fn, batches)
    assert prof.steps == 3  # model.forward calls
    # every layer has a row of its own when nothing is merged
    paths = {r["name"] for r in prof.rows("path", merge=False) if r["type"] != "kernel"}
    expected = {"Llama", "model.embed_tokens", "model.layers.0", "model.layers.1", "input_layernorm", "self_attn",
                "q_proj", "k_proj", "v_proj", "o_proj", "post_attention_layernorm", "mlp", "gate_proj", "up_proj",
                "down_proj", "model.norm", "lm_head"}
    assert expected <= paths
    merged = [r for r in prof.rows("path") if r["type"] != "kernel"]
    assert [r["name"] for r in merged if r["depth"] == 1] == ["model.embed_tokens", "model.layers.*", "model.norm",
                                                              "lm_head"]
    assert [r["calls"] for r in merged if r["name"] == "model.layers.*"] == [2]  # two blocks per step
    kernels = {r["name"] for r in prof.rows("kernel")}
    for prefix in ("matmul._linear_forward", "matmul._linear_backward", "attention.attention_forward",
                   "attention.attention_backward", "norm._rmsnorm_forward", "norm._rmsnorm_backward",
                   "activations._swiglu_forward", "activations._swiglu_backward", "rope.rope_forward",
                   "embedding._embedding_forward", "embedding._embedding_backward", "loss.", "optim."):
        assert any(k.startswith(prefix) for k in kernels), prefix
    callers = {r["caller"] for r in prof.rows("kernel")}
    assert {"Linear", "MultiHeadAttention", "RMSNorm", "FeedForward", "Embedding", "loss", "optimizer.step"} <= callers
    steps = [r["name"] for r in prof.rows("step")]
    assert steps[:3] == ["forward", "backward", "loss"] and "optimizer.step" in steps and steps[-1] == "step"
    types = {r["name"]: r for r in prof.rows("type")}
    assert types["Linear"]["calls"] == 2 * 7 + 1 and types["TransformerBlock"]["calls"] == 2
    text = prof.table(("step", "path", "type", "kernel"))
    assert "model.layers.*" in text and "attention.attention_forward" in text and "optimizer.step" in text
    assert len(prof.rows()) == sum(len(prof.rows(b)) for b in ("step", "path", "type", "kernel"))


def test_times_add_up():
    model, opt, loss_fn = _llama_setup()
    batches = _batches(2)
    _train(model, opt, loss_fn, batches[:1])
    with profile(model, optimizer=opt, loss=loss_fn) as prof:
        _train(model, opt, loss_fn, batches)
    step = prof.step_ms
    assert step > 0
    # the step: parts add up to the whole, kernels never exceed the part they ran in
    parts = prof.rows("step")
    whole = parts[-1]
    assert whole["ms"] == pytest.approx(step) and whole["share"] == 1.0
    assert sum(r["ms"] for r in parts[:-1]) == pytest.approx(step, rel=1e-6)
    assert sum(r["kernel_ms"] for r in parts[:-1]) == pytest.approx(whole["kernel_ms"], rel=1e-6, abs=EPS)
    assert sum(r["share"] for r in parts[:-1]) == pytest.approx(1.0, rel=1e-6)
    for r in parts:
        assert 0 <= r["kernel_ms"] <= r["ms"] + EPS and r["other_ms"] >= -EPS, r
    # the layer tree: kernel <= layer <= its parent <= the model <= the step
    rows = prof.rows("path", merge=False)
    layers = [r for r in rows if r["type"] != "kernel"]
    assert layers[0]["name"] == "Llama" and layers[0]["ms"] <= step + EPS
    parent_at = {}
    for r in rows:
        if r["type"] == "kernel":
            continue
        assert 0 <= r["kernel_ms"] <= r["ms"] + EPS and r["other_ms"] >= -EPS, r
        assert r["ms"] == pytest.approx(r["forward_ms"] + r["backward_ms"])
        if r["depth"] > 0:
            assert r["ms"] <= parent_at[r["depth"] - 1]["ms"] + EPS, r
        parent_at[r["depth"]] = r
    # kernel rows under a layer add up to at most its kernel time (its own and its children's)
    current = None
    below: dict[int, float] = {}
    for r in rows:
        if r["type"] != "kernel":
            current = r
            below[id(current)] = 0.0
        else:
            below[id(current)] += r["ms"]
            assert r["depth"] == current["depth"] + 1
    for r in layers:
        assert below[id(r)] <= r["kernel_ms"] + EPS
    # every kernel call appears once in the kernel table and once in the tree (tree: model layers only)
    by_kernel = prof.rows("kernel")
    assert sum(r["ms"] for r in by_kernel) == pytest.approx(prof.kernel_ms, rel=1e-6)
    assert sum(below.values()) == pytest.approx(layers[0]["kernel_ms"], rel=1e-6)
    for r in by_kernel:
        assert r["calls"] > 0 and r["ms"] >= 0
    # depth-limited trees fold the hidden layers' kernels into the deepest shown layer
    shallow = prof.rows("path", depth=1)
    assert max(r["depth"] for r in shallow) == 2
    assert sum(r["ms"] for r in shallow if r["type"] == "kernel") == pytest.approx(layers[0]["kernel_ms"],
                                                                                    rel=1e-6)


def test_sections_steps_and_misuse():
    model = MLP([4, 8, 2], rng=0)
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    with profile(model, steps=2) as prof:
        with prof.section("data"):
            xs = [x.copy() for _ in range(2)]
        for xi in xs:
            model.forward(xi)
    assert prof.steps == 2
    names = [r["name"] for r in prof.rows("step")]
    assert names == ["forward", "data", "rest of the loop", "step"]
    with pytest.raises(RuntimeError, match="nest"):
        with profile(model):
            with profile(model):
                pass
    assert model.forward.__func__ is type(model).forward
    with pytest.raises(TypeError, match="section"):
        profile(model, loss=lambda logits, y: (0.0, logits))
    with pytest.raises(ValueError, match="steps"):
        profile(model, steps=0)
    with pytest.raises(TypeError, match="^optimizer: expected an optimizer"):
        profile(model, "sgd")  # its calls would go untimed
    assert profile(model, steps=np.int64(2))._steps == 2
    with pytest.raises(ValueError, match="by"):
        prof.rows("nothing")


def test_breakdown_script_small():
    """qorus_jit.bench.breakdown's loop on a tiny shape (the W-train shape itself is for the benchmark run)."""
    from qorus_jit.bench.breakdown import measure
    from qorus_jit.core.numerics import get_num_threads, set_num_threads

    threads = get_num_threads()
    try:
        prof, plain_s = measure(threads=threads, steps=1, warmup=1, shape=dict(TINY, max_seq_len=8), batch=2, seq=8)
    finally:
        set_num_threads(threads)
    assert plain_s > 0 and prof.steps == 1
    text = prof.table(("step", "path", "kernel"))
    assert "optimizer.step" in text and "model.layers.*" in text and "loss" in text
