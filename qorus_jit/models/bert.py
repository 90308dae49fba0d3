"""BERT-style encoder: word + position + token-type embeddings, post-norm blocks (bidirectional attention with
a padding mask, GELU MLP, biases), returning hidden states; built from the layers through the graph.

:class:`BertConfig` maps to the ``config.json`` of Hugging Face ``BertModel``, and the parameter names are
that model's. The pooler is not built: its tensors are skipped on load and absent on save.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qorus_jit.core.check import check_mask, check_rng
from qorus_jit.layers import Add, Embedding, Graph, LayerNorm, TransformerBlock
from qorus_jit.layers.embedding import PositionEmbedding
from qorus_jit.models.base import (
    HF_ACTIVATIONS,
    Architecture,
    Config,
    _check_choice,
    _check_int,
    _hf_get,
    _hf_reject,
    as_array,
    check_ids,
)


@dataclass(frozen=True, kw_only=True)
class BertConfig(Config):
    """A BERT encoder: word, position and token-type embeddings, post-LayerNorm blocks, a pooler.

    ``activation`` is the HF name, one of :data:`~qorus_jit.models.base.HF_ACTIVATIONS` (BERT's own
    ``gelu`` is exact erf).
    """

    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int
    vocab_size: int
    max_seq_len: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    activation: str = "gelu"
    pad_token_id: int = 0

    _what: ClassVar[str] = "BERT"
    hf_architecture: ClassVar[str] = "BertModel"
    hf_model_type: ClassVar[str] = "bert"
    hf_names: ClassVar[dict[str, str]] = {
        "dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
        "hidden_dim": "intermediate_size", "vocab_size": "vocab_size", "max_seq_len": "max_position_embeddings",
        "type_vocab_size": "type_vocab_size", "norm_eps": "layer_norm_eps", "activation": "hidden_act",
        "pad_token_id": "pad_token_id"}

    def __post_init__(self):
        super().__post_init__()
        self._check_fields(ints=("dim", "n_layers", "n_heads", "hidden_dim", "vocab_size", "max_seq_len",
                                 "type_vocab_size"),
                           floats=("norm_eps",))
        _check_int("BertConfig", "pad_token_id", self.pad_token_id, minimum=0)
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id: expected < vocab_size ({self.vocab_size}), "
                             f"got {self.pad_token_id}")
        _check_choice("BertConfig", "activation", self.activation, HF_ACTIVATIONS)
        if self.dim % self.n_heads:
            raise ValueError(f"BertConfig.n_heads: dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``dim // n_heads``."""
        return self.dim // self.n_heads

    @classmethod
    def from_hf(cls, hf_config: dict) -> BertConfig:
        """Build from the ``config.json`` dict of a ``BertModel``."""
        w = cls._what
        _hf_get(hf_config, "hidden_size", w)
        _hf_reject(hf_config, w, "position_embedding_type", ("absolute",))
        _hf_reject(hf_config, w, "is_decoder", (False,))
        _hf_reject(hf_config, w, "add_cross_attention", (False,))
        return cls._from_hf_fields(hf_config)

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers loads as a ``BertModel`` of this shape."""
        return {
            **self._hf_header(),
            "hidden_size": self.dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "intermediate_size": self.hidden_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_seq_len,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.norm_eps,
            "hidden_act": self.activation,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
            "is_decoder": False,
            "add_cross_attention": False,
        }


class Bert(Architecture):
    """``forward(ids (B, T), attention_mask=None, token_type_ids=None) -> hidden (B, T, dim)``.

    ``attention_mask`` (B, T): nonzero for real tokens, 0 for padding (keys that are never attended).
    """

    config_class = BertConfig
    arch = "bert"
    hf_ignored = (r"embeddings\.(position_ids|token_type_ids)",)
    hf_layers = r"encoder\.layer\.(\d+)\."
    hf_sizes = {"vocab_size": ("embeddings.word_embeddings.weight", 0), "dim": ("embeddings.word_embeddings.weight", 1),
                "max_seq_len": ("embeddings.position_embeddings.weight", 0),
                "type_vocab_size": ("embeddings.token_type_embeddings.weight", 0),
                "hidden_dim": ("encoder.layer.0.intermediate.dense.weight", 0)}
    hf_optional = frozenset({"pooler.dense.weight", "pooler.dense.bias"})  # BertModel(add_pooling_layer=False)

    def __init__(self, config: BertConfig, rng=None):
        super().__init__(inputs=["ids", "token_type_ids", "mask"], output="hidden")
        if not isinstance(config, BertConfig):
            raise TypeError(f"config: expected a BertConfig, got {type(config).__name__}")
        rng = check_rng("rng", rng)
        self._check_fits(config)
        self.config = c = config
        self.add("embeddings.word_embeddings", Embedding(c.vocab_size, c.dim), "ids", "word")
        self.add("embeddings.token_type_embeddings", Embedding(c.type_vocab_size, c.dim), "token_type_ids", "type")
        self.add("embeddings.sum", Add(), ["word", "type"], "wt")
        self.add("embeddings.position_embeddings", PositionEmbedding(c.max_seq_len, c.dim), "wt", "emb")
        self.add("embeddings.LayerNorm", LayerNorm(c.dim, c.norm_eps), "emb", "h0")
        for i in range(c.n_layers):
            self.add(f"encoder.layer.{i}", TransformerBlock(
                c.dim, c.n_heads, c.hidden_dim, norm="layer", norm_eps=c.norm_eps, prenorm=False,
                mlp=HF_ACTIVATIONS[c.activation], mlp_bias=True, causal=False, rope=None, max_seq_len=c.max_seq_len,
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

    @staticmethod
    def hf_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
        """``nn.Linear`` weights ``(out, in)``, the pooler included (it is optional)."""
        c = config
        d, f = c.dim, c.hidden_dim
        s: dict[str, tuple[int, ...]] = {
            "embeddings.word_embeddings.weight": (c.vocab_size, d),
            "embeddings.position_embeddings.weight": (c.max_seq_len, d),
            "embeddings.token_type_embeddings.weight": (c.type_vocab_size, d),
            "embeddings.LayerNorm.weight": (d,),
            "embeddings.LayerNorm.bias": (d,),
        }
        for i in range(c.n_layers):
            p = f"encoder.layer.{i}."
            for name, out, inp in (("attention.self.query", d, d), ("attention.self.key", d, d),
                                   ("attention.self.value", d, d), ("attention.output.dense", d, d),
                                   ("attention.output.LayerNorm", d, None), ("intermediate.dense", f, d),
                                   ("output.dense", d, f), ("output.LayerNorm", d, None)):
                s[p + name + ".weight"] = (out,) if inp is None else (out, inp)
                s[p + name + ".bias"] = (out,)
        s["pooler.dense.weight"] = (d, d)
        s["pooler.dense.bias"] = (d,)
        return s

    def forward(self, ids, attention_mask=None, token_type_ids=None):
        """Each input is a numpy array or nested lists of ``(B, T)`` integers; ``attention_mask`` may be bool."""
        ids = self._check_ids(as_array(ids))
        if token_type_ids is None:
            token_type_ids = self.buffer("token_types", ids.shape, np.int64, zero=True)
        else:
            token_type_ids = check_ids("token_type_ids", as_array(token_type_ids), self.config.type_vocab_size,
                                       shape=ids.shape)
        if attention_mask is None:
            attention_mask = self.buffer("ones", ids.shape, np.uint8)
            attention_mask.fill(1)
        else:
            attention_mask = _check_attention_mask(attention_mask, ids.shape)
        return Graph.forward(self, ids, token_type_ids, attention_mask)


def _check_attention_mask(mask, shape) -> np.ndarray:
    """An ``attention_mask`` of ``shape`` (B, T): bool or integers >= 0 (nested lists too), nonzero for a token,
    0 for padding; returned as a C-contiguous uint8 array (the kernels' mask)."""
    mask = as_array(mask)
    if isinstance(mask, np.ndarray):
        if mask.shape != tuple(shape):
            raise ValueError(f"attention_mask: expected the shape {tuple(shape)}, got {mask.shape}")
        mask = np.ascontiguousarray(mask)
    keep = check_mask("attention_mask", mask, ("B", "T"))
    if mask.dtype.kind == "i" and (mask < 0).any():
        raise ValueError(f"attention_mask: expected 0 (padding) or a positive value (a token), got {mask.min()}")
    return keep


def mean_pool(hidden, attention_mask):
    """Sentence embeddings: the mean of ``hidden (B, T, dim)`` (a float numpy array) over the positions where
    ``attention_mask (B, T)`` (bool or integers >= 0, or nested lists of them) is nonzero; ``(B, dim)``."""
    if not isinstance(hidden, np.ndarray) or not np.issubdtype(hidden.dtype, np.floating):
        got = f"dtype {hidden.dtype}" if isinstance(hidden, np.ndarray) else type(hidden).__name__
        raise TypeError(f"hidden: expected a float numpy array of shape (B, T, dim), got {got}")
    if hidden.ndim != 3:
        raise ValueError(f"hidden: expected a 3-D array of shape (B, T, dim), got shape {hidden.shape}")
    m = _check_attention_mask(attention_mask, hidden.shape[:2]).astype(hidden.dtype)[..., None]
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
