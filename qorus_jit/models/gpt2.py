"""GPT-2: token and learned position embeddings, pre-LayerNorm blocks (fused q/k/v, GELU-tanh MLP, biases),
final LayerNorm and a tied LM head, built from the layers through the graph.

:class:`GPT2Config` maps to the ``config.json`` of Hugging Face ``GPT2LMHeadModel``, and the parameter names
are that model's. Its ``Conv1D`` weights are stored ``(in, out)``: they are transposed to the ``nn.Linear``
layout ``(out, in)`` on load and back on save (:meth:`GPT2.from_hf_tensors`, :meth:`GPT2.to_hf_tensors`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qorus_jit.core.check import UNFILLED, check_rng
from qorus_jit.kernels.decode import ACT_GELU, ACT_GELU_TANH, FORM_ACT, FORM_BIAS, FORM_LAYER_NORM, FORM_POSITIONS
from qorus_jit.layers import Embedding, LayerNorm, Linear, TransformerBlock
from qorus_jit.layers.embedding import PositionEmbedding
from qorus_jit.layers.head import TiedLMHead
from qorus_jit.layers.lora import lora_layers
from qorus_jit.layers.quantized import quantized_layers
from qorus_jit.models.base import (
    HF_ACTIVATIONS,
    Architecture,
    Config,
    _check_choice,
    _hf_get,
    _hf_reject,
)
from qorus_jit.models.decoder import ONE, ONE_2D, OneCallDecoding

_ACTS = {"gelu_new": ACT_GELU_TANH, "gelu_pytorch_tanh": ACT_GELU_TANH, "gelu": ACT_GELU}  # the decoder's MLPs
_CONV1D = re.compile(r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")


@dataclass(frozen=True, kw_only=True)
class GPT2Config(Config):
    """GPT-2: learned positions, pre-LayerNorm blocks, a GELU MLP and (by default) tied embeddings.

    ``hidden_dim`` (HF ``n_inner``) defaults to ``4 * dim``. ``activation`` is the HF name, one of
    :data:`~qorus_jit.models.base.HF_ACTIVATIONS` (``gelu_new``, GPT-2's own, is the tanh approximation).
    """

    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    max_seq_len: int = 1024
    norm_eps: float = 1e-5
    activation: str = "gelu_new"
    hidden_dim: int | None = None
    tie_embeddings: bool = True

    _what: ClassVar[str] = "GPT-2"
    hf_architecture: ClassVar[str] = "GPT2LMHeadModel"
    hf_model_type: ClassVar[str] = "gpt2"
    hf_names: ClassVar[dict[str, str]] = {
        "dim": "n_embd", "n_layers": "n_layer", "n_heads": "n_head", "vocab_size": "vocab_size",
        "max_seq_len": "n_positions", "norm_eps": "layer_norm_epsilon", "activation": "activation_function",
        "hidden_dim": "n_inner", "tie_embeddings": "tie_word_embeddings"}

    def __post_init__(self):
        super().__post_init__()
        if self.hidden_dim is None and isinstance(self.dim, int):
            object.__setattr__(self, "hidden_dim", 4 * self.dim)
        self._check_fields(ints=("dim", "n_layers", "n_heads", "vocab_size", "max_seq_len", "hidden_dim"),
                           floats=("norm_eps",), bools=("tie_embeddings",))
        _check_choice("GPT2Config", "activation", self.activation, HF_ACTIVATIONS)
        if self.dim % self.n_heads:
            raise ValueError(f"GPT2Config.n_heads: dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``dim // n_heads``."""
        return self.dim // self.n_heads

    @classmethod
    def from_hf(cls, hf_config: dict) -> GPT2Config:
        """Build from the ``config.json`` dict of a ``GPT2LMHeadModel``."""
        w = cls._what
        _hf_get(hf_config, "n_embd", w)  # type check of hf_config and a clear error first
        _hf_reject(hf_config, w, "add_cross_attention", (False,))
        _hf_reject(hf_config, w, "scale_attn_weights", (True,))
        _hf_reject(hf_config, w, "scale_attn_by_inverse_layer_idx", (False,))
        n_positions = _hf_get(hf_config, "n_positions", w, None)
        if n_positions is None:  # the oldest configs give only n_ctx
            n_positions = _hf_get(hf_config, "n_ctx", w, 1024)
        return cls._from_hf_fields(hf_config, max_seq_len=n_positions)

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers loads as a ``GPT2LMHeadModel`` of this shape."""
        # GPT-2's default bos/eos id 50256 lies outside a smaller vocabulary (transformers warns).
        eos = 50256 if self.vocab_size > 50256 else None
        return {
            **self._hf_header(),
            "n_embd": self.dim,
            "n_layer": self.n_layers,
            "n_head": self.n_heads,
            "vocab_size": self.vocab_size,
            "n_positions": self.max_seq_len,
            "layer_norm_epsilon": self.norm_eps,
            "activation_function": self.activation,
            "n_inner": None if self.hidden_dim == 4 * self.dim else self.hidden_dim,
            "tie_word_embeddings": self.tie_embeddings,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "add_cross_attention": False,
            "bos_token_id": eos,
            "eos_token_id": eos,
        }


class GPT2(OneCallDecoding, Architecture):
    """``ids (B, T) -> logits (B, T, vocab_size)``; weights initialised N(0, 0.02) as Hugging Face does. One new
    token decodes in one kernel call (``models.decoder``) for float32 weights with no LoRA adapters, a GELU MLP
    and at least as many heads as threads; anything else node by node."""

    config_class = GPT2Config
    arch = "gpt2"
    hf_base_prefix = "transformer."
    hf_embedding = "transformer.wte.weight"
    hf_ignored = (r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",)  # causal masks
    hf_layers = r"transformer\.h\.(\d+)\."
    hf_sizes = {"vocab_size": ("transformer.wte.weight", 0), "dim": ("transformer.wte.weight", 1),
                "max_seq_len": ("transformer.wpe.weight", 0),
                "hidden_dim": ("transformer.h.0.mlp.c_fc.weight", 1)}  # Conv1D (in, out)

    def __init__(self, config: GPT2Config, rng=None):
        super().__init__(inputs=["ids"], output="logits")
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config: expected a GPT2Config, got {type(config).__name__}")
        rng = check_rng("rng", rng)
        self._check_fits(config)
        self.config = c = config
        own = rng if rng is UNFILLED else None  # the embeddings' own draws are overwritten below
        wte = self.add("transformer.wte", Embedding(c.vocab_size, c.dim, rng=own), "ids", "tok")
        self.add("transformer.wpe", PositionEmbedding(c.max_seq_len, c.dim, rng=own), "tok", "h0")
        self._blocks = []
        for i in range(c.n_layers):
            self._blocks.append(self.add(f"transformer.h.{i}", TransformerBlock(
                c.dim, c.n_heads, c.hidden_dim, norm="layer", norm_eps=c.norm_eps, prenorm=True,
                mlp=HF_ACTIVATIONS[c.activation], mlp_bias=True, causal=True, rope=None, max_seq_len=c.max_seq_len,
                attn_bias=True, out_bias=True, fused_qkv=True,
                names={"input_layernorm": "ln_1", "self_attn": "attn", "post_attention_layernorm": "ln_2"},
                attn_names={"qkv_proj": "c_attn", "o_proj": "c_proj"},
                mlp_names={"up_proj": "c_fc", "down_proj": "c_proj"}, rng=rng), f"h{i}", f"h{i + 1}"))
        self.add("transformer.ln_f", LayerNorm(c.dim, c.norm_eps), f"h{c.n_layers}", "hn")
        head = TiedLMHead(wte) if c.tie_embeddings else Linear(c.dim, c.vocab_size, bias=False, rng=rng)
        self.add("lm_head", head, "hn", "logits")
        for name, p in self.parameters().items():
            if rng is not UNFILLED and ".ln_" not in name and name.endswith("weight"):
                p[...] = rng.normal(0.0, 0.02, p.shape)

    # -- decoding (models.decoder's one-call decoder)

    _by_kv_head_only = True  # its form runs as the whole token in one region only

    def _find_plan(self) -> str | None:
        if quantized_layers(self) or lora_layers(self) or self.config.activation not in _ACTS:
            return None
        return "fp32"

    def _decode_attentions(self) -> list:
        return [blk.self_attn for blk in self._blocks]

    def _decode_blocks(self, caches, weight):
        c, p = self.config, self.parameters()
        hd = kd = c.dim  # q, k and v rows of c_attn, one after another
        form = np.zeros(5, np.int64)
        form[[FORM_LAYER_NORM, FORM_BIAS, FORM_POSITIONS]] = 1
        form[FORM_ACT] = _ACTS[c.activation]
        blocks = []
        for i, cache in enumerate(caches):
            x = f"transformer.h.{i}."
            w, bias = p[x + "attn.c_attn.weight"], p[x + "attn.c_attn.bias"]
            wo, up, down = (weight(x + n)[0] for n in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
            no = ONE_2D  # the scales of float32 W; the gate and the RoPE tables it has not
            blocks.append((p[x + "ln_1.weight"], w[:hd], no, w[hd:hd + kd], no, w[hd + kd:], no, wo, no,
                           p[x + "ln_2.weight"], no, no, up, no, down, no, cache.k[0], cache.v[0], no, no,
                           p[x + "ln_1.bias"], p[x + "ln_2.bias"], bias[:hd], bias[hd:hd + kd], bias[hd + kd:],
                           p[x + "attn.c_proj.bias"], ONE, p[x + "mlp.c_fc.bias"], p[x + "mlp.c_proj.bias"]))
        return (blocks, p["transformer.wte.weight"], p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], form,
                p["transformer.wpe.weight"])

    @staticmethod
    def hf_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
        """``Conv1D`` weights ``(in, out)``; ``lm_head.weight`` only when the embeddings are untied."""
        c = config
        d, f = c.dim, c.hidden_dim
        s: dict[str, tuple[int, ...]] = {
            "transformer.wte.weight": (c.vocab_size, d),
            "transformer.wpe.weight": (c.max_seq_len, d),
        }
        for i in range(c.n_layers):
            p = f"transformer.h.{i}."
            for name, inp, out in (("ln_1", None, d), ("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d),
                                   ("ln_2", None, d), ("mlp.c_fc", d, f), ("mlp.c_proj", f, d)):
                s[p + name + ".weight"] = (out,) if inp is None else (inp, out)
                s[p + name + ".bias"] = (out,)
        s["transformer.ln_f.weight"] = (d,)
        s["transformer.ln_f.bias"] = (d,)
        if not c.tie_embeddings:
            s["lm_head.weight"] = (c.vocab_size, d)
        return s

    @classmethod
    def from_hf_tensors(cls, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Hugging Face GPT-2 tensors to ours: ``Conv1D`` weights transposed to ``(out, in)``."""
        return {k: np.ascontiguousarray(v.T) if _CONV1D.fullmatch(k) else v for k, v in tensors.items()}

    @classmethod
    def to_hf_tensors(cls, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ours to Hugging Face GPT-2 tensors (the inverse of :meth:`from_hf_tensors`)."""
        return cls.from_hf_tensors(params)
