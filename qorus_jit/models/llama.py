"""Llama: token embedding, pre-norm transformer blocks (RMSNorm, RoPE, grouped-query attention, SwiGLU),
final RMSNorm and LM head, built from the layers through the graph. Parameter names are those of
Hugging Face ``LlamaForCausalLM``."""

from __future__ import annotations

import numpy as np

from qorus_jit.core.check import INDEX_DTYPES
from qorus_jit.kernels.decode import _llama_decode
from qorus_jit.layers import DecodeState, Embedding, Graph, Linear, RMSNorm, TransformerBlock
from qorus_jit.layers.block import decode_split
from qorus_jit.layers.head import TiedLMHead
from qorus_jit.models.configs import LlamaConfig


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
        self._decode_call = None  # (first cache, arguments of the one-call decoding), see _fused_decode
        self._fused = None  # whether the structure allows it (found once)

    def forward_decode(self, ids, *, state: DecodeState, last_only: bool = False):
        """:meth:`Graph.forward_decode`. One new token of one sequence goes through the whole model in a
        single kernel call (``kernels.decode._llama_decode``) when every block decodes fused (see
        :meth:`TransformerBlock.forward_decode`) and the head has no bias; anything else runs node by node."""
        if (isinstance(ids, np.ndarray) and ids.shape == (1, 1) and ids.dtype.type in INDEX_DTYPES
                and 0 <= ids[0, 0] < self.config.vocab_size and state.batch == 1 and self._fusable()):
            return self._fused_decode(int(ids[0, 0]), state)
        return super().forward_decode(ids, state=state, last_only=last_only)

    def _fusable(self) -> bool:
        if self._fused is None:
            head = self._children["lm_head"]
            self._fused = (isinstance(head, TiedLMHead) or (isinstance(head, Linear) and head.bias is None)) and all(
                b._fused_decode_ok() for b in self._blocks())
        return self._fused

    def _blocks(self) -> list[TransformerBlock]:
        return [self._children[f"model.layers.{i}"] for i in range(self.config.n_layers)]

    def _fused_decode(self, tok: int, state: DecodeState) -> np.ndarray:
        blocks = self._blocks()
        caches = [state.cache_for(b.self_attn) for b in blocks]
        pos = state.pos
        for cache in caches:
            if cache.length != pos:
                raise ValueError(f"state: a cache holds {cache.length} positions, expected state.pos = {pos}")
        if pos >= caches[0].max_seq_len or pos >= self.config.max_seq_len:
            raise ValueError(f"ids: position {pos} is past the cache ({caches[0].max_seq_len}) or max_seq_len "
                             f"({self.config.max_seq_len})")
        call = self._decode_call
        if call is None or call[0] is not caches[0]:  # arrays of the call, gathered once per cache
            call = self._decode_call = (caches[0], *self._gather_decode_call(blocks, caches))
        _, out, weights, rest, final = call
        _llama_decode(*out, tok, *weights, pos, *rest, *decode_split(self.config.n_kv_heads), *final)
        for cache in caches:
            cache.length = pos + 1
        return out[0].reshape(1, 1, -1)

    def _gather_decode_call(self, blocks, caches):
        """The arguments of ``_llama_decode`` but the token, position and thread split: per-block arrays
        as tuples (from each block's fused-decoding arguments), scratch shared (the first block's)."""
        per_block = [b._gather_decode_args(c)[1:] for b, c in zip(blocks, caches, strict=True)]
        before = [bef for bef, _ in per_block]
        after = [aft for _, aft in per_block]
        norm, head = self._children["model.norm"], self._children["lm_head"]
        head_w = head.embedding.weight if isinstance(head, TiedLMHead) else head.weight
        embed = self._children["model.embed_tokens"].weight
        out = (self.buffer("decode_logits", (head_w.shape[0],)), self.buffer("decode_x", (self.config.dim,)))
        weights = (embed, *(tuple(b[j] for b in before) for j in range(len(before[0]))))
        rest = (tuple(a[0] for a in after), tuple(a[1] for a in after), np.array([a[2] for a in after], np.float32),
                *after[0][3:])
        return out, weights, rest, (norm.weight, np.float32(norm.eps), head_w)
