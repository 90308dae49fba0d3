"""BERT-style encoder: word + position + token-type embeddings, post-norm blocks (bidirectional attention with
a padding mask, GELU MLP, biases), returning hidden states; built from the layers through the graph.
Parameter names are those of Hugging Face ``BertModel`` (the pooler is not built: its tensors are skipped
on load and absent on save)."""

from __future__ import annotations

import numpy as np

from qorus_jit.layers import Add, Embedding, Graph, LayerNorm, TransformerBlock
from qorus_jit.layers.embedding import PositionEmbedding
from qorus_jit.models.configs import BertConfig

_MLP = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
POOLER = ("pooler.dense.weight", "pooler.dense.bias")


class Bert(Graph):
    """``forward(ids (B, T), attention_mask=None, token_type_ids=None) -> hidden (B, T, dim)``.

    ``attention_mask`` (B, T): nonzero for real tokens, 0 for padding (keys that are never attended).
    """

    def __init__(self, config: BertConfig, rng=None):
        super().__init__(inputs=["ids", "token_type_ids", "mask"], output="hidden")
        if not isinstance(config, BertConfig):
            raise TypeError(f"config: expected a BertConfig, got {type(config).__name__}")
        self.config = c = config
        rng = np.random.default_rng(rng)
        self.add("embeddings.word_embeddings", Embedding(c.vocab_size, c.dim), "ids", "word")
        self.add("embeddings.token_type_embeddings", Embedding(c.type_vocab_size, c.dim), "token_type_ids", "type")
        self.add("embeddings.sum", Add(), ["word", "type"], "wt")
        self.add("embeddings.position_embeddings", PositionEmbedding(c.max_seq_len, c.dim), "wt", "emb")
        self.add("embeddings.LayerNorm", LayerNorm(c.dim, c.norm_eps), "emb", "h0")
        for i in range(c.n_layers):
            self.add(f"encoder.layer.{i}", TransformerBlock(
                c.dim, c.n_heads, c.hidden_dim, norm="layer", norm_eps=c.norm_eps, prenorm=False,
                mlp=_MLP[c.activation], mlp_bias=True, causal=False, rope=None, max_seq_len=c.max_seq_len,
                attn_bias=True, out_bias=True,
                names={"self_attn": "attention", "input_layernorm": "attention.output.LayerNorm",
                       "post_attention_layernorm": "output.LayerNorm", "mlp": ""},
                attn_names={"q_proj": "self.query", "k_proj": "self.key", "v_proj": "self.value",
                            "o_proj": "output.dense"},
                mlp_names={"up_proj": "intermediate.dense", "down_proj": "output.dense"}, rng=rng),
                [f"h{i}", "mask"], f"h{i + 1}")
        self.output = f"h{c.n_layers}"
        for name, p in self.parameters().items():
            if "LayerNorm" not in name and name.endswith("weight"):
                p[...] = rng.normal(0.0, 0.02, p.shape)

    def forward(self, ids, attention_mask=None, token_type_ids=None):
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids: expected shape (B, T), got {ids.shape}")
        if token_type_ids is None:
            token_type_ids = self.buffer("token_types", ids.shape, np.int64, zero=True)
        if attention_mask is None:
            attention_mask = self.buffer("ones", ids.shape, np.uint8)
            attention_mask.fill(1)
        elif np.shape(attention_mask) != ids.shape:
            raise ValueError(f"attention_mask: expected shape {ids.shape}, got {np.shape(attention_mask)}")
        return super().forward(ids, token_type_ids, np.ascontiguousarray(attention_mask))

    def backward(self, dy):
        """Accumulates every parameter gradient; the inputs are integers, so nothing is returned."""
        super().backward(dy)


def mean_pool(hidden, attention_mask):
    """Sentence embeddings: the mean of ``hidden (B, T, dim)`` over the positions where the mask is nonzero."""
    m = np.asarray(attention_mask, np.float32)[..., None]
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
