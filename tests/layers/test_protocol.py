"""The layer protocol's declarations hold for every layer: the backward variants it declares give the plain
backward's numbers (written, added, plus a residual), the others are refused naming the argument; ``rowwise``
and ``incremental`` layers behave as declared; weight-decay marks; the one activation map."""

import numpy as np
import pytest

from qorus_jit.layers import (
    GELU,
    Activation,
    Add,
    DecodeState,
    Embedding,
    FeedForward,
    Graph,
    Layer,
    LayerNorm,
    Linear,
    LoRALinear,
    MultiHeadAttention,
    ReLU,
    RMSNorm,
    Sequential,
    SiLU,
    Softmax,
    Swish,
    TransformerBlock,
)
from qorus_jit.layers.activations import ACTIVATIONS
from qorus_jit.layers.base import BACKWARD_VARIANTS
from qorus_jit.layers.embedding import PositionEmbedding
from qorus_jit.layers.feedforward import KINDS
from qorus_jit.layers.head import TiedLMHead
from tests.helpers import assert_close, rand

B, T, C = 2, 6, 8


def _ids(rng):
    return rng.integers(0, 11, (B, T))


def _x(rng):
    return rand(rng, B, T, C)


def _graph():
    g = Graph(inputs=["x"], output="y")
    g.add("fc", Linear(C, C, rng=0), "x", "h")
    g.add("act", GELU(), "h", "a")
    g.add("res", Add(), ["x", "a"], "y")
    return g


# name -> (a layer, its inputs from a Generator)
LAYERS = {
    "linear": (lambda: Linear(C, 5, rng=0), lambda r: [_x(r)]),
    "lora": (lambda: LoRALinear(Linear(C, 5, rng=0), rank=2, alpha=4, rng=0), lambda r: [_x(r)]),
    "rmsnorm": (lambda: RMSNorm(C), lambda r: [_x(r)]),
    "layernorm": (lambda: LayerNorm(C), lambda r: [_x(r)]),
    "relu": (ReLU, lambda r: [_x(r)]),
    "gelu": (GELU, lambda r: [_x(r)]),
    "silu": (SiLU, lambda r: [_x(r)]),
    "activation": (lambda: Activation("gelu_tanh"), lambda r: [_x(r)]),
    "swish": (lambda: Swish(1.5), lambda r: [_x(r)]),
    "softmax": (Softmax, lambda r: [_x(r)]),
    "embedding": (lambda: Embedding(11, C, rng=0), lambda r: [_ids(r)]),
    "positions": (lambda: PositionEmbedding(16, C, rng=0), lambda r: [_x(r)]),
    "tied_head": (lambda: TiedLMHead(Embedding(11, C, rng=0)), lambda r: [_x(r)]),
    "attention": (lambda: MultiHeadAttention(C, 2, rope="rotate_half", max_seq_len=16, rng=0), lambda r: [_x(r)]),
    "bidirectional_attention": (lambda: MultiHeadAttention(C, 2, causal=False, max_seq_len=16, rng=0),
                                lambda r: [_x(r)]),
    "feedforward": (lambda: FeedForward(C, 12, "swiglu", rng=0), lambda r: [_x(r)]),
    "block": (lambda: TransformerBlock(C, 2, 12, max_seq_len=16, rng=0), lambda r: [_x(r)]),
    "post_norm_block": (lambda: TransformerBlock(C, 2, 12, norm="layer", prenorm=False, mlp="gelu", causal=False,
                                                 rope=None, max_seq_len=16, rng=0), lambda r: [_x(r)]),
    "add": (Add, lambda r: [_x(r), _x(r)]),
    "graph": (_graph, lambda r: [_x(r)]),
    "sequential": (lambda: Sequential(Linear(C, 12, rng=0), ReLU(), Linear(12, C, rng=1)), lambda r: [_x(r)]),
}


def _run(name, seed=0):
    make, inputs = LAYERS[name]
    rng = np.random.default_rng(seed)
    layer = make()
    xs = inputs(rng)
    y = layer.forward(*xs)
    return layer, xs, rand(rng, *y.shape), rng


def _grads(layer):
    return {k: g.copy() for k, g in layer.gradients().items()}


def test_every_built_in_layer_is_covered():
    """A new layer class in the package appears in LAYERS (so its declarations are checked here)."""
    import qorus_jit.layers as L

    def classes(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from classes(sub)

    built = {type(LAYERS[n][0]()) for n in LAYERS}
    built |= {L.QuantizedLinear, L.QuantizedEmbedding}  # inference only (no backward): test_quantized.py's
    mine = {c for c in classes(Layer) if c.__module__.startswith(L.__name__) and not c.__name__.startswith("_")}
    assert mine <= built, sorted(c.__name__ for c in mine - built)


def test_declared_variants_are_known():
    for name, (make, _) in LAYERS.items():
        assert make().backward_variants <= set(BACKWARD_VARIANTS), name


@pytest.mark.parametrize("name", LAYERS)
def test_declared_backward_variants_match_the_plain_backward(name):
    """out= is the plain dx written into out; accumulate=True adds it to what out held; residual=r is dx + r;
    every variant accumulates the same parameter gradients as the plain call."""
    layer, xs, dy, rng = _run(name)
    layer.zero_grad()
    dx = layer.backward(dy)
    if "out" not in layer.backward_variants:
        return
    dx = dx.copy()
    want_grads = _grads(layer)
    out = rand(rng, *xs[0].shape)

    layer.zero_grad()
    assert layer.backward(dy, out=out) is out
    assert_close(out, dx, 1e-6, 1e-7, "out")
    for k, g in _grads(layer).items():
        assert_close(g, want_grads[k], 1e-6, 1e-7, k)

    if "accumulate" in layer.backward_variants:
        before = rand(rng, *xs[0].shape)
        out[...] = before
        layer.backward(dy, out=out, accumulate=True)
        assert_close(out, before + dx, 1e-5, 1e-6, "accumulate")

    if "residual" in layer.backward_variants:
        r = rand(rng, *xs[0].shape)
        layer.zero_grad()
        assert_close(layer.backward(dy, residual=r), dx + r, 1e-5, 1e-6, "residual")
        for k, g in _grads(layer).items():
            assert_close(g, want_grads[k], 1e-6, 1e-7, k)
        assert layer.backward(dy, out=out, residual=r) is out
        assert_close(out, dx + r, 1e-5, 1e-6, "residual into out")


@pytest.mark.parametrize("name", LAYERS)
def test_undeclared_backward_variants_are_refused_naming_the_argument(name):
    layer, xs, dy, _ = _run(name)
    given = {"out": np.zeros_like(dy), "accumulate": True, "residual": np.zeros_like(dy)}
    for variant in BACKWARD_VARIANTS:
        if variant in layer.backward_variants:
            continue
        kwargs = {variant: given[variant]}
        if variant == "accumulate" and "out" in layer.backward_variants:
            kwargs["out"] = np.zeros(xs[0].shape, np.float32)
        with pytest.raises(TypeError, match=f"^{variant}: {type(layer).__name__}.backward does not take {variant}="):
            layer.backward(dy, **kwargs)


def test_accumulate_needs_out():
    layer, _, dy, _ = _run("linear")
    with pytest.raises(ValueError, match="accumulate: needs out"):
        layer.backward(dy, accumulate=True)


@pytest.mark.parametrize("name", [n for n in LAYERS if LAYERS[n][0]().rowwise])
def test_rowwise_layers_map_each_position_on_its_own(name):
    """What a row-wise layer gives for the last position, it gives from that position alone."""
    layer, xs, _, _ = _run(name)
    assert len(xs) == 1
    full = layer.forward(xs[0]).copy()
    last = layer.forward(np.ascontiguousarray(xs[0][:, -1:]))
    assert_close(last[:, 0], full[:, -1], 1e-5, 1e-6)


def _decode_in_chunks(layer, x):
    state = DecodeState(B, 16)
    parts = []
    for a, b in ((0, 3), (3, 4), (4, T)):
        parts.append(layer.forward_decode(np.ascontiguousarray(x[:, a:b]), state=state).copy())
        state.advance(b - a)
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("name", [n for n in LAYERS if len(LAYERS[n][1](np.random.default_rng(0))) == 1])
def test_incremental_matches_decoding_in_chunks(name):
    """An incremental layer decodes consecutive chunks to what forward gives for the whole sequence; the
    layers that declare otherwise (bidirectional attention) do not."""
    layer, xs, _, _ = _run(name)
    full = layer.forward(xs[0]).copy()
    chunks = _decode_in_chunks(layer, xs[0])
    if layer.incremental:
        assert_close(chunks, full, 1e-4, 1e-5)
    else:
        assert not np.allclose(chunks, full, rtol=1e-3, atol=1e-4)


def test_incremental_of_graphs_and_models():
    from qorus_jit.models import GPT2, MLP, Bert, BertConfig, GPT2Config, Llama, LlamaConfig

    small = dict(dim=16, n_layers=1, n_heads=2, vocab_size=20, max_seq_len=8)
    assert Llama(LlamaConfig(**small, hidden_dim=24), rng=0).incremental
    assert GPT2(GPT2Config(**small), rng=0).incremental
    assert not Bert(BertConfig(**small, hidden_dim=24), rng=0).incremental
    assert MLP([4, 8, 2], rng=0).incremental
    g = _graph()
    assert g.incremental
    g.add("attn", MultiHeadAttention(C, 2, causal=False, max_seq_len=16, rng=0), "y", "z")
    assert not g.incremental


def test_forward_decode_of_a_layer_without_decode_state_is_its_forward():
    layer, xs, _, _ = _run("linear")
    state = DecodeState(B, 16)
    full = layer.forward(xs[0]).copy()
    assert_close(layer.forward_decode(xs[0], state=state), full, 0, 0)
    assert state.pos == 0 and not state.caches


# -- weight-decay marks ---------------------------------------------------------------------------------------


def test_layers_mark_biases_norms_and_embeddings_as_not_decayed():
    assert Linear(3, 4).no_decay() == ["bias"]
    assert Linear(3, 4, bias=False).no_decay() == []
    assert LayerNorm(4).no_decay() == ["weight", "bias"]
    assert RMSNorm(4).no_decay() == ["weight"]
    assert Embedding(5, 3).no_decay() == ["weight"]
    assert PositionEmbedding(5, 3).no_decay() == ["weight"]
    assert TiedLMHead(Embedding(5, 3)).no_decay() == []  # owns no parameter
    seq = Sequential(("emb", Embedding(5, 4)), ("norm", LayerNorm(4)), ("fc", Linear(4, 2)))
    assert seq.no_decay() == ["emb.weight", "norm.weight", "norm.bias", "fc.bias"]
    assert seq.no_decay("m.") == ["m." + n for n in seq.no_decay()]


def test_add_parameter_decay_mark():
    class Custom(Layer):
        def __init__(self):
            super().__init__()
            self.add_parameter("matrix", np.ones((2, 3)))              # unmarked: a matrix decays
            self.add_parameter("vector", np.ones(3))                   # unmarked: a vector does not
            self.add_parameter("tokens", np.ones((1, 2, 3)), decay=False)
            self.add_parameter("scale", np.ones(1), decay=True)

    assert Custom().no_decay() == ["vector", "tokens"]
    with pytest.raises(TypeError, match="decay: expected True, False or None"):
        Layer().add_parameter("w", np.ones(2), decay=0)


# -- the activation map -----------------------------------------------------------------------------------------


def test_one_activation_map_for_feedforward_and_mlp():
    from qorus_jit.models import MLP

    assert KINDS == ("swiglu", *ACTIVATIONS)
    from qorus_jit.kernels import trusted as K

    for name, kernels in ACTIVATIONS.items():
        assert all(k in K.__all__ for k in kernels)
        ff = FeedForward(4, 6, name, rng=0)
        assert type(ff.act) is Activation and ff.act.name == name
        mlp = MLP([4, 6, 2], activation=name, rng=0)
        assert type(mlp.nodes[1][1]) is Activation and mlp.nodes[1][1].name == name
    # the named classes are the same activations
    assert (ReLU().name, SiLU().name, GELU().name, GELU("tanh").name) == ("relu", "silu", "gelu", "gelu_tanh")
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    for named, name in ((ReLU(), "relu"), (SiLU(), "silu"), (GELU("tanh"), "gelu_tanh")):
        np.testing.assert_array_equal(named.forward(x), Activation(name).forward(x))
    with pytest.raises(ValueError, match="name: expected one of"):
        Activation("tanh")
    with pytest.raises(ValueError, match="kind: expected one of"):
        FeedForward(4, 6, "tanh")
