"""Llama: token embedding, pre-norm transformer blocks (RMSNorm, RoPE, grouped-query attention, SwiGLU),
final RMSNorm and LM head, built from the layers through the graph.

This module is the whole architecture: :class:`LlamaConfig` (``config.json`` of ``LlamaForCausalLM``), the
model with the Hugging Face tensor names and shapes, its fast single-token decoding (llama2.c-like: the
weights gathered as views once, the run state allocated once per KV cache, one kernel call a token), and
llama2.c checkpoints in and out (:func:`load_llama2c`, :func:`save_llama2c`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qorus_jit.core.check import UNFILLED, check_rng
from qorus_jit.formats import llama2c
from qorus_jit.kernels.decode import FORM_ROPE
from qorus_jit.layers import Embedding, Linear, RMSNorm, TransformerBlock
from qorus_jit.layers.base import named_layers
from qorus_jit.layers.head import TiedLMHead
from qorus_jit.layers.lora import lora_layers
from qorus_jit.layers.quantized import QuantizedLinear, quantized_layers
from qorus_jit.models.base import Architecture, Config, _brief, _hf_get
from qorus_jit.models.decoder import ONE, ONE_2D, OneCallDecoding

_INT32_MAX = 2**31 - 1


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True)
class LlamaConfig(Config):
    """A Llama-style decoder: RMSNorm, rotary positions, grouped-query attention and a SwiGLU MLP.

    ``n_kv_heads`` defaults to ``n_heads`` (plain multi-head attention); ``head_dim`` is ``dim // n_heads``.
    """

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    hidden_dim: int
    vocab_size: int
    max_seq_len: int = 2048
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    _what: ClassVar[str] = "Llama"
    hf_architecture: ClassVar[str] = "LlamaForCausalLM"
    hf_model_type: ClassVar[str] = "llama"
    hf_names: ClassVar[dict[str, str]] = {
        "dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads", "hidden_dim": "intermediate_size", "vocab_size": "vocab_size",
        "max_seq_len": "max_position_embeddings", "norm_eps": "rms_norm_eps", "rope_theta": "rope_theta",
        "tie_embeddings": "tie_word_embeddings", "attention_bias": "attention_bias", "mlp_bias": "mlp_bias"}

    def __post_init__(self):
        super().__post_init__()
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        self._check_fields(ints=("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "vocab_size",
                                 "max_seq_len"),
                           floats=("norm_eps", "rope_theta"),
                           bools=("tie_embeddings", "attention_bias", "mlp_bias"))
        if self.dim % self.n_heads:
            raise ValueError(f"LlamaConfig.n_heads: dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"LlamaConfig.n_kv_heads: n_heads ({self.n_heads}) must be divisible by "
                             f"n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.n_heads: head_dim = dim // n_heads = {self.head_dim} must be even "
                             "for rotary embeddings")

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``dim // n_heads``."""
        return self.dim // self.n_heads

    @classmethod
    def from_hf(cls, hf_config: dict) -> LlamaConfig:
        """Build from the ``config.json`` dict of a ``LlamaForCausalLM`` (transformers 4.45+ or 5.x)."""
        w = cls._what
        act = _hf_get(hf_config, "hidden_act", w, "silu")
        if act != "silu":
            raise ValueError(f"Llama config.json: hidden_act={_brief(act)} is not supported (expected 'silu')")
        dim = _hf_get(hf_config, "hidden_size", w)
        n_heads = _hf_get(hf_config, "num_attention_heads", w)
        head_dim = hf_config.get("head_dim")
        if head_dim is not None and _is_int(dim) and _is_int(n_heads) and n_heads > 0 and head_dim != dim // n_heads:
            raise ValueError(f"Llama config.json: head_dim={_brief(head_dim)} differs from hidden_size // "
                             f"num_attention_heads = {dim // n_heads}; not supported")
        return cls._from_hf_fields(hf_config, rope_theta=_rope_theta(hf_config))

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers loads as a ``LlamaForCausalLM`` of this shape.

        The rope theta is written in both forms: top-level ``rope_theta`` (transformers 4.x) and
        ``rope_parameters`` (5.x).
        """
        return {
            **self._hf_header(),
            "hidden_size": self.dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.hidden_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_seq_len,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "hidden_act": "silu",
        }


def _rope_theta(hf: dict) -> float:
    """The rope theta of a Llama config.json, from ``rope_parameters`` (5.x) or ``rope_theta`` (4.x).

    Any rope scaling other than ``default`` (linear, dynamic, yarn, llama3, ...) raises a ValueError.
    """
    params = hf.get("rope_parameters")
    scaling = hf.get("rope_scaling")
    for key, d in (("rope_parameters", params), ("rope_scaling", scaling)):
        if d is None:
            continue
        if not isinstance(d, dict):
            raise ValueError(f"Llama config.json: {key} must be a dict, got {_brief(d)}")
        kind = d.get("rope_type", d.get("type", "default"))
        if kind != "default":
            raise ValueError(f"Llama config.json: {key} rope_type={_brief(kind)} is not supported; only "
                             "'default' rotary embeddings (no scaling) are")
        factor = d.get("partial_rotary_factor", 1.0)
        if factor != 1.0:
            raise ValueError(f"Llama config.json: {key} partial_rotary_factor={_brief(factor)} is not supported")
    if params is not None and params.get("rope_theta") is not None:
        return params["rope_theta"]
    if scaling is not None and scaling.get("rope_theta") is not None:
        return scaling["rope_theta"]
    return _hf_get(hf, "rope_theta", "Llama", 10000.0)


class Llama(OneCallDecoding, Architecture):
    """``ids (B, T) -> logits (B, T, vocab_size)``; weights initialised N(0, 0.02) as Hugging Face does.
    Parameter names are those of Hugging Face ``LlamaForCausalLM``."""

    config_class = LlamaConfig
    arch = "llama"
    hf_base_prefix = "model."
    hf_embedding = "model.embed_tokens.weight"
    hf_ignored = (r"model\.rotary_emb\.(original_)?inv_freq", r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
    hf_layers = r"model\.layers\.(\d+)\."
    hf_sizes = {"vocab_size": ("model.embed_tokens.weight", 0), "dim": ("model.embed_tokens.weight", 1),
                "hidden_dim": ("model.layers.0.mlp.gate_proj.weight", 0),
                "n_kv_heads": ("model.layers.0.self_attn.k_proj.weight", 0)}  # n_kv_heads * head_dim rows

    def __init__(self, config: LlamaConfig, rng=None):
        super().__init__(inputs=["ids"], output="logits")
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config: expected a LlamaConfig, got {type(config).__name__}")
        rng = check_rng("rng", rng)
        self._check_fits(config)
        self.config = c = config
        own = rng if rng is UNFILLED else None  # the layers' own draws are overwritten below; unfilled stays so
        emb = self.add("model.embed_tokens", Embedding(c.vocab_size, c.dim, rng=own), "ids", "h0")
        self._blocks = [self.add(f"model.layers.{i}", TransformerBlock(
            c.dim, c.n_heads, c.hidden_dim, c.n_kv_heads, norm="rms", norm_eps=c.norm_eps, prenorm=True,
            mlp="swiglu", mlp_bias=c.mlp_bias, causal=True, rope="rotate_half", rope_theta=c.rope_theta,
            max_seq_len=c.max_seq_len, attn_bias=c.attention_bias, out_bias=c.attention_bias, rng=own), f"h{i}",
            f"h{i + 1}")
            for i in range(c.n_layers)]
        self.add("model.norm", RMSNorm(c.dim, c.norm_eps), f"h{c.n_layers}", "hn")
        head = TiedLMHead(emb) if c.tie_embeddings else Linear(c.dim, c.vocab_size, bias=False, rng=own)
        self.add("lm_head", head, "hn", "logits")
        for name, p in self.parameters().items():
            if rng is not UNFILLED and not name.endswith("norm.weight") and "layernorm" not in name:
                p[...] = rng.normal(0.0, 0.02, p.shape)

    # -- Hugging Face names and shapes

    @staticmethod
    def hf_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
        """``nn.Linear`` weights ``(out, in)``; ``lm_head.weight`` only when the embeddings are untied."""
        c = config
        d, f, hd = c.dim, c.hidden_dim, c.head_dim
        q, kv = c.n_heads * hd, c.n_kv_heads * hd
        s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, d)}
        for i in range(c.n_layers):
            p = f"model.layers.{i}."
            s[p + "input_layernorm.weight"] = (d,)
            for name, out, inp in (("q_proj", q, d), ("k_proj", kv, d), ("v_proj", kv, d), ("o_proj", d, q)):
                s[p + f"self_attn.{name}.weight"] = (out, inp)
                if c.attention_bias:
                    s[p + f"self_attn.{name}.bias"] = (out,)
            s[p + "post_attention_layernorm.weight"] = (d,)
            for name, out, inp in (("gate_proj", f, d), ("up_proj", f, d), ("down_proj", d, f)):
                s[p + f"mlp.{name}.weight"] = (out, inp)
                if c.mlp_bias:
                    s[p + f"mlp.{name}.bias"] = (out,)
        s["model.norm.weight"] = (d,)
        if not c.tie_embeddings:
            s["lm_head.weight"] = (c.vocab_size, d)
        return s

    # -- decoding (models.decoder's one-call decoder)

    def _find_plan(self) -> str | None:
        """float32 weights, or every linear layer and the head holding bf16 or q8_0 weights of one format, when
        the blocks have no biases and no LoRA adapters."""
        if self.config.attention_bias or self.config.mlp_bias or lora_layers(self):
            return None
        quantized = quantized_layers(self)
        if not quantized:
            return "fp32"
        formats = {layer.weight_format for layer in quantized.values()}
        linear = [d for _, _, d, c in named_layers(self) if isinstance(c, (Linear, TiedLMHead, QuantizedLinear))]
        if len(formats) == 1 and len(quantized) == len(linear):
            return formats.pop()
        return None

    def _decode_attentions(self) -> list:
        return [blk.self_attn for blk in self._blocks]

    def _decode_blocks(self, caches, weight):
        c, p = self.config, self.parameters()
        # RoPE tables for every position the caches hold (shared by the layers, grown here if need be)
        tables = [blk.self_attn.rope_for(min(caches[0].max_seq_len, c.max_seq_len)) for blk in self._blocks]
        blocks = [(p[x + "input_layernorm.weight"], *(w for n in _ATTN for w in weight(x + n)),
                   p[x + "post_attention_layernorm.weight"], *(w for n in _MLP for w in weight(x + n)),
                   cache.k[0], cache.v[0], cos, sin, *(ONE,) * 9)
                  for x, cache, (cos, sin, _) in zip((f"model.layers.{i}." for i in range(c.n_layers)), caches,
                                                     tables, strict=True)]
        embed = p.get("model.embed_tokens.weight")  # None: the table is the quantized head's (share_tied_table)
        return blocks, embed, p["model.norm.weight"], ONE, _FORM, ONE_2D


_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_FORM = np.zeros(5, np.int64)  # RMSNorm, SwiGLU, RoPE, no biases, no learned positions
_FORM[FORM_ROPE] = 1


# ------------------------------------------------------------------------------------------ llama2.c files


def load_llama2c(path) -> Llama:
    """Read a llama2.c checkpoint (legacy version 0 or version 1, told apart by the magic) into a
    :class:`Llama` with ``norm_eps=1e-5``, ``rope_theta=10000`` and the classifier tied or not as the file
    says. The rows of ``wq``/``wk`` are permuted from llama2.c's interleaved RoPE pairs to the model's
    rotate-half pairs, so the logits are those of llama2.c.

    Raises FileNotFoundError / IsADirectoryError for a missing file or a folder, and a ValueError naming the
    file for a short file, nonsense header values, an unknown version or a size that does not match the
    header (expected and actual bytes).
    """
    h, t = llama2c.read_llama2c(path)
    c = LlamaConfig(dim=h.dim, n_layers=h.n_layers, n_heads=h.n_heads, n_kv_heads=h.n_kv_heads,
                    hidden_dim=h.hidden_dim, vocab_size=h.vocab_size, max_seq_len=h.seq_len,
                    norm_eps=llama2c.NORM_EPS, rope_theta=llama2c.ROPE_THETA, tie_embeddings=h.shared)
    p = {"model.embed_tokens.weight": t["tok_embeddings"]}
    for i in range(c.n_layers):
        pre = f"model.layers.{i}."
        p[pre + "input_layernorm.weight"] = t["attention_norm"][i]
        p[pre + "self_attn.q_proj.weight"] = llama2c.interleaved_to_half(t["wq"][i], c.n_heads)
        p[pre + "self_attn.k_proj.weight"] = llama2c.interleaved_to_half(t["wk"][i], c.n_kv_heads)
        p[pre + "self_attn.v_proj.weight"] = t["wv"][i]
        p[pre + "self_attn.o_proj.weight"] = t["wo"][i]
        p[pre + "post_attention_layernorm.weight"] = t["ffn_norm"][i]
        p[pre + "mlp.gate_proj.weight"] = t["w1"][i]
        p[pre + "mlp.down_proj.weight"] = t["w2"][i]
        p[pre + "mlp.up_proj.weight"] = t["w3"][i]
    p["model.norm.weight"] = t["norm"]
    if not c.tie_embeddings:
        p["lm_head.weight"] = t["output"]
    model = Llama(c, rng=UNFILLED)
    model.load_parameters(p)
    return model


def save_llama2c(model, path, version: int = 0) -> Path:
    """Write a :class:`Llama` as a llama2.c checkpoint, atomically; returns the path.

    ``version`` 0 is the legacy format that llama2.c's ``run.c`` reads (with the RoPE tables, a negative
    vocab size for a separate classifier); 1 the 256-byte-header format of ``export.py``. The q/k rows are
    permuted back to llama2.c's interleaved RoPE pairs. A model the format cannot hold raises: not a Llama
    (TypeError), biases, ``rope_theta != 10000`` or ``norm_eps != 1e-5`` (ValueError naming the field).
    """
    if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)) or version not in (0, 1):
        raise ValueError(f"version: expected 0 (legacy) or 1, got {version!r}")
    version = int(version)
    c = _check_llama2c_saveable(model)
    h = llama2c.Llama2cHeader(version=version, dim=c.dim, hidden_dim=c.hidden_dim, n_layers=c.n_layers,
                              n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, vocab_size=c.vocab_size,
                              seq_len=c.max_seq_len, shared=c.tie_embeddings)
    p = model.parameters()
    layers = [f"model.layers.{i}." for i in range(c.n_layers)]
    tensors = {
        "tok_embeddings": p["model.embed_tokens.weight"],
        "attention_norm": [p[x + "input_layernorm.weight"] for x in layers],
        "wq": [llama2c.half_to_interleaved(p[x + "self_attn.q_proj.weight"], c.n_heads) for x in layers],
        "wk": [llama2c.half_to_interleaved(p[x + "self_attn.k_proj.weight"], c.n_kv_heads) for x in layers],
        "wv": [p[x + "self_attn.v_proj.weight"] for x in layers],
        "wo": [p[x + "self_attn.o_proj.weight"] for x in layers],
        "ffn_norm": [p[x + "post_attention_layernorm.weight"] for x in layers],
        "w1": [p[x + "mlp.gate_proj.weight"] for x in layers],
        "w2": [p[x + "mlp.down_proj.weight"] for x in layers],
        "w3": [p[x + "mlp.up_proj.weight"] for x in layers],
        "norm": p["model.norm.weight"],
    }
    if not c.tie_embeddings:
        tensors["output"] = p["lm_head.weight"]
    return llama2c.write_llama2c(path, h, tensors)


def _check_llama2c_saveable(model) -> LlamaConfig:
    if not isinstance(model, Llama):
        raise TypeError(f"model: llama2.c files hold Llama-2 architectures only; expected a qorus_jit.models.Llama, "
                        f"got {type(model).__name__}")
    c = model.config
    for field in ("attention_bias", "mlp_bias"):
        if getattr(c, field):
            raise ValueError(f"LlamaConfig.{field}: llama2.c files hold no biases, got True")
    if float(c.rope_theta) != llama2c.ROPE_THETA:
        raise ValueError(f"LlamaConfig.rope_theta: llama2.c uses {llama2c.ROPE_THETA}, got {c.rope_theta!r}")
    if float(c.norm_eps) != llama2c.NORM_EPS:
        raise ValueError(f"LlamaConfig.norm_eps: llama2.c uses {llama2c.NORM_EPS}, got {c.norm_eps!r}")
    for field in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"):
        if getattr(c, field) > _INT32_MAX:
            raise ValueError(f"LlamaConfig.{field}: llama2.c stores int32, got {getattr(c, field)}")
    return c
