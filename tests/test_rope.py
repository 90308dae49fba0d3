import numpy as np
import pytest

from qorus_jit.core.numerics import SERIAL_WORK
from qorus_jit.kernels import rope as K
from tests.helpers import assert_close, fd_grad, rand, torch_or_skip
from tests.naive import rope as naive

THETA = 10000.0
SHAPES = [(1, 1, 1, 2), (2, 5, 3, 8), (1, 7, 1, 18), (2, 3, 4, 64), (3, 1, 2, 6)]
# one decoded token, and sizes on both sides of numerics.SERIAL_WORK (the largest serial, a parallel one)
THRESHOLD_SHAPES = [(1, 1, 6, 48), (1, SERIAL_WORK // 288, 6, 48), (2, 64, 6, 48)]
NAIVE = {False: naive.rope_rotate_half, True: naive.rope_interleaved}


def _fwd(x, cos, sin, pos, interleaved):
    out = np.empty_like(x)
    K.rope_forward(out, x, cos, sin, pos, interleaved)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tables_match_naive(dtype):
    cos, sin = K.rope_cache(37, 10, theta=500.0, dtype=dtype)
    want_cos, want_sin = naive.tables(37, 10, 500.0)
    assert cos.dtype == dtype and cos.shape == (37, 5)
    assert_close(cos, want_cos, rtol=1e-6, atol=1e-7)
    assert_close(sin, want_sin, rtol=1e-6, atol=1e-7)
    c2, s2 = np.empty((37, 5), dtype), np.empty((37, 5), dtype)
    K.rope_tables(c2, s2, 500.0)
    assert_close(c2, cos, rtol=0, atol=0)
    assert_close(s2, sin, rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES + THRESHOLD_SHAPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("pos", [0, 5])
def test_forward_matches_naive(shape, interleaved, pos):
    rng = np.random.default_rng(0)
    x = rand(rng, *shape)
    cos, sin = K.rope_cache(shape[1] + pos + 2, shape[-1], THETA)
    out = _fwd(x, cos, sin, pos, interleaved)
    assert_close(out, NAIVE[interleaved](x, pos, THETA))
    inplace = x.copy()
    K.rope_forward(inplace, inplace, cos, sin, pos, interleaved)
    assert_close(inplace, out, rtol=0, atol=0, what="in place")


@pytest.mark.parametrize("interleaved", [False, True])
def test_backward_matches_finite_differences(interleaved):
    rng = np.random.default_rng(1)
    x, g = rand(rng, 2, 3, 2, 6, dtype=np.float64), rand(rng, 2, 3, 2, 6, dtype=np.float64)
    cos, sin = K.rope_cache(10, 6, THETA, dtype=np.float64)

    def loss():
        return float((_fwd(x, cos, sin, 4, interleaved) * g).sum())

    dx = np.zeros_like(x)
    K.rope_backward(dx, g, cos, sin, 4, interleaved)
    assert_close(dx, fd_grad(loss, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape", [(2, 9, 3, 12)] + THRESHOLD_SHAPES)
@pytest.mark.parametrize("interleaved", [False, True])
def test_backward_inverts_forward_and_accumulates(shape, interleaved):
    rng = np.random.default_rng(2)
    x = rand(rng, *shape)
    cos, sin = K.rope_cache(shape[1] + 7, shape[3], THETA)
    y = _fwd(x, cos, sin, 7, interleaved)
    dx = np.ones_like(x)
    K.rope_backward(dx, y, cos, sin, 7, interleaved)
    assert_close(dx, x + 1)
    same = y.copy()
    K.rope_backward(same, same, cos, sin, 7, interleaved)
    assert_close(same, x + y, what="dx is dout")


def test_conventions_agree_after_permuting_the_head_dimension():
    """Meta/llama2.c q, k weights become Hugging Face ones by permuting each head to (0, 2, .., 1, 3, ..)."""
    rng = np.random.default_rng(3)
    D = 10
    perm = np.concatenate([np.arange(0, D, 2), np.arange(1, D, 2)])
    x_meta = rand(rng, 2, 4, 3, D)
    x_hf = np.ascontiguousarray(x_meta[..., perm])
    cos, sin = K.rope_cache(8, D, THETA)
    y_meta = _fwd(x_meta, cos, sin, 3, True)
    y_hf = _fwd(x_hf, cos, sin, 3, False)
    assert_close(y_hf, y_meta[..., perm], rtol=1e-6, atol=1e-6)
    dx_meta, dx_hf = np.zeros_like(x_meta), np.zeros_like(x_hf)
    K.rope_backward(dx_meta, y_meta, cos, sin, 3, True)
    K.rope_backward(dx_hf, np.ascontiguousarray(y_meta[..., perm]), cos, sin, 3, False)
    assert_close(dx_hf, dx_meta[..., perm], rtol=1e-6, atol=1e-6)


def _torch_rotate_half(torch, x, pos, theta):
    """transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb, on (B, T, H, D) (unsqueeze_dim=2)."""
    D = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    t = torch.arange(pos, pos + x.shape[1]).float()
    emb = torch.cat([torch.outer(t, inv_freq)] * 2, dim=-1)
    cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]

    def rotate_half(v):
        v1, v2 = v[..., : D // 2], v[..., D // 2 :]
        return torch.cat((-v2, v1), dim=-1)

    return x * cos + rotate_half(x) * sin


def _torch_complex(torch, x, pos, theta):
    """Meta llama precompute_freqs_cis + apply_rotary_emb (view_as_complex), on (B, T, H, D)."""
    D = x.shape[-1]
    freqs = 1.0 / (theta ** (torch.arange(0, D, 2)[: D // 2].float() / D))
    t = torch.arange(pos + x.shape[1]).float()
    freqs_cis = torch.polar(torch.ones(len(t), D // 2), torch.outer(t, freqs))[pos:]
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 3, 16), (1, 1, 1, 8), (3, 4, 2, 6)])
def test_matches_torch(interleaved, shape):
    torch = torch_or_skip()
    rng = np.random.default_rng(4)
    x, g = rand(rng, *shape), rand(rng, *shape)
    pos = 11
    ref = _torch_complex if interleaved else _torch_rotate_half
    tx = torch.tensor(x, requires_grad=True)
    ty = ref(torch, tx, pos, THETA)
    ty.backward(torch.tensor(g))
    cos, sin = K.rope_cache(pos + shape[1], shape[-1], THETA)
    out = _fwd(x, cos, sin, pos, interleaved)
    dx = np.zeros_like(x)
    K.rope_backward(dx, g, cos, sin, pos, interleaved)
    assert_close(out, ty.detach().numpy())
    assert_close(dx, tx.grad.numpy())


def test_bad_inputs_raise():
    x = np.zeros((2, 3, 2, 8), np.float32)
    cos, sin = K.rope_cache(6, 8, THETA)
    out = np.empty_like(x)
    with pytest.raises(ValueError, match="x: expected an even head size D"):
        K.rope_forward(np.empty((2, 3, 2, 7), np.float32), np.zeros((2, 3, 2, 7), np.float32), cos, sin)
    with pytest.raises(ValueError, match=r"cos: expected shape \(T_max, 4\)"):
        c, s = K.rope_cache(6, 6, THETA)
        K.rope_forward(out, x, c, s)
    with pytest.raises(ValueError, match="sin: expected shape"):
        K.rope_forward(out, x, cos, sin[:5].copy())
    with pytest.raises(ValueError, match=r"pos: expected pos \+ T <= T_max = 6"):
        K.rope_forward(out, x, cos, sin, 4)
    K.rope_forward(out, x, cos, sin, 3)
    for pos in (-1, 1.5, None, True):
        with pytest.raises(ValueError, match="pos: expected a non-negative int"):
            K.rope_forward(out, x, cos, sin, pos)
    with pytest.raises(TypeError, match="interleaved: expected a bool"):
        K.rope_forward(out, x, cos, sin, 0, 1)
    with pytest.raises(ValueError, match="x: expected 4-D array"):
        K.rope_forward(out[0], x[0], cos, sin)
    with pytest.raises(ValueError, match="out: expected shape"):
        K.rope_forward(np.empty((2, 3, 1, 8), np.float32), x, cos, sin)
    with pytest.raises(TypeError, match="cos: expected the dtype of x"):
        K.rope_forward(out, x, cos.astype(np.float64), sin.astype(np.float64))
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        K.rope_forward(out, np.zeros((2, 3, 2, 16), np.float32)[..., ::2], cos, sin)
    with pytest.raises(ValueError, match="out: expected either x itself"):
        big = np.zeros((2 * 3 * 2 * 8 + 8,), np.float32)
        K.rope_forward(big[8:].reshape(x.shape), big[:-8].reshape(x.shape), cos, sin)
    with pytest.raises(ValueError, match="dx: expected shape"):
        K.rope_backward(np.zeros((2, 3, 2, 6), np.float32), x, cos, sin)
    with pytest.raises(ValueError, match=r"pos: expected pos \+ T <= T_max"):
        K.rope_backward(np.zeros_like(x), x, cos, sin, 5, True)
    with pytest.raises(ValueError, match="head_dim: expected an even int"):
        K.rope_cache(8, 7)
    with pytest.raises(ValueError, match="max_seq_len: expected a positive int"):
        K.rope_cache(0, 8)
    with pytest.raises(ValueError, match="theta: expected a finite real number > 0"):
        K.rope_cache(8, 8, theta=0.0)


# ------------------------------------------------------------------ the tables of the attention layers


def test_tables_grow_lazily_and_repeat_their_rows_exactly():
    from qorus_jit.layers.attention import RopeTables

    t = RopeTables(10, 500.0)
    assert t.length == 0
    seen = []
    for n, limit, length in [(1, 1000, 64), (3, 1000, 64), (65, 1000, 128), (129, 200, 200), (200, 200, 200),
                             (201, 300, 300), (5, None, 300), (301, None, 600)]:
        cos, sin, neg_sin = t.get(n, limit)
        assert t.length == cos.shape[0] == length, (n, limit)
        want_cos, want_sin = K.rope_cache(length, 10, 500.0)  # the one table builder, at the final length
        np.testing.assert_array_equal(cos, want_cos)
        np.testing.assert_array_equal(sin, want_sin)
        np.testing.assert_array_equal(neg_sin, -want_sin)
        seen.append(cos)
    assert seen[0] is seen[1] and seen[3] is seen[4] is not seen[2]  # rebuilt only to grow
    naive_cos, naive_sin = naive.tables(600, 10, 500.0)
    assert_close(t.get(600)[0], naive_cos, rtol=1e-6, atol=1e-7)
    assert_close(t.get(600)[1], naive_sin, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="head_dim: expected an even int"):
        RopeTables(7)
    with pytest.raises(ValueError, match="theta: expected a finite real number > 0"):
        RopeTables(8, theta=-1.0)


def _attention(model):
    from qorus_jit.layers.attention import MultiHeadAttention

    def walk(layer):
        if isinstance(layer, MultiHeadAttention):
            yield layer
        for child in layer.children().values():
            yield from walk(child)

    return list(walk(model))


def test_one_table_per_model_sized_to_the_positions_used():
    """The issue's shape: 16 layers, head size 64, 131,072 positions. Eager tables per layer would hold
    16 x 3 x 131072 x 32 float32 = 768 MiB; the shared lazy ones hold nothing until used, then the rows used."""
    from qorus_jit.models import Llama, LlamaConfig

    config = LlamaConfig(dim=128, n_layers=16, n_heads=2, hidden_dim=32, vocab_size=16, max_seq_len=131_072,
                         rope_theta=123_457.0)  # a theta of its own: no other test's layer shares the tables
    model = Llama(config, rng=0)
    attn = _attention(model)
    assert len(attn) == 16 and all(a.rope_tables is attn[0].rope_tables for a in attn)
    assert attn[0].rope_tables.length == 0
    ids = np.arange(10).reshape(1, 10) % 16
    first = model.forward(ids).copy()
    assert attn[0].rope_tables.length == 64
    assert sum(x.nbytes for x in attn[0].rope_tables.get(1)) == 3 * 64 * 32 * 4  # 24 KiB for the whole model
    model.forward(np.arange(300).reshape(1, 300) % 16)  # grows the tables ...
    assert attn[0].rope_tables.length == 300
    np.testing.assert_array_equal(model.forward(ids), first)  # ... and changes no number
    other = Llama(LlamaConfig(dim=128, n_layers=1, n_heads=4, hidden_dim=32, vocab_size=16,
                              rope_theta=123_457.0), rng=0)
    assert _attention(other)[0].rope_tables is not attn[0].rope_tables  # another head size: other tables


@pytest.mark.parametrize("max_seq_len, head_dim, name", [(2**62, 8, "max_seq_len"), (2**64, 8, "max_seq_len"),
                                                          (4, 2**62, "head_dim"), (4, 2**64, "head_dim")])
def test_cache_too_big_names_its_size_argument(max_seq_len, head_dim, name):
    with pytest.raises(ValueError, match=f"{name}="):
        K.rope_cache(max_seq_len, head_dim)
