"""Architecture configs of the model library, with their mapping to Hugging Face ``config.json``.

Each config is a frozen, keyword-only dataclass that validates itself on construction and raises a
``ValueError`` naming the field. ``to_dict``/``from_dict`` round-trip the fields; ``from_hf``/``to_hf``
map to and from the ``config.json`` of the matching ``transformers`` architecture:

- :class:`LlamaConfig`: ``LlamaForCausalLM`` (``model_type`` ``llama``)
- :class:`GPT2Config`: ``GPT2LMHeadModel`` (``gpt2``)
- :class:`BertConfig`: ``BertModel`` (``bert``)

``from_hf`` rejects settings that would change the computation in a way the configs cannot express
(rope scaling, cross-attention, a Llama ``head_dim`` other than ``dim // n_heads``, ...), so a config
that parses describes the checkpoint exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

#: Activations of GPT-2's MLP by Hugging Face name: ``gelu_new`` and ``gelu_pytorch_tanh`` are the tanh
#: approximation, ``gelu`` is exact (erf).
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu")

#: Activations of BERT's intermediate layer by Hugging Face name.
BERT_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


def _check_int(cls_name: str, name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{cls_name}.{name}: expected an int >= {minimum}, got {value!r}")


def _check_float(cls_name: str, name: str, value) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{cls_name}.{name}: expected a finite float > 0, got {value!r}")


def _check_bool(cls_name: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{cls_name}.{name}: expected a bool, got {value!r}")


def _check_choice(cls_name: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{cls_name}.{name}: expected one of {', '.join(choices)}, got {value!r}")


def _hf_get(hf: dict, key: str, what: str, default=dataclasses.MISSING):
    """``hf[key]``, or ``default``; a missing key without default raises a ValueError naming it."""
    if not isinstance(hf, dict):
        raise ValueError(f"{what} config: expected a dict (the parsed config.json), got {type(hf).__name__}")
    if key in hf and hf[key] is not None:
        return hf[key]
    if default is dataclasses.MISSING:
        raise ValueError(f"{what} config.json: missing required key {key!r}")
    return default


def _hf_reject(hf: dict, what: str, key: str, allowed) -> None:
    """Raise if ``hf[key]`` is present and not in ``allowed`` (a setting these configs cannot express)."""
    if key in hf and hf[key] not in allowed:
        raise ValueError(f"{what} config.json: {key}={hf[key]!r} is not supported (expected {allowed[0]!r})")


class _Config:
    """Shared ``to_dict``/``from_dict`` of the config dataclasses."""

    _what: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-serializable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build from a dict of fields, as made by :meth:`to_dict`; unknown keys raise a ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__}.from_dict: expected a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def _check_fields(self, ints=(), floats=(), bools=()) -> None:
        name = type(self).__name__
        for f in ints:
            _check_int(name, f, getattr(self, f))
        for f in floats:
            _check_float(name, f, getattr(self, f))
        for f in bools:
            _check_bool(name, f, getattr(self, f))


@dataclass(frozen=True, kw_only=True)
class LlamaConfig(_Config):
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

    def __post_init__(self):
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
        w = "Llama"
        act = _hf_get(hf_config, "hidden_act", w, "silu")
        if act != "silu":
            raise ValueError(f"Llama config.json: hidden_act={act!r} is not supported (expected 'silu')")
        dim = _hf_get(hf_config, "hidden_size", w)
        n_heads = _hf_get(hf_config, "num_attention_heads", w)
        head_dim = hf_config.get("head_dim")
        if head_dim is not None and isinstance(dim, int) and isinstance(n_heads, int) and n_heads > 0 \
                and head_dim != dim // n_heads:
            raise ValueError(f"Llama config.json: head_dim={head_dim!r} differs from hidden_size // "
                             f"num_attention_heads = {dim // n_heads}; not supported")
        return cls(
            dim=dim,
            n_layers=_hf_get(hf_config, "num_hidden_layers", w),
            n_heads=n_heads,
            n_kv_heads=_hf_get(hf_config, "num_key_value_heads", w, n_heads),
            hidden_dim=_hf_get(hf_config, "intermediate_size", w),
            vocab_size=_hf_get(hf_config, "vocab_size", w),
            max_seq_len=_hf_get(hf_config, "max_position_embeddings", w, 2048),
            norm_eps=_hf_get(hf_config, "rms_norm_eps", w, 1e-6),
            rope_theta=_llama_rope_theta(hf_config),
            tie_embeddings=_hf_get(hf_config, "tie_word_embeddings", w, False),
            attention_bias=_hf_get(hf_config, "attention_bias", w, False),
            mlp_bias=_hf_get(hf_config, "mlp_bias", w, False),
        )

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers loads as a ``LlamaForCausalLM`` of this shape.

        The rope theta is written in both forms: top-level ``rope_theta`` (transformers 4.x) and
        ``rope_parameters`` (5.x).
        """
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
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


def _llama_rope_theta(hf: dict) -> float:
    """The rope theta of a Llama config.json, from ``rope_parameters`` (5.x) or ``rope_theta`` (4.x).

    Any rope scaling other than ``default`` (linear, dynamic, yarn, llama3, ...) raises a ValueError.
    """
    params = hf.get("rope_parameters")
    scaling = hf.get("rope_scaling")
    for key, d in (("rope_parameters", params), ("rope_scaling", scaling)):
        if d is None:
            continue
        if not isinstance(d, dict):
            raise ValueError(f"Llama config.json: {key} must be a dict, got {d!r}")
        kind = d.get("rope_type", d.get("type", "default"))
        if kind != "default":
            raise ValueError(f"Llama config.json: {key} rope_type={kind!r} is not supported; only 'default' "
                             "rotary embeddings (no scaling) are")
        factor = d.get("partial_rotary_factor", 1.0)
        if factor != 1.0:
            raise ValueError(f"Llama config.json: {key} partial_rotary_factor={factor!r} is not supported")
    if params is not None and params.get("rope_theta") is not None:
        return params["rope_theta"]
    if scaling is not None and scaling.get("rope_theta") is not None:
        return scaling["rope_theta"]
    return _hf_get(hf, "rope_theta", "Llama", 10000.0)


@dataclass(frozen=True, kw_only=True)
class GPT2Config(_Config):
    """GPT-2: learned positions, pre-LayerNorm blocks, a GELU MLP and (by default) tied embeddings.

    ``hidden_dim`` (HF ``n_inner``) defaults to ``4 * dim``. ``activation`` is the HF name, one of
    :data:`GPT2_ACTIVATIONS` (``gelu_new``, GPT-2's own, is the tanh approximation).
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

    def __post_init__(self):
        if self.hidden_dim is None and isinstance(self.dim, int):
            object.__setattr__(self, "hidden_dim", 4 * self.dim)
        self._check_fields(ints=("dim", "n_layers", "n_heads", "vocab_size", "max_seq_len", "hidden_dim"),
                           floats=("norm_eps",), bools=("tie_embeddings",))
        _check_choice("GPT2Config", "activation", self.activation, GPT2_ACTIVATIONS)
        if self.dim % self.n_heads:
            raise ValueError(f"GPT2Config.n_heads: dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``dim // n_heads``."""
        return self.dim // self.n_heads

    @classmethod
    def from_hf(cls, hf_config: dict) -> GPT2Config:
        """Build from the ``config.json`` dict of a ``GPT2LMHeadModel``."""
        w = "GPT-2"
        _hf_get(hf_config, "n_embd", w)  # type check of hf_config and a clear error first
        _hf_reject(hf_config, w, "add_cross_attention", (False,))
        _hf_reject(hf_config, w, "scale_attn_weights", (True,))
        _hf_reject(hf_config, w, "scale_attn_by_inverse_layer_idx", (False,))
        n_positions = _hf_get(hf_config, "n_positions", w, None)
        if n_positions is None:
            n_positions = _hf_get(hf_config, "n_ctx", w, 1024)
        return cls(
            dim=_hf_get(hf_config, "n_embd", w),
            n_layers=_hf_get(hf_config, "n_layer", w),
            n_heads=_hf_get(hf_config, "n_head", w),
            vocab_size=_hf_get(hf_config, "vocab_size", w),
            max_seq_len=n_positions,
            norm_eps=_hf_get(hf_config, "layer_norm_epsilon", w, 1e-5),
            activation=_hf_get(hf_config, "activation_function", w, "gelu_new"),
            hidden_dim=_hf_get(hf_config, "n_inner", w, None),
            tie_embeddings=_hf_get(hf_config, "tie_word_embeddings", w, True),
        )

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers loads as a ``GPT2LMHeadModel`` of this shape."""
        # GPT-2's default bos/eos id 50256 lies outside a smaller vocabulary (transformers warns).
        eos = 50256 if self.vocab_size > 50256 else None
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
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


@dataclass(frozen=True, kw_only=True)
class BertConfig(_Config):
    """A BERT encoder: word, position and token-type embeddings, post-LayerNorm blocks, a pooler.

    ``activation`` is the HF name, one of :data:`BERT_ACTIVATIONS` (BERT's own ``gelu`` is exact erf).
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

    def __post_init__(self):
        self._check_fields(ints=("dim", "n_layers", "n_heads", "hidden_dim", "vocab_size", "max_seq_len",
                                 "type_vocab_size"),
                           floats=("norm_eps",))
        _check_int("BertConfig", "pad_token_id", self.pad_token_id, minimum=0)
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id: expected < vocab_size ({self.vocab_size}), "
                             f"got {self.pad_token_id}")
        _check_choice("BertConfig", "activation", self.activation, BERT_ACTIVATIONS)
        if self.dim % self.n_heads:
            raise ValueError(f"BertConfig.n_heads: dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``dim // n_heads``."""
        return self.dim // self.n_heads

    @classmethod
    def from_hf(cls, hf_config: dict) -> BertConfig:
        """Build from the ``config.json`` dict of a ``BertModel``."""
        w = "BERT"
        _hf_get(hf_config, "hidden_size", w)
        _hf_reject(hf_config, w, "position_embedding_type", ("absolute",))
        _hf_reject(hf_config, w, "is_decoder", (False,))
        _hf_reject(hf_config, w, "add_cross_attention", (False,))
        return cls(
            dim=_hf_get(hf_config, "hidden_size", w),
            n_layers=_hf_get(hf_config, "num_hidden_layers", w),
            n_heads=_hf_get(hf_config, "num_attention_heads", w),
            hidden_dim=_hf_get(hf_config, "intermediate_size", w),
            vocab_size=_hf_get(hf_config, "vocab_size", w),
            max_seq_len=_hf_get(hf_config, "max_position_embeddings", w, 512),
            type_vocab_size=_hf_get(hf_config, "type_vocab_size", w, 2),
            norm_eps=_hf_get(hf_config, "layer_norm_eps", w, 1e-12),
            activation=_hf_get(hf_config, "hidden_act", w, "gelu"),
            pad_token_id=_hf_get(hf_config, "pad_token_id", w, 0),
        )

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers loads as a ``BertModel`` of this shape."""
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
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
