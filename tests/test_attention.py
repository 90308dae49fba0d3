import sys

import numpy as np
import pytest

from qorus_jit.core.numerics import SERIAL_WORK
from qorus_jit.kernels import attention as K
from tests.helpers import assert_close, fd_grad, rand, torch_or_skip
from tests.naive import attention as naive

# (B, T, S, H, Hkv, D, causal, masked); B * H * T * S * D is up to numerics.SERIAL_WORK (serial) in most, above it
# (parallel) in (3, 17, ...) and (1, 70, ...)
SHAPES = [
    (1, 1, 1, 1, 1, 1, False, False),
    (1, 1, 1, 1, 1, 4, True, False),
    (2, 7, 7, 4, 2, 5, True, False),
    (2, 13, 13, 4, 1, 12, True, True),
    (1, 33, 33, 1, 1, 16, False, True),
    (2, 9, 20, 4, 2, 8, True, True),
    (3, 17, 17, 6, 3, 7, False, False),
    (1, 70, 70, 2, 2, 12, True, False),
    (2, 5, 11, 4, 4, 3, False, True),
    # D whole tiles (32, 64): the kernels read V and K in place, and with T whole tiles (72) q and dout too
    (2, 9, 20, 4, 2, 32, True, True),
    (2, 72, 72, 4, 2, 64, True, False),
]


def _inputs(rng, B, T, S, H, Hkv, D, masked, dtype=np.float32):
    q = rand(rng, B, T, H, D, dtype=dtype)
    k = rand(rng, B, S, Hkv, D, dtype=dtype)
    v = rand(rng, B, S, Hkv, D, dtype=dtype)
    mask = None
    if masked:
        mask = rng.random((B, S)) > 0.3
        mask[:, 0] = True  # every causal row keeps a key
    return q, k, v, mask


def _forward(q, k, v, causal, mask=None, scale=None):
    B, T, H, _ = q.shape
    out, lse = np.empty_like(q), np.empty((B, H, T), q.dtype)
    K.attention_forward(out, lse, q, k, v, causal, mask, scale)
    return out, lse


def _backward(g, q, k, v, out, lse, causal, mask=None, scale=None):
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    K.attention_backward(dq, dk, dv, g, q, k, v, out, lse, causal, mask, scale)
    return dq, dk, dv


def _assert_lse(lse, want, **tol):
    assert np.array_equal(np.isinf(lse), np.isinf(want))
    fin = np.isfinite(want)
    assert_close(lse[fin], want[fin], **tol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_naive(shape, dtype):
    B, T, S, H, Hkv, D, causal, masked = shape
    rng = np.random.default_rng(sum(shape[:6]))
    q, k, v, mask = _inputs(rng, B, T, S, H, Hkv, D, masked, dtype)
    out, lse = _forward(q, k, v, causal, mask)
    want, want_lse = naive.attention(q, k, v, causal, mask)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert_close(out, want, **tol)
    _assert_lse(lse, want_lse, **tol)


def test_forward_scale_and_mask_dtypes():
    rng = np.random.default_rng(3)
    q, k, v, mask = _inputs(rng, 2, 6, 6, 2, 1, 4, True)
    want, want_lse = naive.attention(q, k, v, True, mask, scale=0.3)
    for m in (mask, mask.astype(np.int64), mask.astype(np.uint8), mask.astype(np.int32) * -7):
        out, lse = _forward(q, k, v, True, m, scale=0.3)
        assert_close(out, want)
        _assert_lse(lse, want_lse)


def test_fully_masked_rows_give_zero_output_and_gradient():
    rng = np.random.default_rng(4)
    # batch 0 masks every key; causal with T > S leaves the first T - S query rows without keys
    q, k, v, _ = _inputs(rng, 2, 6, 4, 2, 2, 3, False, np.float64)
    mask = np.ones((2, 4), bool)
    mask[0] = False
    out, lse = _forward(q, k, v, True, mask)
    want, want_lse = naive.attention(q, k, v, True, mask)
    assert np.all(out[0] == 0) and np.all(np.isneginf(lse[0]))
    assert np.all(out[1, :2] == 0) and np.all(np.isneginf(lse[1, :, :2]))
    assert_close(out, want)
    _assert_lse(lse, want_lse)
    dq, dk, dv = _backward(rand(rng, *q.shape, dtype=np.float64), q, k, v, out, lse, True, mask)
    assert np.all(np.isfinite(dq)) and np.all(np.isfinite(dk)) and np.all(np.isfinite(dv))
    assert np.all(dq[0] == 0) and np.all(dk[0] == 0) and np.all(dv[0] == 0)
    assert np.all(dq[1, :2] == 0)


# (B, T, S, H, Hkv, D, causal, masked, scale)
FD_SHAPES = [
    (1, 3, 3, 2, 1, 3, True, False, None),
    (2, 3, 5, 2, 2, 2, True, True, None),
    (1, 4, 4, 4, 2, 3, False, True, 0.7),
    (1, 2, 3, 1, 1, 5, False, False, None),
]


@pytest.mark.parametrize("shape", FD_SHAPES)
def test_backward_matches_finite_differences(shape):
    B, T, S, H, Hkv, D, causal, masked, scale = shape
    rng = np.random.default_rng(5)
    q, k, v, mask = _inputs(rng, B, T, S, H, Hkv, D, masked, np.float64)
    g = rand(rng, B, T, H, D, dtype=np.float64)
    out, lse = _forward(q, k, v, causal, mask, scale)
    dq, dk, dv = _backward(g, q, k, v, out, lse, causal, mask, scale)

    def loss():
        o, _ = _forward(q, k, v, causal, mask, scale)
        return float((o * g).sum())

    for name, x, grad in [("q", q, dq), ("k", k, dk), ("v", v, dv)]:
        assert_close(grad, fd_grad(loss, x), rtol=1e-6, atol=1e-8, what=name)


def test_backward_accumulates():
    rng = np.random.default_rng(6)
    q, k, v, _ = _inputs(rng, 1, 5, 5, 2, 1, 4, False, np.float64)
    g = rand(rng, *q.shape, dtype=np.float64)
    out, lse = _forward(q, k, v, True)
    dq, dk, dv = _backward(g, q, k, v, out, lse, True)
    acc = [np.full_like(x, 0.5) for x in (q, k, v)]
    K.attention_backward(*acc, g, q, k, v, out, lse, True)
    for a, d in zip(acc, (dq, dk, dv), strict=True):
        assert_close(a, d + 0.5, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("D", [8, 32])  # V and K padded, or read in place (D whole tiles)
@pytest.mark.parametrize("T", [152, 10])  # parallel and serial; q, dout read in place when D and T are whole tiles
def test_backward_writes_and_reuses_scratch(T, D):
    """accumulate=False ignores what dq, dk, dv held; a reused ``work`` array full of NaN changes nothing."""
    rng = np.random.default_rng(16)
    q, k, v, mask = _inputs(rng, 2, T, T, 4, 2, D, True, np.float64)
    g = rand(rng, *q.shape, dtype=np.float64)
    out, lse = _forward(q, k, v, True, mask)
    want = _backward(g, q, k, v, out, lse, True, mask)
    work = np.full(K.attention_work_size(q.shape, k.shape), np.nan)
    o2, l2 = np.full_like(q, np.nan), np.full_like(lse, np.nan)
    K.attention_forward(o2, l2, q, k, v, True, mask, work=work)
    assert_close(o2, out, rtol=1e-12, atol=1e-12)
    for _ in range(2):  # the second call finds the first call's leftovers in work
        got = [np.full_like(x, np.nan) for x in (q, k, v)]
        K.attention_backward(*got, g, q, k, v, out, lse, True, mask, accumulate=False, work=work)
        for a, d in zip(got, want, strict=True):
            assert_close(a, d, rtol=1e-12, atol=1e-12)


def test_work_is_checked():
    rng = np.random.default_rng(17)
    q, k, v, _ = _inputs(rng, 1, 5, 5, 2, 1, 4, False, np.float32)
    out, lse = np.empty_like(q), np.empty((1, 2, 5), np.float32)
    with pytest.raises(ValueError, match="work: expected at least"):
        K.attention_forward(out, lse, q, k, v, True, work=np.empty(3, np.float32))
    with pytest.raises(TypeError, match="work: expected .*float32"):
        K.attention_forward(out, lse, q, k, v, True, work=np.empty(10_000, np.float64))
    with pytest.raises(ValueError, match="work: expected a C-contiguous"):
        K.attention_forward(out, lse, q, k, v, True, work=np.empty(20_000, np.float32)[::2])
    with pytest.raises(ValueError, match="out: expected a buffer that does not overlap work"):
        K.attention_forward(out, lse, q, k, v, True, work=out.reshape(-1))


@pytest.mark.parametrize("T", [150, 10])  # parallel and serial (B * H * T * S * D <= numerics.SERIAL_WORK)
@pytest.mark.parametrize("causal", [True, False])
def test_backward_key_chunks_agree(causal, T):
    """The key-chunked (nj > 1) and per-head (nj = 1) work splits give the same gradients, added to zeros
    or written over NaN, with scratch full of NaN."""
    rng = np.random.default_rng(7)
    q, k, v, mask = _inputs(rng, 1, T, T, 2, 1, 8, True, np.float64)
    g = rand(rng, *q.shape, dtype=np.float64)
    out, lse = _forward(q, k, v, causal, mask)
    m8, scale = mask.view(np.uint8), 8 ** -0.5
    grads = []
    for nj in (1, 2, 3):
        for accumulate in (True, False):
            dq, dk, dv = (np.zeros_like(x) if accumulate else np.full_like(x, np.nan) for x in (q, k, v))
            _, shapes = K._work_shapes(1, T, T, 2, 1, 8, nj)
            work = [np.full(s, np.nan) for s in shapes]
            K._attention_backward(dq, dk, dv, g, q, k, v, out, lse, m8, causal, scale, accumulate, *work)
            grads.append((dq, dk, dv))
    for other in grads[1:]:
        for a, b in zip(grads[0], other, strict=True):
            assert_close(a, b, rtol=1e-12, atol=1e-12)


TORCH_SHAPES = [
    (2, 7, 7, 4, 2, 5, True, False),
    (2, 13, 13, 4, 1, 12, False, True),
    (1, 150, 150, 2, 1, 16, True, True),
    (2, 9, 20, 6, 3, 8, True, True),
    (2, 9, 20, 4, 2, 32, True, True),
    (2, 72, 72, 4, 2, 64, True, False),
    (1, 64, 80, 4, 1, 32, True, True),
]


@pytest.mark.parametrize("shape", TORCH_SHAPES)
def test_matches_torch(shape):
    torch = torch_or_skip()
    F = torch.nn.functional
    B, T, S, H, Hkv, D, causal, masked = shape
    rng = np.random.default_rng(8)
    q, k, v, mask = _inputs(rng, B, T, S, H, Hkv, D, masked)
    g = rand(rng, B, T, H, D)
    out, lse = _forward(q, k, v, causal, mask)
    dq, dk, dv = _backward(g, q, k, v, out, lse, causal, mask)

    tq, tk, tv = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (q, k, v))
    allowed = torch.tensor(naive.allowed(T, S, causal, mask, B))[:, None]  # (B, 1, T, S)
    to = F.scaled_dot_product_attention(tq.transpose(1, 2), tk.transpose(1, 2), tv.transpose(1, 2),
                                        attn_mask=allowed, enable_gqa=True).transpose(1, 2)
    to.backward(torch.tensor(g, dtype=torch.float64))
    assert_close(out, to.detach().numpy())
    assert_close(dq, tq.grad.numpy(), rtol=1e-4, atol=2e-5)
    assert_close(dk, tk.grad.numpy(), rtol=1e-4, atol=2e-5)
    assert_close(dv, tv.grad.numpy(), rtol=1e-4, atol=2e-5)


# with T0 = 300, B * H * length * D is above numerics.SERIAL_WORK (parallel) for H = 6 and 8, below it for H <= 4
@pytest.mark.parametrize("T0", [10, 300])
@pytest.mark.parametrize("H, Hkv, D, masked",
                         [(1, 1, 4, False), (4, 2, 5, True), (6, 1, 12, True), (8, 8, 16, False)])
def test_decode_equals_last_row_of_causal_forward(H, Hkv, D, masked, T0):
    rng = np.random.default_rng(9)
    B, T_max = 2, T0 + 14
    q, k, v, mask = _inputs(rng, B, T0 + 1, T0 + 1, H, Hkv, D, masked)
    kc, vc = np.zeros((B, Hkv, T_max, D), np.float32), np.zeros((B, Hkv, T_max, D), np.float32)
    K.kv_cache_write(kc, vc, k[:, :T0].copy(), v[:, :T0].copy(), 0)  # prefill
    K.kv_cache_write(kc, vc, k[:, T0:].copy(), v[:, T0:].copy(), T0)  # the new token
    out = np.empty((B, H, D), np.float32)
    K.attention_decode(out, q[:, -1].copy(), kc, vc, T0 + 1, mask)
    full, _ = _forward(q, k, v, True, mask)
    assert_close(out, full[:, -1])
    if masked:  # a (B, T_max) cache mask reads only its first `length` columns
        wide = np.zeros((B, T_max), bool)
        wide[:, :T0 + 1] = mask
        out2 = np.empty_like(out)
        K.attention_decode(out2, q[:, -1].copy(), kc, vc, T0 + 1, wide)
        assert_close(out2, out, rtol=0, atol=0)


def test_decode_matches_naive_float64_and_masked_batch():
    rng = np.random.default_rng(10)
    B, T_max, H, Hkv, D, L = 3, 9, 4, 2, 6, 7
    q = rand(rng, B, H, D, dtype=np.float64)
    kc, vc = rand(rng, B, Hkv, T_max, D, dtype=np.float64), rand(rng, B, Hkv, T_max, D, dtype=np.float64)
    mask = rng.random((B, L)) > 0.4
    mask[0] = False
    mask[1:, 2] = True
    out = np.empty_like(q)
    K.attention_decode(out, q, kc, vc, L, mask, scale=0.5)
    want, _ = naive.attention(q[:, None], kc[:, :, :L].transpose(0, 2, 1, 3), vc[:, :, :L].transpose(0, 2, 1, 3),
                              False, mask, scale=0.5)
    assert_close(out, want[:, 0], rtol=1e-12, atol=1e-12)
    assert np.all(out[0] == 0)


@pytest.mark.parametrize("T_new, Hkv, D", [(3, 2, 3), (SERIAL_WORK // 64 + 1, 2, 16)])  # serial, parallel
def test_kv_cache_write(T_new, Hkv, D):
    rng = np.random.default_rng(11)
    kc, vc = np.zeros((2, Hkv, T_new + 5, D), np.float32), np.zeros((2, Hkv, T_new + 5, D), np.float32)
    k, v = rand(rng, 2, T_new, Hkv, D), rand(rng, 2, T_new, Hkv, D)
    K.kv_cache_write(kc, vc, k, v, 5)
    assert np.array_equal(kc[:, :, 5:], k.transpose(0, 2, 1, 3))
    assert np.array_equal(vc[:, :, 5:], v.transpose(0, 2, 1, 3))
    assert not kc[:, :, :5].any() and not vc[:, :, :5].any()


def test_bad_inputs_raise():
    f32 = np.float32
    q, k, v = np.zeros((2, 4, 6, 8), f32), np.zeros((2, 5, 3, 8), f32), np.zeros((2, 5, 3, 8), f32)
    out, lse = np.empty_like(q), np.empty((2, 6, 4), f32)
    fwd = K.attention_forward
    with pytest.raises(ValueError, match="k: expected a kv head count Hkv >= 1 that divides .* got Hkv = 4"):
        fwd(out, lse, q, np.zeros((2, 5, 4, 8), f32), np.zeros((2, 5, 4, 8), f32), True)
    with pytest.raises(ValueError, match=r"k: expected shape \(B, S, Hkv, D\).*axis 3 is 7, expected 8"):
        fwd(out, lse, q, np.zeros((2, 5, 3, 7), f32), v, True)
    with pytest.raises(ValueError, match="v: expected shape"):
        fwd(out, lse, q, k, np.zeros((2, 6, 3, 8), f32), True)
    with pytest.raises(ValueError, match="q: expected 4-D array"):
        fwd(out, lse, q[0], k, v, True)
    with pytest.raises(ValueError, match="lse: expected shape"):
        fwd(out, np.empty((2, 4, 6), f32), q, k, v, True)
    with pytest.raises(ValueError, match="key_mask: expected shape"):
        fwd(out, lse, q, k, v, True, np.ones((2, 4), bool))
    with pytest.raises(TypeError, match="key_mask: expected dtype bool or an integer dtype"):
        fwd(out, lse, q, k, v, True, np.ones((2, 5), f32))
    with pytest.raises(ValueError, match="q: expected a C-contiguous array"):
        fwd(out, lse, np.zeros((2, 6, 4, 8), f32).transpose(0, 2, 1, 3), k, v, True)
    with pytest.raises(TypeError, match=r"k: expected the dtype of q \(float32\), got float64"):
        fwd(out, lse, q, k.astype(np.float64), v, True)
    with pytest.raises(TypeError, match="q: expected dtype float32 or float64"):
        fwd(out, lse, q.astype(np.float16), k, v, True)
    with pytest.raises(TypeError, match="causal: expected a bool"):
        fwd(out, lse, q, k, v, 1)
    with pytest.raises(ValueError, match="scale: expected a finite real number > 0"):
        fwd(out, lse, q, k, v, True, scale=-1.0)
    ro = np.empty_like(q)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable array"):
        fwd(ro, lse, q, k, v, True)
    with pytest.raises(ValueError, match="out: expected a buffer that does not overlap q"):
        fwd(q, lse, q, k, v, True)

    g, dq, dk, dv = np.zeros_like(q), np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    with pytest.raises(ValueError, match="dk: expected shape"):
        K.attention_backward(dq, np.zeros((2, 5, 3, 4), f32), dv, g, q, k, v, out, lse, True)
    with pytest.raises(TypeError, match="dv: expected the dtype of q"):
        K.attention_backward(dq, dk, dv.astype(np.float64), g, q, k, v, out, lse, True)
    with pytest.raises(ValueError, match="dq: expected a buffer that does not overlap dout"):
        K.attention_backward(g, dk, dv, g, q, k, v, out, lse, True)

    kc, vc = np.zeros((2, 3, 10, 8), f32), np.zeros((2, 3, 10, 8), f32)
    qd, od = np.zeros((2, 6, 8), f32), np.empty((2, 6, 8), f32)
    with pytest.raises(ValueError, match="length: expected length <= T_max = 10, got 11"):
        K.attention_decode(od, qd, kc, vc, 11)
    with pytest.raises(ValueError, match="length: expected a positive int"):
        K.attention_decode(od, qd, kc, vc, 0)
    with pytest.raises(ValueError, match="k_cache: expected a kv head count Hkv"):
        K.attention_decode(np.empty((2, 5, 8), f32), np.zeros((2, 5, 8), f32), kc, vc, 4)
    with pytest.raises(ValueError, match="key_mask: expected shape"):
        K.attention_decode(od, qd, kc, vc, 4, np.ones((2, 7), bool))
    with pytest.raises(ValueError, match="v_cache: expected shape"):
        K.attention_decode(od, qd, kc, np.zeros((2, 3, 9, 8), f32), 4)
    with pytest.raises(ValueError, match=r"pos: expected pos \+ T_new <= T_max = 10 \(T_new = 5\), got pos"):
        K.kv_cache_write(kc, vc, k, v, 6)
    with pytest.raises(ValueError, match="pos: expected a non-negative int"):
        K.kv_cache_write(kc, vc, k, v, -1)
    with pytest.raises(ValueError, match="k: expected shape"):
        K.kv_cache_write(kc, vc, np.zeros((2, 5, 3, 4), f32), v, 0)


def test_other_register_tile_agrees(request, monkeypatch):
    """The register tile this CPU does not use (4 x 16 on AVX-512, 8 x 32 elsewhere) gives the same results:
    a copy of the module with the other shape, loaded from its own file (so that numba caches it apart: the
    cache does not record module constants). The file lives in pytest's cache folder and is rewritten only
    when the module changes, so its kernels compile once, not on every run."""
    import importlib.util
    from pathlib import Path

    src = Path(K.__file__).read_text()
    flag = '_AVX512 = bool(llvm.get_host_cpu_features().get("avx512f", False))'
    assert flag in src
    src = src.replace(flag, f"_AVX512 = {not K._AVX512}")
    assert "from ." not in src  # absolute imports: the copy loads from another folder as it is
    path = request.config.cache.mkdir("attention_other_tile") / "attention_other_tile.py"
    if not path.exists() or path.read_text() != src:
        path.write_text(src)
    spec = importlib.util.spec_from_file_location("attention_other_tile", path)
    other = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, other)  # importable by name, as numba's cache needs to reload it
    spec.loader.exec_module(other)
    assert (other._R, other._W) != (K._R, K._W)
    rng = np.random.default_rng(21)
    for B, T, S, H, Hkv, D, causal, masked in [(2, 37, 37, 4, 2, 32, True, True), (1, 70, 70, 2, 1, 24, False, False),
                                               (2, 9, 45, 6, 3, 8, True, True), (1, 150, 150, 2, 2, 40, True, False)]:
        q, k, v, mask = _inputs(rng, B, T, S, H, Hkv, D, masked)
        g = rand(rng, *q.shape)
        got = []
        for m in (other, K):
            out, lse = np.empty_like(q), np.empty((B, H, T), np.float32)
            m.attention_forward(out, lse, q, k, v, causal, mask)
            dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
            m.attention_backward(dq, dk, dv, g, q, k, v, out, lse, causal, mask)
            got.append((out, lse, dq, dk, dv))
        want, _ = naive.attention(q, k, v, causal, mask)
        assert_close(got[0][0], want, rtol=1e-5, atol=1e-5)
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), *got, strict=True):
            assert_close(a, b, rtol=1e-5, atol=1e-5, what=name)


@pytest.mark.parametrize("scale", [1e4, 1e10, 1e12, 1e30])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_and_decode_exact_for_a_huge_scale(scale, causal):
    # the max is subtracted before scaling: a huge scale is hard attention, not inf or 0 from cancelling products
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((2, 5, 4, 3), (2, 7, 2, 3), (2, 7, 2, 3)))
    out, lse = _forward(q, k, v, causal, scale=scale)
    want, want_lse = naive.attention(q, k, v, causal, scale=scale)
    assert_close(out, want, rtol=1e-6, atol=1e-6)
    assert_close(lse, want_lse, rtol=1e-6, atol=0)
    dec = np.empty((2, 4, 3), np.float32)
    kc, vc = (np.ascontiguousarray(a.transpose(0, 2, 1, 3)) for a in (k, v))  # the cache's (B, Hkv, T, D)
    K.attention_decode(dec, q[:, -1].copy(), kc, vc, 7, scale=scale)
    assert_close(dec, naive.attention(q[:, -1:], k, v, False, scale=scale)[0][:, 0], rtol=1e-6, atol=1e-6)


def test_backward_refuses_an_lse_too_large_for_its_precision():
    # p = exp(scale * q.k - lse) from a float32 lse of 1e12 would be off by any factor: refused, naming scale
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((1, 3, 2, 4), (1, 3, 2, 4), (1, 3, 2, 4)))
    out, lse = _forward(q, k, v, True, scale=1e12)
    with pytest.raises(ValueError, match=r"scale: expected .*\|lse\| <= 65536"):
        _backward(np.ones_like(q), q, k, v, out, lse, True, scale=1e12)
    lse64 = lse.astype(np.float64)  # float64 keeps the precision at this size
    g = np.ones(q.shape)
    grads = [np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)]
    K.attention_backward(*grads, g, q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                         out.astype(np.float64), lse64, True, scale=1e12)


def test_work_size_and_chunks_check_their_arguments():
    assert K.attention_work_size(tuple(np.int64(n) for n in (1, 3, 2, 4)), (1, 5, 1, 4)) == \
        K.attention_work_size((1, 3, 2, 4), (1, 5, 1, 4))
    assert K.backward_chunks(np.int64(1), 2, 3) == K.backward_chunks(1, 2, 3)
    for qs, ks, name in (((1, -3, 2, 4), (1, 5, 1, 4), "q_shape"), ((1.0, 3.0, 2.0, 4.0), (1, 5, 1, 4), "q_shape"),
                         (None, (1, 5, 1, 4), "q_shape"), ((1, 3, 2), (1, 5, 1, 4), "q_shape"),
                         ("abcd", (1, 5, 1, 4), "q_shape"), ((1, 3, 2, 4), None, "k_shape")):
        with pytest.raises(ValueError, match=f"{name}: expected a shape"):
            K.attention_work_size(qs, ks)
    for args, name in (((-1, 2, 3), "B"), ((1, None, 3), "Hkv"), ((1, 2, "3"), "S")):
        with pytest.raises(ValueError, match=f"{name}: expected a non-negative int"):
            K.backward_chunks(*args)
