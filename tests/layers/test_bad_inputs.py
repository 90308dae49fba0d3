"""Layers and losses against malformed inputs: ids changed by the caller between forward and backward, NumPy
scalars and bools as constructor arguments, empty batches, masked and big-endian arrays, a mismatched ``dy``."""

import numpy as np
import pytest

from qorus_jit.layers import (
    Embedding,
    FeedForward,
    LayerNorm,
    Linear,
    MultiHeadAttention,
    RMSNorm,
    Swish,
    TransformerBlock,
)
from qorus_jit.layers.attention import KVCache
from qorus_jit.layers.embedding import PositionEmbedding
from qorus_jit.layers.head import TiedLMHead
from qorus_jit.train.losses import CrossEntropyLoss, MSELoss
from tests.helpers import rand
from tests.layers.test_protocol import LAYERS

# -- what backward needs is the layer's own -------------------------------------------------------------


def _embedding_grad(ids, dy, V):
    """NumPy reference: the weight gradient of ``weight[ids]`` contracted with ``dy``, in float64."""
    g = np.zeros((V, dy.shape[-1]))
    np.add.at(g, ids.reshape(-1), dy.reshape(-1, dy.shape[-1]).astype(np.float64))
    return g


def test_attention_backward_uses_the_key_mask_of_its_forward():
    """A caller changing its padding mask after forward changes nothing in backward (compared with a layer that
    kept its own copy from the start)."""
    rng = np.random.default_rng(1)
    x, dy = rand(rng, 2, 5, 8), rand(rng, 2, 5, 8)
    mask = np.ones((2, 5), bool)
    mask[0, 3:] = False
    grads = []
    for mutate in (False, True):
        layer = MultiHeadAttention(8, 2, causal=False, rng=0)
        m = mask.copy()
        layer.forward(x, m)
        if mutate:
            m[:] = ~m
        grads.append((layer.backward(dy).copy(), layer.gradients()["q_proj.weight"].copy()))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_embedding_backward_uses_the_ids_of_its_forward(dtype):
    rng = np.random.default_rng(0)
    V, C = 7, 5
    layer = Embedding(V, C, rng=0)
    ids = rng.integers(0, V, (3, 4)).astype(dtype)
    kept = ids.copy()
    y = layer.forward(ids)
    np.testing.assert_array_equal(y, layer.weight[kept])
    ids[0, 0], ids[1, 2], ids[2, 3] = V, -3, np.iinfo(dtype).max  # out of range: a crash if backward read them
    ids.shape = (12,)  # and the array's shape
    dy = rand(rng, 3, 4, C)
    assert layer.backward(dy) is None
    np.testing.assert_allclose(layer.grad("weight"), _embedding_grad(kept, dy, V), rtol=1e-6, atol=1e-6)


def test_embedding_of_a_slice_of_the_callers_ids():
    rng = np.random.default_rng(1)
    layer = Embedding(7, 3, rng=0)
    big = rng.integers(0, 7, (4, 5))
    for view in (big[:, ::2], big[1:]):  # a copy for the kernel, and a C-contiguous view (kept as is before)
        layer.zero_grad()
        kept = view.copy()
        layer.forward(view)
        big[:] = 7
        dy = rand(rng, *kept.shape, 3)
        layer.backward(dy)
        np.testing.assert_allclose(layer.grad("weight"), _embedding_grad(kept, dy, 7), rtol=1e-6, atol=1e-6)
        big[:] = rng.integers(0, 7, big.shape)


def test_models_keep_their_own_token_ids():
    """BERT's token ids and token type ids reach Embedding layers: changing them after the forward changes
    nothing in the gradients."""
    from qorus_jit.models.bert import Bert, BertConfig

    cfg = BertConfig(vocab_size=13, dim=8, n_layers=1, n_heads=2, hidden_dim=16, max_seq_len=8, type_vocab_size=2)
    model = Bert(cfg, rng=0)
    rng = np.random.default_rng(1)
    ids, types = rng.integers(0, 13, (2, 5)), rng.integers(0, 2, (2, 5))
    grads = []
    for mutate in (False, True):
        model.zero_grad()
        a, b = ids.copy(), types.copy()
        h = model.forward(a, None, b)
        if mutate:
            a[:] = 10**6
            b[:] = -(10**6)
        model.backward(np.ones_like(h))
        grads.append({k: g.copy() for k, g in model.gradients().items()})
    for k in grads[0]:
        np.testing.assert_array_equal(grads[1][k], grads[0][k], err_msg=k)
    assert grads[0]["embeddings.token_type_embeddings.weight"].any()


@pytest.mark.parametrize("name", ["linear", "rmsnorm", "layernorm", "gelu", "swish", "tied_head", "feedforward"])
def test_reshaping_the_input_in_place_after_forward_changes_nothing(name):
    """``x.shape = ...`` on the caller's array after forward: the layer's backward (which views x as rows of the
    width it was given) reads its own view, so it gives the gradients of the forward's input."""
    make, inputs = LAYERS[name]
    grads = []
    for reshape in (False, True):
        layer = make()
        x = inputs(np.random.default_rng(0))[0]
        y = layer.forward(x)
        if reshape:
            x.shape = (x.shape[0], -1)  # the same memory, another width
        dx = layer.backward(rand(np.random.default_rng(1), *y.shape))
        grads.append({"dx": dx.copy(), **{k: g.copy() for k, g in layer.gradients().items()}})
    for k in grads[0]:
        np.testing.assert_array_equal(grads[1][k], grads[0][k], err_msg=k)


def test_tied_head_checks_dy_against_its_input():
    head = TiedLMHead(Embedding(11, 4, rng=0))
    head.forward(np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3, 11\), got \(2, 2, 11\)"):
        head.backward(np.ones((2, 2, 11), np.float32))  # fewer rows than x: the kernel would read past dy


# -- scalars -----------------------------------------------------------------------------------------------

# (class, keyword arguments with Python scalars, the arguments that must be bools)
CONSTRUCTORS = [
    (Linear, dict(in_features=8, out_features=5, bias=True, rng=0), ("bias",)),
    (Embedding, dict(num_embeddings=11, dim=8, rng=0), ()),
    (PositionEmbedding, dict(max_positions=16, dim=8, rng=0), ()),
    (LayerNorm, dict(dim=8, eps=1e-3, bias=True), ("bias",)),
    (RMSNorm, dict(dim=8, eps=1e-3), ()),
    (Swish, dict(beta=1.5), ()),
    (FeedForward, dict(dim=8, hidden_dim=12, kind="gelu", bias=True, rng=0), ("bias",)),
    (TransformerBlock, dict(dim=8, n_heads=2, hidden_dim=12, n_kv_heads=1, norm_eps=1e-3, prenorm=True,
                            mlp_bias=False, causal=True, rope_theta=500.0, max_seq_len=16, attn_bias=True,
                            out_bias=False, fused_qkv=False, rng=0),
     ("prenorm", "mlp_bias", "causal", "attn_bias", "out_bias", "fused_qkv")),
    (MultiHeadAttention, dict(dim=8, n_heads=2, n_kv_heads=1, causal=True, rope="rotate_half", rope_theta=500.0,
                              max_seq_len=16, bias=True, out_bias=False, fused_qkv=False, rng=0),
     ("causal", "bias", "out_bias", "fused_qkv")),
]
SAID = {}  # the name an error gives, where it is not the argument's


def _input(layer):
    x = np.random.default_rng(3).standard_normal((2, 4, 8)).astype(np.float32)
    return np.arange(8).reshape(2, 4) if isinstance(layer, Embedding) else x


def _outputs(cls, kwargs):
    layer = cls(**kwargs)
    y = layer.forward(_input(layer))
    return {"y": y.copy(), **{k: v.copy() for k, v in layer.parameters().items()}}


@pytest.mark.parametrize("cls,kwargs,flags", CONSTRUCTORS, ids=[c[0].__name__ for c in CONSTRUCTORS])
def test_constructors_take_numpy_scalars_and_refuse_bools_for_numbers(cls, kwargs, flags):
    want = _outputs(cls, kwargs)
    for k, v in kwargs.items():
        if k == "rng" or isinstance(v, str):
            continue
        if isinstance(v, bool):
            got = _outputs(cls, {**kwargs, k: np.bool_(v)})
            for bad in (int(v), "yes"):
                with pytest.raises(TypeError, match=f"^{k}: expected a bool"):
                    cls(**{**kwargs, k: bad})
        else:
            t = np.int64 if isinstance(v, int) else np.float64
            got = _outputs(cls, {**kwargs, k: t(v)})
            for bad in (True, np.bool_(False)):
                with pytest.raises((TypeError, ValueError), match=f"^{SAID.get((cls, k), k)}: expected"):
                    cls(**{**kwargs, k: bad})
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{cls.__name__}({k}={v}): {name}")
    assert not flags or all(isinstance(kwargs[f], bool) for f in flags)


def test_position_embedding_pos_and_losses_take_numpy_scalars():
    layer = PositionEmbedding(16, 4, rng=0)
    x = np.zeros((1, 3, 4), np.float32)
    np.testing.assert_array_equal(layer.forward(x, np.int64(2)), layer.weight[2:5][None])
    for bad in (True, 1.0, -1):
        with pytest.raises(ValueError, match="^pos: expected a non-negative int"):
            layer.forward(x, bad)
    logits = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    targets = np.array([1, 4, 0])
    loss, grad = CrossEntropyLoss(ignore_index=np.int64(4))(logits, targets, np.float32(2.0))
    want_loss, want_grad = CrossEntropyLoss(ignore_index=4)(logits, targets, 2.0)
    assert loss == want_loss
    np.testing.assert_array_equal(grad, want_grad)
    for bad in (True, 1.5):
        with pytest.raises(TypeError, match="^ignore_index: expected an int"):
            CrossEntropyLoss(ignore_index=bad)
    with pytest.raises(ValueError, match="^scale: expected a finite real number"):
        CrossEntropyLoss()(logits, targets, True)
    with pytest.raises(ValueError, match="^scale: expected a finite real number"):
        MSELoss()(logits, logits.copy(), np.bool_(True))


# -- empty batches ------------------------------------------------------------------------------------------



@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("shape", [(0, 6), (2, 0)], ids=["B=0", "T=0"])
def test_an_empty_batch_gives_empty_results_and_no_gradient(name, shape):
    make, inputs = LAYERS[name]
    layer = make()
    full = inputs(np.random.default_rng(0))
    xs = [np.zeros(shape + x.shape[2:], x.dtype) for x in full]
    want = layer.forward(*full).shape
    layer.zero_grad()
    y = layer.forward(*xs)
    assert y.shape == shape + want[2:]
    grads = layer.backward(np.zeros(y.shape, np.float32))
    for g, x in zip(grads if isinstance(grads, tuple) else (grads,), xs, strict=False):
        assert g is None or g.shape == x.shape
    for k, g in layer.gradients().items():
        assert not g.any(), k


def test_losses_of_no_element():
    with pytest.raises(ValueError, match="^pred: expected at least one element"):
        MSELoss()(np.zeros((0, 3), np.float32), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="^pred: expected at least one element"):
        MSELoss().evaluate(np.zeros((0, 3), np.float32), np.zeros((0, 3)))
    loss, grad = CrossEntropyLoss()(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert loss == 0.0 and grad.shape == (0, 4)
    loss, grad = CrossEntropyLoss()(np.zeros((2, 0), np.float32), np.array([-100, -100]))  # all ignored
    assert loss == 0.0 and grad.shape == (2, 0)
    assert CrossEntropyLoss().evaluate(np.zeros((0, 4), np.float32), np.zeros(0, np.int64)) == (0.0, 0, 0)


# -- arrays the kernels cannot take --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_masked_and_big_endian_inputs_are_refused(name):
    make, inputs = LAYERS[name]
    full = inputs(np.random.default_rng(0))
    for bad in (np.ma.array(full[0]), full[0].astype(full[0].dtype.newbyteorder(">"))):
        with pytest.raises(TypeError, match="^(x|ids|a): expected"):
            make().forward(bad, *full[1:])
    for loss, good in ((CrossEntropyLoss(), np.array([1, 0])), (MSELoss(), np.zeros((2, 3)))):
        with pytest.raises(ValueError, match="^(logits|pred): expected a float32 array"):
            loss(np.ma.array(np.zeros((2, 3), np.float32)), good)
        with pytest.raises(ValueError, match="^(targets|target): expected"):
            loss(np.zeros((2, 3), np.float32), np.ma.array(good))


# -- rng, sizes beyond memory, non-array inputs, flags --------------------------------------------------------

SEEDED = [c for c in CONSTRUCTORS if "rng" in c[1]] + [(PositionEmbedding, dict(max_positions=8, dim=4, rng=0), ())]


@pytest.mark.parametrize("cls,kwargs", [c[:2] for c in SEEDED], ids=[c[0].__name__ for c in SEEDED])
def test_rng_takes_seeds_and_generators_and_refuses_the_rest(cls, kwargs):
    def params(rng):
        return {k: v.copy() for k, v in cls(**{**kwargs, "rng": rng}).parameters().items()}
    want = params(5)
    for same in (np.int64(5), np.uint8(5), np.random.default_rng(5)):
        got = params(same)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{cls.__name__}(rng={same!r}): {k}")
    for bad, err in (("abc", TypeError), (0.5, TypeError), ({}, TypeError), (True, TypeError), (-1, ValueError)):
        with pytest.raises(err, match="^rng: expected"):
            cls(**{**kwargs, "rng": bad})


@pytest.mark.parametrize("cls,kwargs,sizes", [
    (Linear, dict(in_features=4, out_features=3), ("in_features", "out_features")),
    (Embedding, dict(num_embeddings=5, dim=4), ("num_embeddings", "dim")),
    (PositionEmbedding, dict(max_positions=8, dim=4), ("max_positions", "dim")),
    (LayerNorm, dict(dim=4), ("dim",)),
    (RMSNorm, dict(dim=4), ("dim",)),
    (FeedForward, dict(dim=4, hidden_dim=8), ("dim", "hidden_dim")),
    (MultiHeadAttention, dict(dim=4, n_heads=2), ("dim",)),
    (TransformerBlock, dict(dim=4, n_heads=2, hidden_dim=8), ("dim", "hidden_dim")),
    (KVCache, dict(batch=1, max_seq_len=8, n_kv_heads=1, head_dim=4), ("batch", "max_seq_len", "n_kv_heads",
                                                                       "head_dim")),
])
def test_sizes_beyond_memory_are_refused_naming_the_size(cls, kwargs, sizes):
    for name in sizes:
        for huge in (2**62, 2**64):
            with pytest.raises(ValueError, match=rf"(^|, ){name}={huge}[,:].* do not fit in memory"):
                cls(**{**kwargs, name: huge})


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_non_array_inputs_and_gradients_are_refused_by_name(name):
    make, inputs = LAYERS[name]
    full = inputs(np.random.default_rng(0))
    arg = "ids" if name == "embedding" else "a" if name == "add" else "x"
    for bad in (None, "abc", [1.0, 2.0], {}, True):
        with pytest.raises(TypeError, match=f"^{arg}: expected"):
            make().forward(bad, *full[1:])
        layer = make()
        layer.forward(*full)
        with pytest.raises(TypeError, match="^dy: expected"):
            layer.backward(bad)
    layer = make()
    y = layer.forward(*full)
    with pytest.raises((TypeError, ValueError), match="^dy: expected"):
        layer.backward(y.astype(object))
    if layer.backward_variants:
        with pytest.raises(TypeError, match="^accumulate: expected a bool"):
            layer.backward(np.zeros_like(y), accumulate="no")


def test_decode_state_checks():
    from qorus_jit.layers.attention import DecodeState

    state = DecodeState(np.int64(1), 8)
    state.advance(np.int64(3))
    assert state.pos == 3 and type(state.pos) is int
    for bad, err in (("a", ValueError), (-1, ValueError), (1.0, ValueError), (6, ValueError)):
        with pytest.raises(err, match="^n: "):
            state.advance(bad)
    assert state.pos == 3
    state.advance(5)  # up to max_seq_len exactly
    x = np.zeros((1, 3, 8), np.float32)
    for layer in (MultiHeadAttention(8, 2, max_seq_len=8, rng=0), TransformerBlock(8, 2, 12, max_seq_len=8, rng=0),
                  PositionEmbedding(8, 8, rng=0)):
        for bad in (None, "abc", {}):
            with pytest.raises(TypeError, match="^state: expected a DecodeState"):
                layer.forward_decode(x, state=bad)
    attn = MultiHeadAttention(8, 2, max_seq_len=8, rng=0)
    with pytest.raises(ValueError, match="^state: made for batch = 2"):
        attn.forward_decode(x, state=DecodeState(2, 8))
    with pytest.raises(ValueError, match="^x: 3 new positions .* max_seq_len = 2"):
        attn.forward_decode(x, state=DecodeState(1, 2))


def test_names_renaming_is_a_dict_of_strs():
    for bad in ("abc", ["q_proj"], {"q_proj": 1}, {1: "a"}):
        with pytest.raises(TypeError, match="^names: expected a dict"):
            MultiHeadAttention(8, 2, names=bad)
        with pytest.raises(TypeError, match="^names: expected a dict"):
            FeedForward(8, 12, names=bad)
        with pytest.raises(TypeError, match="^mlp_names: expected a dict"):
            TransformerBlock(8, 2, 12, mlp_names=bad)
    for bad in (None, "bogus", 1, ["swiglu"], "SWIGLU"):
        with pytest.raises(ValueError, match="^mlp: expected one of"):
            TransformerBlock(8, 2, 12, mlp=bad)
    layer = MultiHeadAttention(8, 2, names={"q_proj": "query"}, rng=0)
    assert "query.weight" in layer.parameters()


def test_load_and_add_parameter_checks():
    layer = Linear(4, 3, rng=0)
    good = {"weight": np.ones((3, 4)), "bias": np.zeros(3)}
    layer.load_parameters(good, strict=np.bool_(True))
    assert np.array_equal(layer.weight, np.ones((3, 4)))
    for bad, msg in ((None, "^params: expected a dict"), ([np.ones((3, 4))], "^params: expected a dict"),
                     ({**good, 1: np.ones(2)}, "^params: expected str names"),
                     ({**good, "weight": np.ones((3, 4), complex)}, "^weight: expected an array of real"),
                     ({**good, "weight": "abc"}, "^weight: expected an array of real"),
                     ({**good, "weight": None}, "^weight: expected an array of real")):
        with pytest.raises(TypeError, match=msg):
            layer.load_parameters(bad)
    with pytest.raises(TypeError, match="^strict: expected a bool"):
        layer.load_parameters(good, strict="no")
    assert np.array_equal(layer.weight, np.ones((3, 4)))  # nothing loaded by a refused call
    with pytest.raises(TypeError, match="^value of p: expected an array of real"):
        layer.add_parameter("p", "abc")
    with pytest.raises(TypeError, match="^name: expected a non-empty str"):
        layer.add_parameter(None, np.ones(2))
