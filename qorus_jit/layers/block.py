"""Transformer block: attention and feed-forward with residuals, pre-norm (Llama, GPT-2) or post-norm (BERT)."""

from __future__ import annotations

from qorus_jit.core.check import check_bool, check_positive_float, check_rng, flat_views
from qorus_jit.kernels import trusted as K
from qorus_jit.layers.attention import DecodeState, KVCache, MultiHeadAttention
from qorus_jit.layers.base import Layer, check_input, check_names
from qorus_jit.layers.feedforward import KINDS, FeedForward
from qorus_jit.layers.norm import LayerNorm, RMSNorm


def _add(out, a, b) -> None:
    """out = a + b over arrays of one shape (the residual connections), on the kernel threads."""
    K.add_forward(*flat_views(out, a, b))


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
        if not isinstance(norm, str) or norm not in ("rms", "layer"):
            raise ValueError(f"norm: expected 'rms' or 'layer', got {norm!r}")
        check_bool(prenorm=prenorm, mlp_bias=mlp_bias, causal=causal, attn_bias=attn_bias, out_bias=out_bias,
                   fused_qkv=fused_qkv)
        check_positive_float(norm_eps=norm_eps, rope_theta=rope_theta)  # checked here to be named as given
        if not isinstance(mlp, str) or mlp not in KINDS:
            raise ValueError(f"mlp: expected one of {KINDS}, got {mlp!r}")
        names = check_names("names", names)
        attn_names, mlp_names = check_names("attn_names", attn_names), check_names("mlp_names", mlp_names)
        rng = check_rng("rng", rng)

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
        self.mlp = self.add_child(names["mlp"], FeedForward(dim, hidden_dim, mlp, bias=mlp_bias, names=mlp_names,
                                                            rng=rng))

    def forward(self, x, key_mask=None, cache: KVCache | None = None):
        """``key_mask`` and ``cache`` as in :meth:`MultiHeadAttention.forward`."""
        check_input("x", x, self.self_attn.dim, min_ndim=3)
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
        """:meth:`forward` with the KV cache ``state`` keeps for this block's attention (no backward)."""
        DecodeState.check(state)
        check_input("x", x, self.self_attn.dim, min_ndim=3)
        DecodeState.check(state, x)
        cache = state.cache_for(self.self_attn)
        if cache.length != state.pos:
            raise ValueError(f"state: the cache holds {cache.length} positions, expected state.pos = {state.pos}")
        return self.forward(x, key_mask, cache)

    @property
    def incremental(self) -> bool:
        """As its attention's (:attr:`MultiHeadAttention.incremental`): True when causal."""
        return self.self_attn.incremental

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """``dy (B, T, dim)`` -> ``dx (B, T, dim)`` through both residual branches (MLP, then attention), the residuals
        summed into the norms' input gradients in one pass when prenorm. Takes none of the backward variants; raises
        ValueError for a ``dy`` whose last axis is not ``dim``."""
        self.check_variants(out, accumulate, residual)
        check_input("dy", dy, self.self_attn.dim, min_ndim=3)
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
