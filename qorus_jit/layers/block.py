"""Transformer block: attention and feed-forward with residuals, pre-norm (Llama, GPT-2) or post-norm (BERT)."""

from __future__ import annotations

import numpy as np

from qorus_jit.core.check import flat_views
from qorus_jit.core.numerics import get_num_threads, max_threads
from qorus_jit.kernels import trusted as K
from qorus_jit.layers.attention import KVCache, MultiHeadAttention
from qorus_jit.layers.base import Layer, check_input
from qorus_jit.layers.feedforward import FeedForward
from qorus_jit.layers.norm import LayerNorm, RMSNorm


def _add(out, a, b) -> None:
    """out = a + b over arrays of one shape (the residual connections), on the kernel threads."""
    K.add_forward(*flat_views(out, a, b))


def decode_split(n_kv_heads: int) -> tuple[bool, int]:
    """The thread split arguments of the decode kernels (``by_kv_head``, ``n_parts``): a region per kv head
    when there are at least as many kv heads as threads, and one slice of the hidden units per thread."""
    threads = get_num_threads()
    return n_kv_heads >= threads, threads


class TransformerBlock(Layer):
    """``x (B, T, dim) -> (B, T, dim)``.

    Pre-norm (``prenorm=True``, Llama and GPT-2): ``h = x + attn(norm1(x))``, ``y = h + mlp(norm2(h))``.
    Post-norm (BERT): ``h = norm1(x + attn(x))``, ``y = norm2(h + mlp(h))``.
    ``norm`` is ``"rms"`` or ``"layer"``; ``mlp`` a :class:`FeedForward` kind; the attention options are
    those of :class:`MultiHeadAttention`. Children: ``input_layernorm``, ``self_attn``,
    ``post_attention_layernorm``, ``mlp`` (Hugging Face Llama naming); ``names``, ``attn_names`` and
    ``mlp_names`` rename the block's, the attention's and the MLP's children (GPT-2: ``ln_1``, ``attn``, ...).
    """

    def __init__(self, dim: int, n_heads: int, hidden_dim: int, n_kv_heads: int | None = None, *,
                 norm: str = "rms", norm_eps: float = 1e-5, prenorm: bool = True, mlp: str = "swiglu",
                 mlp_bias: bool = False, causal: bool = True, rope: str | None = "rotate_half",
                 rope_theta: float = 10000.0, max_seq_len: int = 2048, attn_bias: bool = False,
                 out_bias: bool = False, fused_qkv: bool = False, names: dict | None = None,
                 attn_names: dict | None = None, mlp_names: dict | None = None, rng=None):
        super().__init__()
        if norm not in ("rms", "layer"):
            raise ValueError(f"norm: expected 'rms' or 'layer', got {norm!r}")
        rng = np.random.default_rng(rng)

        def make_norm():
            return RMSNorm(dim, norm_eps) if norm == "rms" else LayerNorm(dim, norm_eps)

        names = {**{k: k for k in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")},
                 **(names or {})}
        self.prenorm = bool(prenorm)
        self.input_layernorm = self.add_child(names["input_layernorm"], make_norm())
        self.self_attn = self.add_child(names["self_attn"], MultiHeadAttention(
            dim, n_heads, n_kv_heads, causal=causal, rope=rope, rope_theta=rope_theta, max_seq_len=max_seq_len,
            bias=attn_bias, out_bias=out_bias, fused_qkv=fused_qkv, names=attn_names, rng=rng))
        self.post_attention_layernorm = self.add_child(names["post_attention_layernorm"], make_norm())
        self._decode_args = None  # (cache, arrays of the fused decoding call), see _fused_decode
        self._fusable = None  # whether this block's structure allows the fused decoding call (found once)
        self.mlp = self.add_child(names["mlp"], FeedForward(dim, hidden_dim, mlp, bias=mlp_bias, names=mlp_names,
                                                            rng=rng))

    def forward(self, x, key_mask=None, cache: KVCache | None = None):
        """``key_mask`` and ``cache`` as in :meth:`MultiHeadAttention.forward`."""
        if self.prenorm:
            h, y = self.buffer("h", x.shape), self.buffer("y", x.shape)
            _add(h, x, self.self_attn.forward(self.input_layernorm.forward(x), key_mask, cache))
            _add(y, h, self.mlp.forward(self.post_attention_layernorm.forward(h)))
            return y
        s1, s2 = self.buffer("s1", x.shape), self.buffer("s2", x.shape)  # the norms keep their inputs
        _add(s1, x, self.self_attn.forward(x, key_mask, cache))
        h = self.input_layernorm.forward(s1)
        _add(s2, h, self.mlp.forward(h))
        return self.post_attention_layernorm.forward(s2)

    def forward_decode(self, x, key_mask=None, *, state):
        """:meth:`forward` with the KV cache ``state`` keeps for this block's attention (no backward).

        One new token of one sequence through a Llama-style block (pre-norm RMSNorm, rotate-half RoPE,
        SwiGLU, no biases) takes a single fused kernel call (``kernels.decode``); anything else runs the
        layers one by one."""
        cache = state.cache_for(self.self_attn)
        if cache.length != state.pos:
            raise ValueError(f"state: the cache holds {cache.length} positions, expected state.pos = {state.pos}")
        if self._fusable is None:
            self._fusable = self._fused_decode_ok()
        if key_mask is None and x.shape[:2] == (1, 1) and self._fusable:
            return self._fused_decode(x, cache)
        return self.forward(x, key_mask, cache)

    def _fused_decode_ok(self) -> bool:
        a, m = self.self_attn, self.mlp
        return (self.prenorm and isinstance(self.input_layernorm, RMSNorm) and a.rope == "rotate_half"
                and not a.fused_qkv and m.kind == "swiglu"
                and all(lin.bias is None for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj,
                                                     m.down_proj)))

    def _fused_decode(self, x, cache: KVCache):
        check_input("x", x, self.self_attn.dim, min_ndim=3)
        a = self.self_attn
        pos = cache.length
        if pos >= cache.max_seq_len or pos >= a.max_seq_len:
            raise ValueError(f"x: position {pos} is past the cache ({cache.max_seq_len}) or max_seq_len "
                             f"({a.max_seq_len})")
        args = self._decode_args
        if args is None or args[0] is not cache:  # arrays of the call, gathered once per cache
            args = self._decode_args = (cache, *self._gather_decode_args(cache))
        y, before, after = args[1], args[2], args[3]
        np.copyto(y.reshape(x.shape), x)
        K.llama_block_decode(y, *before, pos, *after, *decode_split(a.n_kv_heads))
        cache.length = pos + 1
        return y.reshape(x.shape)

    def _gather_decode_args(self, cache: KVCache):
        a, m = self.self_attn, self.mlp
        C, HD, KD, F = a.dim, a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim, m.hidden_dim
        b = self.buffer
        before = (self.input_layernorm.weight, a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight,
                  self.post_attention_layernorm.weight, m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight,
                  cache.k[0], cache.v[0])
        after = (a.cos, a.sin, np.float32(self.input_layernorm.eps), np.float32(1 / np.sqrt(a.head_dim)),
                 b("decode_h", (C,)), b("decode_q", (HD,)), b("decode_k", (KD,)), b("decode_v", (KD,)),
                 b("decode_att", (HD,)), b("decode_scores", (a.n_heads, cache.max_seq_len)), b("decode_g", (F,)),
                 b("decode_u", (F,)), b("decode_parts", (a.n_kv_heads + max_threads(), C)))
        return b("decode_y", (C,)), before, after

    def backward(self, dy):
        dh = self.buffer("dh", dy.shape)
        dx = self.buffer("dx", dy.shape)
        if self.prenorm:  # each norm's input gradient plus the residual's, which skips it, in one pass
            self.post_attention_layernorm.backward(self.mlp.backward(dy), out=dh, residual=dy)
            return self.input_layernorm.backward(self.self_attn.backward(dh), out=dx, residual=dh)
        ds = self.post_attention_layernorm.backward(dy)
        _add(dh, ds, self.mlp.backward(ds))
        ds = self.input_layernorm.backward(dh)
        _add(dx, ds, self.self_attn.backward(ds))
        return dx
