"""Llama models and their tokenizers from GGUF files (llama.cpp's format, read by :mod:`qorus_jit.formats.gguf`).

The mapping is that of llama.cpp's ``convert_hf_to_gguf.py`` for ``LlamaForCausalLM``:

- metadata ``general.architecture = "llama"``; ``llama.block_count``, ``embedding_length``,
  ``feed_forward_length``, ``attention.head_count``, ``attention.head_count_kv`` (default: head_count),
  ``attention.layer_norm_rms_epsilon``, ``rope.freq_base`` (default 10000), ``context_length``;
  ``rope.dimension_count`` must be the head size and rope scaling absent (or ``none``);
- tensors ``token_embd``, ``blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
  ffn_up, ffn_down}``, ``output_norm`` and ``output`` (absent: the head is tied to ``token_embd``), each
  ``.weight``, in the ``(out, in)`` order of ``nn.Linear``;
- the converter permutes the rows of ``attn_q``/``attn_k`` per head from Hugging Face's rotate-half pairs to
  llama.cpp's interleaved pairs (``LlamaModel.permute``); they are permuted back here
  (:func:`~qorus_jit.formats.llama2c.interleaved_to_half`), so the logits are those of the Hugging Face model.

Tensors may be F32, F16, BF16 or Q8_0; Q8_0 and BF16 weights go into quantized layers as they are stored
(or, with ``dtype="fp32"``, widened exactly as ggml does; :func:`gguf_model`). The tokenizer comes from the
``tokenizer.ggml.*`` metadata (:func:`gguf_tokenizer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qorus_jit.core.check import UNFILLED
from qorus_jit.formats.gguf import GGUFFile, read_gguf
from qorus_jit.formats.llama2c import half_to_interleaved, interleaved_to_half
from qorus_jit.models.llama import Llama, LlamaConfig

ARCH = "llama"

#: llama.cpp's tensor names -> Hugging Face's, per block and overall.
BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# The Llama 3 pre-tokenizer regex (llama.cpp's "llama-bpe"; the Split of Llama 3's tokenizer.json).
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_PRE = ("gpt-2", "llama-bpe")  #: the BPE pre-tokenizers (``tokenizer.ggml.pre``) supported
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a llama.cpp tensor name (``blk.0.attn_q.weight`` ->
    ``model.layers.0.self_attn.q_proj.weight``), or None when it is not one of a Llama's."""
    base, dot, suffix = gguf_name.rpartition(".")
    if not dot or suffix != "weight":
        return None
    if base in TOP_NAMES:
        return f"{TOP_NAMES[base]}.weight"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in BLOCK_NAMES:
        return f"model.layers.{int(parts[1])}.{BLOCK_NAMES[parts[2]]}.weight"
    return None


def gguf_config(gf: GGUFFile) -> LlamaConfig:
    """The :class:`LlamaConfig` of a GGUF file's metadata and tensor shapes; a ValueError naming the file and
    the key for a non-llama architecture, a missing or mistyped key, or a setting the model does not have."""
    arch = gf.get("general.architecture", "str")
    if arch != ARCH:
        raise ValueError(f"{gf.path}: architecture {arch!r} is not supported (general.architecture must be "
                         f"{ARCH!r})")
    k = f"{ARCH}."
    scaling = gf.get(k + "rope.scaling.type", "str", "none")
    if scaling != "none" or "rope_freqs.weight" in gf.tensors:
        what = f"rope.scaling.type {scaling!r}" if scaling != "none" else "a rope_freqs tensor"
        raise ValueError(f"{gf.path}: rope scaling ({what}) is not supported")
    if "token_embd.weight" not in gf.tensors:
        raise ValueError(f"{gf.path}: missing tensor 'token_embd.weight'")
    emb = gf.tensors["token_embd.weight"].shape
    if len(emb) != 2:
        raise ValueError(f"{gf.path}: tensor 'token_embd.weight' has shape {emb}, expected (vocab_size, dim)")
    n_heads = gf.get(k + "attention.head_count", "int")
    fields = {
        "dim": gf.get(k + "embedding_length", "int"), "n_layers": gf.get(k + "block_count", "int"),
        "n_heads": n_heads, "n_kv_heads": gf.get(k + "attention.head_count_kv", "int", n_heads),
        "hidden_dim": gf.get(k + "feed_forward_length", "int"), "vocab_size": emb[0],
        "max_seq_len": gf.get(k + "context_length", "int"),
        "norm_eps": gf.get(k + "attention.layer_norm_rms_epsilon", "float"),
        "rope_theta": gf.get(k + "rope.freq_base", "float", 10000.0),
        "tie_embeddings": "output.weight" not in gf.tensors,
    }
    vocab = gf.get(k + "vocab_size", "int", emb[0])
    if vocab != emb[0]:
        raise ValueError(f"{gf.path}: {k}vocab_size = {vocab} does not match tensor 'token_embd.weight' of shape "
                         f"{emb}")
    try:
        config = LlamaConfig(**fields)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{gf.path}: {e}") from None
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        v = gf.get(k + key, "int", config.head_dim)
        if v != config.head_dim:
            raise ValueError(f"{gf.path}: {k}{key} = {v} differs from the head size embedding_length / head_count "
                             f"= {config.head_dim}; not supported")
    return config


def gguf_tensor_names(config: LlamaConfig) -> dict[str, str]:
    """llama.cpp name -> Hugging Face name of every tensor a GGUF file of ``config`` holds."""
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if not config.tie_embeddings:
        names["output.weight"] = "lm_head.weight"
    for i in range(config.n_layers):
        for g, h in BLOCK_NAMES.items():
            names[f"blk.{i}.{g}.weight"] = f"model.layers.{i}.{h}.weight"
    return names


def check_gguf_tensors(gf: GGUFFile, config: LlamaConfig) -> dict[str, str]:
    """Every tensor of the file is a Llama's, none is missing, each has its type supported and the shape
    ``config`` gives; returns :func:`gguf_tensor_names`. Nothing is read."""
    names = gguf_tensor_names(config)
    extra = [n for n in gf.tensors if n not in names]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise ValueError(f"{gf.path}: unexpected tensor {extra[0]!r}{more} for a Llama of {config.n_layers} "
                         f"blocks (llama.block_count)")
    missing = [n for n in names if n not in gf.tensors]
    if missing:
        raise ValueError(f"{gf.path}: missing tensor {missing[0]!r}")
    shapes = Llama.hf_shapes(config)
    for g, h in names.items():
        t = gf.check_type(g)
        if t.shape != shapes[h]:
            raise ValueError(f"{gf.path}: tensor {g!r} has shape {t.shape}, expected {shapes[h]} from the metadata "
                             f"({_describe(config)})")
    return names


def _describe(c: LlamaConfig) -> str:
    return (f"dim={c.dim}, n_layers={c.n_layers}, n_heads={c.n_heads}, n_kv_heads={c.n_kv_heads}, "
            f"hidden_dim={c.hidden_dim}, vocab_size={c.vocab_size}")


def _unpermute(config: LlamaConfig, hf: str, rows: np.ndarray) -> np.ndarray:
    """Rows of q/k (or their Q8_0 scales, one row each) back to rotate-half order; others as they are."""
    if hf.endswith("q_proj.weight"):
        return interleaved_to_half(rows, config.n_heads)
    if hf.endswith("k_proj.weight"):
        return interleaved_to_half(rows, config.n_kv_heads)
    return rows


def gguf_weight(gf: GGUFFile, config: LlamaConfig, name: str, keep: str | None = None):
    """The weight of llama.cpp tensor ``name`` under the model's layout (q/k rows back in rotate-half order): a
    float32 array; with ``keep="q8_0"`` a Q8_0 tensor's ``{"qs", "d"}`` as stored, with ``keep="bf16"`` a BF16
    tensor's ``{"w16"}`` as stored (other types: float32 all the same)."""
    hf, t = hf_name(name), gf.tensors[name]
    if keep == "q8_0" and t.type == "Q8_0":
        qs, d = gf.tensor_q8_0(name)
        return {"qs": np.ascontiguousarray(_unpermute(config, hf, qs)),
                "d": np.ascontiguousarray(_unpermute(config, hf, d))}
    if keep == "bf16" and t.type == "BF16":
        return {"w16": np.ascontiguousarray(_unpermute(config, hf, gf.tensor_bf16(name)))}
    return np.ascontiguousarray(_unpermute(config, hf, gf.tensor_f32(name)))


def load_gguf(path, dtype: str | None = None) -> Llama:
    """The :class:`Llama` of a GGUF file (:func:`gguf_model`); a one-line ValueError naming the file for a
    damaged file or one that is not a supported Llama."""
    return gguf_model(read_gguf(path), dtype)


def _stored_format(gf: GGUFFile, targets: dict[str, str]) -> str | None:
    types = {gf.tensors[g].type for g in targets.values()}
    return "q8_0" if "Q8_0" in types else "bf16" if "BF16" in types else None


def gguf_model(gf: GGUFFile, dtype: str | None = None) -> Llama:
    """The :class:`Llama` of a read GGUF file: config from the metadata, q/k rows back in rotate-half order.

    ``dtype`` is that of the linear layers (attention, MLP, LM head), as for ``load_pretrained``: None keeps
    what the file holds (Q8_0 weights become int8 (q8_0) :class:`QuantizedLinear` layers, BF16 ones bf16
    layers, their bytes as stored, never re-quantized; F32/F16: float32); "fp32" widens and dequantizes
    everything (exactly, as ggml does); "int8" / "bf16" keep the tensors already in that format and quantize
    the others. Norms are float32; a tied ``token_embd`` is held once, quantized, by the head (its rows
    dequantized for the lookups), an untied one in float32. Every check (architecture, keys, tensor names,
    types and shapes) is made before the model is built, so memory stays bounded by the file."""
    from qorus_jit.layers import Linear
    from qorus_jit.layers.head import TiedLMHead
    from qorus_jit.layers.quantized import (
        QuantizedLinear,
        check_quantizable,
        quantize_layers,
        quantize_weight,
        share_tied_table,
    )
    from qorus_jit.layers.quantized import weight_format as _weight_format

    fmt = None if dtype is None else _weight_format(dtype)
    config = gguf_config(gf)
    names = check_gguf_tensors(gf, config)
    hf_to_gguf = {h: g for g, h in names.items()}
    # the linear layers by dotted name -> their tensor (a tied head: the embedding's)
    targets = {h[:-len(".weight")]: g for h, g in hf_to_gguf.items() if h.endswith("proj.weight")}
    targets["lm_head"] = "token_embd.weight" if config.tie_embeddings else "output.weight"
    if dtype is None:
        fmt = _stored_format(gf, targets)
    try:
        if fmt is not None:
            for dotted, g in targets.items():
                check_quantizable(dotted, gf.tensors[g].shape[1])
    except ValueError as e:
        raise ValueError(f"{gf.path}: {e}") from None
    model = Llama(config, rng=UNFILLED)  # float32 weights never written: those replaced take no memory
    if fmt is not None:
        def make(dotted, layer):
            if dotted not in targets or not (type(layer) is Linear or isinstance(layer, TiedLMHead)):
                return None
            w = gguf_weight(gf, config, targets[dotted], keep=fmt)
            arrays = w if isinstance(w, dict) else quantize_weight(w, fmt, dotted)
            gf.release(targets[dotted])
            return QuantizedLinear(fmt, **arrays, name=dotted)

        quantize_layers(model, make)
        share_tied_table(model)  # a tied token_embd held once, as stored, for the head and the lookups
    own = model.parameters()
    for g, h in names.items():  # one tensor at a time; the quantized layers' weights are theirs already
        if h in own:
            model.load_parameters({h: gguf_weight(gf, config, g)}, strict=False)
        gf.release(g)
    return model


# ---------------------------------------------------------------------------------------------- tokenizer


@dataclass
class GGUFTokenizer:
    """A GGUF file's tokenizer as qorus runs it: ``tokenizer`` (a :class:`Llama2cTokenizer` for a "llama"
    vocabulary, a :class:`BPETokenizer` for a "gpt2" one), ``bos`` the id put before a prompt (None when the
    file says not to), ``stop_ids`` the ids generation stops at (EOS, end of turn)."""

    tokenizer: object
    bos: int | None
    stop_ids: frozenset[int] = field(default_factory=frozenset)


def gguf_tokenizer(gf: GGUFFile) -> GGUFTokenizer:
    """The tokenizer of the ``tokenizer.ggml.*`` metadata.

    ``tokenizer.ggml.model = "llama"`` (sentencepiece: ``tokens``, ``scores``, ``token_type``): llama.cpp
    encodes it by sentencepiece's BPE-by-score (a dummy-prefix space, one symbol a character, the adjacent
    pair whose join is the piece of highest score merged first, the leftmost on ties, byte tokens for what is
    left), which is llama2.c's algorithm: a :class:`Llama2cTokenizer` of the pieces (``▁`` read as a space)
    and scores; its layout must be llama2.c's (``<s>`` 1, ``</s>`` 2, byte tokens ``<0x00>``.. from 3).
    ``"gpt2"`` (byte-level BPE: ``tokens``, ``merges``, pre-tokenizer ``tokenizer.ggml.pre`` "gpt-2" or
    "llama-bpe"): a ``tokenizers`` BPE in a :class:`BPETokenizer`, its control tokens matched in text as whole
    tokens, with the chat template of ``tokenizer.chat_template``. BOS is prepended when
    ``tokenizer.ggml.add_bos_token`` says so (default: yes for "llama", no for "gpt2").
    """
    from qorus_jit.tokenizers import BPETokenizer, Llama2cTokenizer
    from qorus_jit.tokenizers.llama2c import BOS_ID, BYTE_OFFSET, EOS_ID

    kind = gf.get("tokenizer.ggml.model", "str")
    tokens = gf.get("tokenizer.ggml.tokens", "[str]")
    n = len(tokens)
    if not n:
        raise ValueError(f"{gf.path}: tokenizer.ggml.tokens is empty")
    bos, stop = gguf_special_ids(gf, n)
    if kind == "llama":
        scores = gf.get("tokenizer.ggml.scores", "[float]")
        types = gf.get("tokenizer.ggml.token_type", "[int]", [_NORMAL] * n)
        for key, arr in (("scores", scores), ("token_type", types)):
            if len(arr) != n:
                raise ValueError(f"{gf.path}: tokenizer.ggml.{key} has {len(arr)} entries, tokenizer.ggml.tokens "
                                 f"{n}")
        ends = _token_id(gf, "bos_token_id", n, BOS_ID), _token_id(gf, "eos_token_id", n, EOS_ID)
        bytes_at = [i for i, t in enumerate(types) if t == _BYTE]
        if ends != (BOS_ID, EOS_ID) or bytes_at not in ([], list(range(BYTE_OFFSET, BYTE_OFFSET + 256))):
            raise ValueError(f"{gf.path}: a 'llama' vocabulary laid out as llama2.c's is supported (<s> at id "
                             f"{BOS_ID}, </s> at {EOS_ID}, the byte tokens <0x00>..<0xFF> at {BYTE_OFFSET}.."
                             f"{BYTE_OFFSET + 255}); got bos_token_id {ends[0]}, eos_token_id {ends[1]}")
        if not gf.get("tokenizer.ggml.add_space_prefix", "bool", True):
            raise ValueError(f"{gf.path}: tokenizer.ggml.add_space_prefix = false is not supported")
        pieces = [t if ty == _BYTE else t.replace("\u2581", " ") for t, ty in zip(tokens, types, strict=True)]
        tok = Llama2cTokenizer(pieces, scores)
    elif kind == "gpt2":
        types = gf.get("tokenizer.ggml.token_type", "[int]", [_NORMAL] * n)
        if len(types) != n:
            raise ValueError(f"{gf.path}: tokenizer.ggml.token_type has {len(types)} entries, tokenizer.ggml.tokens "
                             f"{n}")
        named = {name: tokens[i] for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                                                   ("pad_token", "padding_token_id"))
                 if (i := _token_id(gf, key, n)) is not None}
        tok = BPETokenizer(_bpe(gf, tokens, types), source=str(gf.path),
                           chat_template=gf.get("tokenizer.chat_template", "str", None), special_tokens=named)
    else:
        raise ValueError(f"{gf.path}: tokenizer.ggml.model {kind!r} is not supported (expected 'llama' or 'gpt2')")
    return GGUFTokenizer(tok, bos, stop)


def _token_id(gf: GGUFFile, key: str, n: int, default=None) -> int | None:
    v = gf.get(f"tokenizer.ggml.{key}", "int", default)
    if v is not None and not 0 <= v < n:
        raise ValueError(f"{gf.path}: tokenizer.ggml.{key} = {v} is not a token id (0..{n - 1})")
    return v


def gguf_special_ids(gf: GGUFFile, n: int) -> tuple[int | None, frozenset[int]]:
    """``(bos, stop_ids)`` of the metadata for a vocabulary of ``n`` ids: the BOS id when
    ``tokenizer.ggml.add_bos_token`` (default: yes for a "llama" vocabulary, no for "gpt2") else None, and the
    EOS, end-of-turn and end-of-message ids that are set."""
    llama = gf.get("tokenizer.ggml.model", "str", "") == "llama"
    bos = _token_id(gf, "bos_token_id", n, 1 if llama else None)
    add_bos = gf.get("tokenizer.ggml.add_bos_token", "bool", llama)
    stop = {_token_id(gf, k, n, 2 if llama and k == "eos_token_id" else None)
            for k in ("eos_token_id", "eot_token_id", "eom_token_id")}
    return (bos if add_bos else None), frozenset(i for i in stop if i is not None)


def _bpe(gf: GGUFFile, tokens: list[str], types: list[int]):
    """The byte-level BPE ``tokenizers.Tokenizer`` of a "gpt2" vocabulary; its control and user-defined tokens
    are matched in text as whole tokens (as llama.cpp does for prompts and chat templates)."""
    from qorus_jit.tokenizers.bpe import _import_tokenizers

    tk = _import_tokenizers()
    pre = gf.get("tokenizer.ggml.pre", "str", "gpt-2")
    if pre not in GPT2_PRE:
        raise ValueError(f"{gf.path}: tokenizer.ggml.pre {pre!r} is not supported (supported: "
                         f"{', '.join(GPT2_PRE)})")
    merges = []
    for i, m in enumerate(gf.get("tokenizer.ggml.merges", "[str]", [])):  # none: bytes alone (the writer
        # of the gguf package leaves an empty array out)
        a, sep, b = m.partition(" ")
        if not sep or not a or not b or " " in b:
            raise ValueError(f"{gf.path}: tokenizer.ggml.merges[{i}] = {m!r} is not two tokens joined by a space")
        merges.append((a, b))
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    try:
        tok = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges, ignore_merges=pre == "llama-bpe"))
    except Exception as e:  # the Rust side: a merge of tokens not in the vocabulary
        raise ValueError(f"{gf.path}: the 'gpt2' vocabulary and merges do not make a BPE model ({e})") from None
    if pre == "gpt-2":
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = tk.pre_tokenizers.Sequence([
            tk.pre_tokenizers.Split(tk.Regex(_LLAMA3_REGEX), behavior="isolated"),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = tk.decoders.ByteLevel()
    special = [tk.AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types, strict=True)
               if ty in (_CONTROL, _USER_DEFINED)]
    if special:
        tok.add_special_tokens(special)  # in the vocabulary already: their ids stay
    return tok


# ------------------------------------------------------------------------------------------------ writing

_PROBES = ("Once upon a time", "  two  spaces, tabs\tand\nlines ", "café naïve 日本語 👍🏽", "it's 12345!", "a", "")


def save_gguf(model, path, tokenizer=None, dtype: str = "fp32") -> Path:
    """Write a :class:`Llama` as a GGUF file, laid out as llama.cpp's ``convert_hf_to_gguf.py`` lays out a
    ``LlamaForCausalLM`` (the metadata and tensor names of this module's docstring, q/k rows permuted to
    interleaved RoPE pairs), atomically; returns the path. ``dtype`` "fp32": F32 tensors; "int8": the
    matrices as Q8_0 (ggml's quantization, by the gguf package; the norms stay F32), as the converter's
    ``--outtype q8_0`` does.

    ``tokenizer`` (its ``tokenizer.ggml.*`` metadata; None: none written): a :class:`Llama2cTokenizer` (a
    "llama" sentencepiece vocabulary: pieces, scores, types), a byte tokenizer or a byte-level
    :class:`BPETokenizer` with GPT-2's or Llama 3's pre-tokenizer (a "gpt2" vocabulary: tokens, merges); a
    vocabulary shorter than the model's is padded with unused ``[PADn]`` tokens, as the converter does. The
    file's tokenizer, read back, must encode a few texts as ``tokenizer`` does; else nothing is written. (A
    byte tokenizer has no merges, and the gguf package writes no empty array: qorus reads such a file, but
    llama.cpp asks for a ``tokenizer.ggml.merges`` key.)

    Refused (ValueError naming what): another model than a plain Llama (biases, LoRA adapters, quantized
    layers), "int8" with a matrix whose rows are not whole groups of 32."""
    from qorus_jit.core.files import atomic_write, check_path
    from qorus_jit.formats.gguf import _import_gguf
    from qorus_jit.layers.lora import lora_layers
    from qorus_jit.layers.quantized import quantized_layers

    if not isinstance(model, Llama):
        raise TypeError(f"model: GGUF files are written for a Llama, got {type(model).__name__}")
    gguf = _import_gguf()
    if dtype not in ("fp32", "int8"):
        raise ValueError(f"dtype: expected 'fp32' or 'int8', got {dtype!r}")
    c = model.config
    for field_ in ("attention_bias", "mlp_bias"):
        if getattr(c, field_):
            raise ValueError(f"model: a Llama with {field_} cannot be written as GGUF here (no biases)")
    if lora_layers(model):
        raise ValueError("model: has LoRA adapters; merge them into the weights first (merge_lora)")
    if quantized_layers(model):
        raise ValueError("model: has quantized layers; write the fp32 model (dtype='int8' quantizes to Q8_0)")
    p = check_path("path", path)
    if p.is_dir():
        raise IsADirectoryError(f"path: expected a file name, got the directory {p}")
    params = model.parameters()
    q8 = gguf.GGMLQuantizationType.Q8_0
    names = gguf_tensor_names(c)
    tensors = []
    for g, h in names.items():
        w = np.asarray(params[h], np.float32)
        if h.endswith("q_proj.weight"):
            w = half_to_interleaved(w, c.n_heads)
        elif h.endswith("k_proj.weight"):
            w = half_to_interleaved(w, c.n_kv_heads)
        if dtype == "int8" and w.ndim == 2:
            if w.shape[1] % 32:
                raise ValueError(f"dtype: int8 (Q8_0) needs rows of whole groups of 32; tensor {g!r} ({h}) has "
                                 f"{w.shape[1]} columns")
            tensors.append((g, gguf.quants.quantize(w, q8), q8))
        else:
            tensors.append((g, np.ascontiguousarray(w), None))
    vocab = _vocab_fields(tokenizer, c.vocab_size) if tokenizer is not None else None

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(str(tmp), ARCH)
        w.add_context_length(c.max_seq_len)
        w.add_embedding_length(c.dim)
        w.add_block_count(c.n_layers)
        w.add_feed_forward_length(c.hidden_dim)
        w.add_head_count(c.n_heads)
        w.add_head_count_kv(c.n_kv_heads)
        w.add_rope_freq_base(float(c.rope_theta))
        w.add_layer_norm_rms_eps(float(c.norm_eps))
        w.add_vocab_size(c.vocab_size)
        w.add_rope_dimension_count(c.head_dim)
        w.add_file_type(7 if dtype == "int8" else 0)  # llama.cpp's LlamaFileType: MOSTLY_Q8_0, ALL_F32
        if dtype == "int8":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if vocab is not None:
            _add_vocab(w, vocab)
        for g, arr, raw in tensors:
            w.add_tensor(g, arr, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        if tokenizer is not None:
            _check_vocab(tmp, tokenizer)

    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(p, write)


def _vocab_fields(tokenizer, vocab_size: int) -> dict:
    """The ``tokenizer.ggml.*`` values of ``tokenizer`` for a model of ``vocab_size`` ids."""
    from qorus_jit.tokenizers import BPETokenizer, ByteTokenizer, Llama2cTokenizer
    from qorus_jit.tokenizers.llama2c import BOS_ID, BYTE_OFFSET, EOS_ID

    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"tokenizer: has {tokenizer.vocab_size} ids, the model {vocab_size}")
    if isinstance(tokenizer, Llama2cTokenizer):
        tokens, types = [], []
        for i, piece in enumerate(tokenizer.pieces):
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"tokenizer: piece {i} ({piece!r}) is not UTF-8, which GGUF tokens are") from None
            if i in (BOS_ID, EOS_ID):
                tokens.append(("<s>", "</s>")[i - 1])
                types.append(_CONTROL)
            elif i == 0:
                tokens.append(text)
                types.append(_UNKNOWN)
            elif BYTE_OFFSET <= i < BYTE_OFFSET + 256 and text == f"<0x{i - BYTE_OFFSET:02X}>":
                tokens.append(text)
                types.append(_BYTE)
            elif not piece:  # the padding of a llama2.c export
                tokens.append(f"[PAD{i}]")
                types.append(_UNUSED)
            else:
                tokens.append(text.replace(" ", "\u2581"))
                types.append(_NORMAL)
        return {"model": "llama", "pre": "default", "tokens": tokens, "types": types,
                "scores": [float(s) for s in tokenizer.scores], "bos": BOS_ID, "eos": EOS_ID, "unk": 0,
                "add_bos": True, "pad_to": vocab_size}
    if isinstance(tokenizer, ByteTokenizer):
        tokenizer = BPETokenizer(_import_tk().Tokenizer.from_str(tokenizer.to_hf_json()))
    if not isinstance(tokenizer, BPETokenizer):
        raise TypeError(f"tokenizer: expected a Llama2cTokenizer, ByteTokenizer or byte-level BPETokenizer, got "
                        f"{type(tokenizer).__name__}")
    spec = json.loads(tokenizer.to_json())
    model, pre, norm = spec.get("model") or {}, spec.get("pre_tokenizer") or {}, spec.get("normalizer")
    kind = _bpe_pre(pre)
    if model.get("type") != "BPE" or norm is not None or kind is None:
        raise ValueError("tokenizer: a tokenizer.json is written to GGUF when it is byte-level BPE with GPT-2's "
                         "or Llama 3's pre-tokenizer and no normalizer (a sentencepiece-style one: convert it to "
                         "llama2.c's pieces and scores first)")
    vocab = model.get("vocab") or {}
    for t in spec.get("added_tokens") or []:
        vocab.setdefault(t["content"], t["id"])
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError("tokenizer: its ids are not 0..n-1")
    special = {t["content"] for t in spec.get("added_tokens") or [] if t.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"model": "gpt2", "pre": kind, "tokens": [t for t, _ in by_id], "merges": merges,
            "types": [_CONTROL if t in special else _NORMAL for t, _ in by_id], "add_bos": False,
            "pad_to": vocab_size}


def _import_tk():
    from qorus_jit.tokenizers.bpe import _import_tokenizers

    return _import_tokenizers()


def _bpe_pre(pre: dict) -> str | None:
    """``tokenizer.ggml.pre`` of a tokenizer.json pre-tokenizer: "gpt-2" (ByteLevel with GPT-2's regex, or
    without splitting: a byte tokenizer's, whose ids do not depend on it), "llama-bpe" (Llama 3's Split and
    ByteLevel), else None."""
    if pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space"):
        return "gpt-2" if pre.get("use_regex", True) else "gpt-2-bytes"
    steps = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split" \
            and (steps[0].get("pattern") or {}).get("Regex") == _LLAMA3_REGEX \
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True):
        return "llama-bpe"
    return None


def _add_vocab(w, v: dict) -> None:
    tokens, types = list(v["tokens"]), list(v["types"])
    scores = list(v.get("scores") or [])
    for i in range(len(tokens), v["pad_to"]):  # ids the model has past the tokenizer's, never produced
        tokens.append(f"[PAD{i}]")
        types.append(_UNUSED)
        scores.append(-1000.0)
    w.add_tokenizer_model(v["model"])
    w.add_tokenizer_pre("gpt-2" if v["pre"] == "gpt-2-bytes" else v["pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    if v["model"] == "llama":
        w.add_token_scores(scores)
        w.add_bos_token_id(v["bos"])
        w.add_eos_token_id(v["eos"])
        w.add_unk_token_id(v["unk"])
    else:
        w.add_token_merges(v["merges"])
    w.add_add_bos_token(v["add_bos"])
    w.add_add_eos_token(False)


def _check_vocab(file: Path, tokenizer) -> None:
    """The tokenizer written in ``file``, read back, encodes the probe texts as ``tokenizer`` does."""
    from qorus_jit.tokenizers import Llama2cTokenizer

    back = gguf_tokenizer(read_gguf(file)).tokenizer
    for text in _PROBES:
        if isinstance(tokenizer, Llama2cTokenizer):
            want, got = tokenizer.encode(text, bos=False), back.encode(text, bos=False)
        else:
            want, got = tokenizer.encode(text), back.encode(text)
        if want.tolist() != got.tolist():
            raise ValueError(f"tokenizer: the GGUF vocabulary would encode {text!r} otherwise than the tokenizer "
                             "does; not written")
