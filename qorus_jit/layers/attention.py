"""Multi-head attention: projections, optional RoPE, grouped-query fused attention, KV cache for decoding."""

from __future__ import annotations

import threading
import weakref

import numpy as np

from qorus_jit.core.alloc import check_fits
from qorus_jit.core.check import check_bool, check_nonnegative, check_positive, check_positive_float, check_rng
from qorus_jit.core.numerics import get_num_threads
from qorus_jit.kernels import trusted as K
from qorus_jit.kernels.attention import attention_work_size
from qorus_jit.kernels.rope import rope_cache
from qorus_jit.layers.base import Layer, check_input, check_names
from qorus_jit.layers.linear import Linear

ROPE_STYLES = (None, "rotate_half", "interleaved")
_ROPE_MIN_ROWS = 64  # the first table's length at least, so that decoding token by token rarely regrows it


class RopeTables:
    """The ``cos``, ``sin`` and ``-sin`` tables ``(positions, head_dim / 2)`` of one rotary embedding (its
    ``head_dim`` and ``theta``), shared by every attention layer that uses that embedding
    (:func:`shared_rope_tables`) and sized lazily to the positions used.

    :meth:`get` returns tables that cover at least the positions asked for, rebuilt at twice the old length
    (up to the caller's limit) when they are too short, so a config's huge ``max_position_embeddings`` costs
    nothing until those positions are used. The tables come from ``kernels.rope.rope_cache``, whose row
    ``t`` depends on ``t`` alone, so a longer table repeats the rows of the shorter one exactly. The style
    (rotate-half or interleaved pairs) is the kernel's business: both read the same tables.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        check_positive(head_dim=head_dim)
        check_positive_float(theta=theta)
        if head_dim % 2:
            raise ValueError(f"head_dim: expected an even int (RoPE rotates pairs), got {head_dim}")
        self.head_dim, self.theta = head_dim, float(theta)
        empty = np.empty((0, head_dim // 2), np.float32)
        self._tables = (empty, empty, empty)  # replaced whole, so a reader never sees a half-grown set
        self._lock = threading.Lock()

    @property
    def length(self) -> int:
        """How many positions the tables cover now."""
        return self._tables[0].shape[0]

    def get(self, n: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(cos, sin, neg_sin)`` covering positions ``0 .. n - 1`` at least; a table grown here has
        ``max(n, twice the old length, 64)`` rows, but no more than ``limit`` (a layer's ``max_seq_len``)."""
        tables = self._tables
        if n <= tables[0].shape[0]:
            return tables
        with self._lock:
            old = self._tables[0].shape[0]
            if n > old:
                size = max(n, 2 * old, _ROPE_MIN_ROWS)
                if limit is not None:
                    size = max(n, min(size, limit))
                cos, sin = rope_cache(size, self.head_dim, self.theta)
                self._tables = (cos, sin, -sin)
            return self._tables


_SHARED_ROPE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_SHARED_ROPE_LOCK = threading.Lock()


def shared_rope_tables(head_dim: int, theta: float = 10000.0) -> RopeTables:
    """The one :class:`RopeTables` of ``(head_dim, theta)`` in this process, kept while a layer uses it:
    the attention layers of a model (and of other models alike) share their tables."""
    check_positive(head_dim=head_dim)
    check_positive_float(theta=theta)
    key = (int(head_dim), float(theta))
    with _SHARED_ROPE_LOCK:
        tables = _SHARED_ROPE.get(key)
        if tables is None:
            tables = _SHARED_ROPE[key] = RopeTables(head_dim, theta)
        return tables


class KVCache:
    """Keys and values of past positions for incremental decoding: ``k``, ``v`` ``(B, Hkv, max_seq_len, D)``
    (each kv head's positions one after another, as decoding reads them).

    Allocated once for a whole generation; ``length`` is how many positions are filled.
    """

    def __init__(self, batch: int, max_seq_len: int, n_kv_heads: int, head_dim: int):
        check_positive(batch=batch, max_seq_len=max_seq_len, n_kv_heads=n_kv_heads, head_dim=head_dim)
        check_fits("KV cache elements", 2 * batch * max_seq_len * n_kv_heads * head_dim, batch=batch,
                   max_seq_len=max_seq_len, n_kv_heads=n_kv_heads, head_dim=head_dim)
        shape = (int(batch), int(n_kv_heads), int(max_seq_len), int(head_dim))
        self.k = np.zeros(shape, np.float32)
        self.v = np.zeros_like(self.k)
        self.length = 0

    @property
    def max_seq_len(self) -> int:
        """Positions the cache holds (its third axis)."""
        return self.k.shape[2]


class DecodeState:
    """What incremental decoding carries from one call to the next: a :class:`KVCache` per attention
    layer (allocated on first use, ``max_seq_len`` positions for ``batch`` sequences) and ``pos``, the
    position of the next new token. Made by :meth:`Graph.forward_decode`'s caller, e.g.
    ``state = DecodeState(batch=1, max_seq_len=256)``; :meth:`advance` moves ``pos`` after a call."""

    def __init__(self, batch: int, max_seq_len: int):
        check_positive(batch=batch, max_seq_len=max_seq_len)
        self.batch, self.max_seq_len = int(batch), int(max_seq_len)
        self.pos = 0
        self.caches: dict[int, KVCache] = {}

    def cache_for(self, attn: MultiHeadAttention) -> KVCache:
        """The :class:`KVCache` of the attention layer ``attn`` (``batch`` x ``max_seq_len`` positions), allocated on
        its first call."""
        cache = self.caches.get(id(attn))
        if cache is None:
            cache = self.caches[id(attn)] = attn.new_cache(self.batch, self.max_seq_len)
        return cache

    def advance(self, n: int) -> None:
        """Move ``pos`` on by the ``n`` positions the last call decoded (never past ``max_seq_len``)."""
        check_nonnegative(n=n)
        if self.pos + n > self.max_seq_len:
            raise ValueError(f"n: position {self.pos} + {n} is past the state's max_seq_len = {self.max_seq_len}")
        self.pos += int(n)

    @staticmethod
    def check(state, x=None) -> None:
        """``state`` is a :class:`DecodeState`; and, given the new positions ``x (B, T, ...)`` (checked by the
        caller), it was made for batch ``B`` and has room for ``T`` more positions."""
        if not isinstance(state, DecodeState):
            raise TypeError(f"state: expected a DecodeState, got {type(state).__name__}")
        if x is None:
            return
        B, T = x.shape[0], x.shape[-2]
        if B != state.batch:
            raise ValueError(f"state: made for batch = {state.batch}, got x of batch {B} (shape {x.shape})")
        if isinstance(state.pos, (int, np.integer)) and state.pos + T > state.max_seq_len:
            raise ValueError(f"x: {T} new positions from state.pos = {state.pos} exceed the state's "
                             f"max_seq_len = {state.max_seq_len}")


class MultiHeadAttention(Layer):
    """``x (B, T, dim) -> (B, T, dim)``: q/k/v projections, RoPE, scaled dot-product attention, output
    projection.

    ``n_kv_heads`` < ``n_heads`` is grouped-query attention. ``causal`` masks future keys (decoders);
    ``rope`` is ``None``, ``"rotate_half"`` (Hugging Face Llama) or ``"interleaved"`` (llama2.c). ``bias``
    puts biases on q/k/v, ``out_bias`` on the output projection. ``fused_qkv`` computes q, k and v with one
    projection (GPT-2's ``c_attn``, rows ordered q, k, v). Children are named ``q_proj``, ``k_proj``,
    ``v_proj`` (or ``qkv_proj`` when fused) and ``o_proj``; ``names`` renames them to follow another
    architecture's checkpoint names, e.g. ``{"qkv_proj": "c_attn", "o_proj": "c_proj"}``.

    The RoPE tables are those of :func:`shared_rope_tables` (one set for all layers of the same head size
    and theta), grown to the positions a call uses, never past ``max_seq_len``.
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, *, causal: bool = True,
                 rope: str | None = None, rope_theta: float = 10000.0, max_seq_len: int = 2048,
                 bias: bool = False, out_bias: bool = False, fused_qkv: bool = False, names: dict | None = None,
                 rng=None):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        check_positive(dim=dim, n_heads=n_heads, n_kv_heads=n_kv_heads, max_seq_len=max_seq_len)
        check_bool(causal=causal, bias=bias, out_bias=out_bias, fused_qkv=fused_qkv)
        check_positive_float(rope_theta=rope_theta)
        dim, n_heads, n_kv_heads, max_seq_len = int(dim), int(n_heads), int(n_kv_heads), int(max_seq_len)
        names = check_names("names", names)
        if dim % n_heads:
            raise ValueError(f"n_heads: expected a divisor of dim = {dim}, got {n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads: expected a divisor of n_heads = {n_heads}, got {n_kv_heads}")
        if rope not in ROPE_STYLES:
            raise ValueError(f"rope: expected one of {ROPE_STYLES}, got {rope!r}")
        self.dim, self.n_heads, self.n_kv_heads = dim, n_heads, n_kv_heads
        self.head_dim = D = dim // n_heads
        # the projections' weights and biases: dim x (H + 2 Hkv) D in, H D x dim out
        check_fits("parameters", (dim + 1) * (n_heads + 2 * n_kv_heads) * D + (n_heads * D + 1) * dim, dim=dim,
                   n_heads=n_heads, n_kv_heads=n_kv_heads)
        self.causal, self.rope, self.max_seq_len = bool(causal), rope, max_seq_len
        rng = check_rng("rng", rng)
        names = {**{k: k for k in ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj")}, **(names or {})}
        self.fused_qkv = bool(fused_qkv)
        if self.fused_qkv:
            self.qkv_proj = self.add_child(names["qkv_proj"], Linear(dim, (n_heads + 2 * n_kv_heads) * D, bias=bias,
                                                                     rng=rng))
        else:
            self.q_proj = self.add_child(names["q_proj"], Linear(dim, n_heads * D, bias=bias, rng=rng))
            self.k_proj = self.add_child(names["k_proj"], Linear(dim, n_kv_heads * D, bias=bias, rng=rng))
            self.v_proj = self.add_child(names["v_proj"], Linear(dim, n_kv_heads * D, bias=bias, rng=rng))
        self.o_proj = self.add_child(names["o_proj"], Linear(n_heads * D, dim, bias=out_bias, rng=rng))
        # the model's shared tables, grown to the positions used (RopeTables)
        self.rope_tables = shared_rope_tables(D, rope_theta) if rope is not None else None
        self._saved = None
        self._work_size = (None, 0)  # ((q shape, k shape, threads), elements of the attention scratch)

    def rope_for(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(cos, sin, neg_sin)`` covering positions ``0 .. n - 1`` (``n <= max_seq_len``)."""
        return self.rope_tables.get(n, self.max_seq_len)

    @property
    def incremental(self) -> bool:
        """Causal attention decodes incrementally from its KV cache; bidirectional attention cannot (each
        position attends to later ones)."""
        return self.causal

    def _project(self, x, pos):
        """q (B, T, H, D), k, v (B, T, Hkv, D) for positions pos .. pos + T - 1 (RoPE applied in place)."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        if self.fused_qkv:
            qkv = self.qkv_proj.forward(x)
            q, k, v = (self.buffer(n, (B, T, h, D)) for n, h in (("q", H), ("k", Hkv), ("v", Hkv)))
            np.copyto(q, qkv[..., :H * D].reshape(B, T, H, D))
            np.copyto(k, qkv[..., H * D:(H + Hkv) * D].reshape(B, T, Hkv, D))
            np.copyto(v, qkv[..., (H + Hkv) * D:].reshape(B, T, Hkv, D))
        else:
            q = self.q_proj.forward(x).reshape(B, T, H, D)
            k = self.k_proj.forward(x).reshape(B, T, Hkv, D)
            v = self.v_proj.forward(x).reshape(B, T, Hkv, D)
        if self.rope is not None:
            inter = self.rope == "interleaved"
            cos, sin, _ = self.rope_for(pos + T)
            K.rope_forward(q, q, cos, sin, pos, inter)
            K.rope_forward(k, k, cos, sin, pos, inter)
        return q, k, v

    def forward(self, x, key_mask=None, cache: KVCache | None = None):
        """``x (B, T, dim)``; ``key_mask (B, S)`` nonzero = attend (padding mask, S = T, or the cache length
        after this call when decoding). With ``cache``, the new positions start at ``cache.length``, their
        keys and values are appended, and attention reads the whole cache (no backward in that mode)."""
        check_input("x", x, self.dim, min_ndim=3)
        if x.ndim != 3:
            raise ValueError(f"x: expected shape (B, T, {self.dim}), got {x.shape}")
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache: expected a KVCache or None, got {type(cache).__name__}")
        B, T, _ = x.shape
        pos = 0 if cache is None else cache.length
        if pos + T > self.max_seq_len:
            raise ValueError(f"x: {pos} cached + {T} new positions exceed max_seq_len = {self.max_seq_len}")
        q, k, v = self._project(x, pos)
        out = self.buffer("attn", (B, T, self.n_heads, self.head_dim))
        if cache is None:
            lse = self.buffer("lse", (B, self.n_heads, T))
            K.attention_forward(out, lse, q, k, v, self.causal, key_mask, work=self._work(q, k))
            # backward reads the mask of this forward, not whatever the caller's array holds by then
            self._saved = (x, q, k, v, out, lse, None if key_mask is None else np.array(key_mask))
        else:
            K.kv_cache_write(cache.k, cache.v, k, v, pos)
            cache.length = L = pos + T
            if T == 1:
                K.attention_decode(out.reshape(B, self.n_heads, self.head_dim),
                                   q.reshape(B, self.n_heads, self.head_dim), cache.k, cache.v, L, key_mask)
            else:
                ks, vs = k, v  # a prompt from the start: its own keys and values are the whole cache
                if pos > 0:  # (B, L, Hkv, D) as attention_forward reads them
                    ks = np.ascontiguousarray(cache.k[:, :, :L].transpose(0, 2, 1, 3))
                    vs = np.ascontiguousarray(cache.v[:, :, :L].transpose(0, 2, 1, 3))
                lse = self.buffer("lse", (B, self.n_heads, T))
                K.attention_forward(out, lse, q, ks, vs, self.causal, key_mask, work=self._work(q, ks))
            self._saved = None
        return self.o_proj.forward(out.reshape(B, T, self.n_heads * self.head_dim))

    def _work(self, q, k):
        """The attention kernels' scratch, kept across calls so that a training step allocates none (its
        size depends on the shapes and the thread count)."""
        key = (q.shape, k.shape, get_num_threads())
        if self._work_size[0] != key:
            self._work_size = (key, attention_work_size(q.shape, k.shape))
        return self.buffer("attn_work", (self._work_size[1],))

    def forward_decode(self, x, key_mask=None, *, state: DecodeState):
        """:meth:`forward` over ``state``'s KV cache for this layer (positions from ``state.pos``)."""
        DecodeState.check(state)
        check_input("x", x, self.dim, min_ndim=3)
        DecodeState.check(state, x)
        cache = state.cache_for(self)
        if cache.length != state.pos:
            raise ValueError(f"state: the cache holds {cache.length} positions, expected state.pos = {state.pos}")
        return self.forward(x, key_mask, cache)

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """``dy (B, T, dim)`` -> ``dx (B, T, dim)``; accumulates the gradients of the projections' weights (through
        RoPE's inverse rotation when RoPE is on). Takes none of the backward variants. Raises RuntimeError when the
        last forward used a KV cache (decoding has no backward), ValueError for a ``dy`` of another shape."""
        self.check_variants(out, accumulate, residual)
        if self._saved is None:
            raise RuntimeError("MultiHeadAttention.backward needs a forward without a KV cache first")
        x, q, k, v, out, lse, key_mask = self._saved
        check_input("dy", dy, self.dim)
        if dy.shape != x.shape:
            raise ValueError(f"dy: expected shape {x.shape}, got {dy.shape}")
        B, T, _ = x.shape
        dout = self.o_proj.backward(dy).reshape(out.shape)
        dq, dk, dv = self.buffer("dq", q.shape), self.buffer("dk", k.shape), self.buffer("dv", v.shape)
        K.attention_backward(dq, dk, dv, dout, q, k, v, out, lse, self.causal, key_mask, accumulate=False,
                             work=self._work(q, k))
        if self.rope is not None:  # the transpose of a rotation: the rotation by the opposite angle, in place
            inter = self.rope == "interleaved"
            cos, _, neg_sin = self.rope_for(T)
            K.rope_forward(dq, dq, cos, neg_sin, 0, inter)
            K.rope_forward(dk, dk, cos, neg_sin, 0, inter)
        if self.fused_qkv:
            H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
            dqkv = self.buffer("dqkv", (B, T, (H + 2 * Hkv) * D))
            dqkv[..., :H * D] = dq.reshape(B, T, H * D)  # sizes spelled out: -1 is ambiguous when B or T is 0
            dqkv[..., H * D:(H + Hkv) * D] = dk.reshape(B, T, Hkv * D)
            dqkv[..., (H + Hkv) * D:] = dv.reshape(B, T, Hkv * D)
            return self.qkv_proj.backward(dqkv)
        dx = self.q_proj.backward(dq.reshape(B, T, q.shape[2] * q.shape[3]))
        self.k_proj.backward(dk.reshape(B, T, k.shape[2] * k.shape[3]), out=dx, accumulate=True)
        self.v_proj.backward(dv.reshape(B, T, v.shape[2] * v.shape[3]), out=dx, accumulate=True)
        return dx

    def new_cache(self, batch: int, max_seq_len: int | None = None) -> KVCache:
        """A KV cache for ``batch`` sequences of up to ``max_seq_len`` (default: the layer's) positions."""
        return KVCache(batch, max_seq_len or self.max_seq_len, self.n_kv_heads, self.head_dim)

    def extra_repr(self) -> str:
        """``dim, n_heads, n_kv_heads, causal, rope``, as ``repr`` shows them."""
        return (f"{self.dim}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, causal={self.causal}, "
                f"rope={self.rope!r}")
