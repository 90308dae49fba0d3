"""Llama: token embedding, pre-norm transformer blocks (RMSNorm, RoPE, grouped-query attention, SwiGLU),
final RMSNorm and LM head, built from the layers through the graph. Parameter names are those of
Hugging Face ``LlamaForCausalLM``."""

from __future__ import annotations

import numpy as np

from ..layers import Embedding, Graph, Linear, RMSNorm, TransformerBlock
from ..layers.head import TiedLMHead
from .configs import LlamaConfig


class Llama(Graph):
    """``ids (B, T) -> logits (B, T, vocab_size)``; weights initialised N(0, 0.02) as Hugging Face does."""

    def __init__(self, config: LlamaConfig, rng=None):
        super().__init__(inputs=["ids"], output="logits")
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config: expected a LlamaConfig, got {type(config).__name__}")
        self.config = c = config
        rng = np.random.default_rng(rng)
        emb = self.add("model.embed_tokens", Embedding(c.vocab_size, c.dim), "ids", "h0")
        for i in range(c.n_layers):
            self.add(f"model.layers.{i}", TransformerBlock(
                c.dim, c.n_heads, c.hidden_dim, c.n_kv_heads, norm="rms", norm_eps=c.norm_eps, prenorm=True,
                mlp="swiglu", mlp_bias=c.mlp_bias, causal=True, rope="rotate_half", rope_theta=c.rope_theta,
                max_seq_len=c.max_seq_len, attn_bias=c.attention_bias, out_bias=c.attention_bias),
                f"h{i}", f"h{i + 1}")
        self.add("model.norm", RMSNorm(c.dim, c.norm_eps), f"h{c.n_layers}", "hn")
        head = TiedLMHead(emb) if c.tie_embeddings else Linear(c.dim, c.vocab_size, bias=False)
        self.add("lm_head", head, "hn", "logits")
        for name, p in self.parameters().items():
            if not name.endswith("norm.weight") and "layernorm" not in name:
                p[...] = rng.normal(0.0, 0.02, p.shape)
