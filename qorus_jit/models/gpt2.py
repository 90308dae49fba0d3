"""GPT-2: token and learned position embeddings, pre-LayerNorm blocks (fused q/k/v, GELU-tanh MLP, biases),
final LayerNorm and a tied LM head, built from the layers through the graph. Parameter names are those of
Hugging Face ``GPT2LMHeadModel``; its ``Conv1D`` weights are stored ``(in, out)`` and are transposed to
the ``nn.Linear`` layout ``(out, in)`` on load and back on save (:func:`from_hf_tensors`, :func:`to_hf_tensors`).
"""

from __future__ import annotations

import re

import numpy as np

from qorus_jit.layers import Embedding, Graph, LayerNorm, Linear, TransformerBlock
from qorus_jit.layers.embedding import PositionEmbedding
from qorus_jit.layers.head import TiedLMHead
from qorus_jit.models.configs import GPT2Config

_CONV1D = re.compile(r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
_MLP = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def from_hf_tensors(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face GPT-2 tensors to ours: ``Conv1D`` weights transposed to ``(out, in)``."""
    return {k: np.ascontiguousarray(v.T) if _CONV1D.fullmatch(k) else v for k, v in params.items()}


def to_hf_tensors(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ours to Hugging Face GPT-2 tensors (the inverse of :func:`from_hf_tensors`)."""
    return from_hf_tensors(params)


class GPT2(Graph):
    """``ids (B, T) -> logits (B, T, vocab_size)``; weights initialised N(0, 0.02) as Hugging Face does."""

    def __init__(self, config: GPT2Config, rng=None):
        super().__init__(inputs=["ids"], output="logits")
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config: expected a GPT2Config, got {type(config).__name__}")
        self.config = c = config
        rng = np.random.default_rng(rng)
        wte = self.add("transformer.wte", Embedding(c.vocab_size, c.dim), "ids", "tok")
        self.add("transformer.wpe", PositionEmbedding(c.max_seq_len, c.dim), "tok", "h0")
        for i in range(c.n_layers):
            self.add(f"transformer.h.{i}", TransformerBlock(
                c.dim, c.n_heads, c.hidden_dim, norm="layer", norm_eps=c.norm_eps, prenorm=True,
                mlp=_MLP[c.activation], mlp_bias=True, causal=True, rope=None, max_seq_len=c.max_seq_len,
                attn_bias=True, out_bias=True, fused_qkv=True,
                names={"input_layernorm": "ln_1", "self_attn": "attn", "post_attention_layernorm": "ln_2"},
                attn_names={"qkv_proj": "c_attn", "o_proj": "c_proj"},
                mlp_names={"up_proj": "c_fc", "down_proj": "c_proj"}, rng=rng), f"h{i}", f"h{i + 1}")
        self.add("transformer.ln_f", LayerNorm(c.dim, c.norm_eps), f"h{c.n_layers}", "hn")
        head = TiedLMHead(wte) if c.tie_embeddings else Linear(c.dim, c.vocab_size, bias=False, rng=rng)
        self.add("lm_head", head, "hn", "logits")
        for name, p in self.parameters().items():
            if ".ln_" not in name and name.endswith("weight"):
                p[...] = rng.normal(0.0, 0.02, p.shape)
