"""Hugging Face checkpoint folders: read and write ``config.json`` + safetensors weights, without pickle.

A folder holds ``config.json`` and either ``model.safetensors`` or a sharded checkpoint
(``model.safetensors.index.json`` whose ``weight_map`` names the shard of each tensor). Tensors are read
with the ``safetensors`` package's NumPy API; float16, bfloat16 and float64 become float32 (NumPy has no
bfloat16: its bits are widened by hand), integer tensors keep their dtype. Pickle checkpoints
(``pytorch_model.bin``) are never loaded: ``torch.load`` can run arbitrary code.

Names and shapes are those of the ``transformers`` state dict (:func:`expected_shapes`). Buffers that a
checkpoint may carry but that are recomputed from the config are ignored by :func:`check_tensors`
(:data:`IGNORED_BUFFERS`): GPT-2's causal masks ``h.N.attn.bias`` / ``h.N.attn.masked_bias``, Llama's
rotary ``inv_freq`` tables and BERT's ``embeddings.position_ids`` / ``embeddings.token_type_ids``.
BERT's pooler (``pooler.dense.*``) is a parameter, listed by :func:`expected_shapes`, but may be absent
(``BertModel(add_pooling_layer=False)``): see :data:`OPTIONAL_TENSORS`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from qorus_jit.core.files import fsync_dir, fsync_file, read_json, tmp_name
from qorus_jit.models.configs import BertConfig, GPT2Config, LlamaConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

#: Architectures understood, by ``architectures`` entry, and by ``model_type`` when that list is absent.
ARCHITECTURES: dict[str, type] = {
    "LlamaForCausalLM": LlamaConfig,
    "GPT2LMHeadModel": GPT2Config,
    "BertModel": BertConfig,
}
MODEL_TYPES: dict[str, type] = {"llama": LlamaConfig, "gpt2": GPT2Config, "bert": BertConfig}

#: Non-parameter buffers a checkpoint may hold; recomputed from the config, so ignored when checking.
IGNORED_BUFFERS: dict[type, tuple[str, ...]] = {
    LlamaConfig: (r"model\.rotary_emb\.(original_)?inv_freq", r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),
    GPT2Config: (r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",),
    BertConfig: (r"embeddings\.(position_ids|token_type_ids)",),
}

#: Parameters listed by :func:`expected_shapes` that a checkpoint may leave out.
OPTIONAL_TENSORS: dict[type, frozenset[str]] = {
    BertConfig: frozenset({"pooler.dense.weight", "pooler.dense.bias"}),
}

#: Prefix of the base model inside the causal-LM checkpoints; some (the original ``gpt2``) omit it.
_BASE_PREFIX: dict[type, str] = {LlamaConfig: "model.", GPT2Config: "transformer."}

_TO_FLOAT32 = {"F16", "F64", "BF16"}
_KEEP = {"F32", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL"}
_PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "model.pt", "model.pth")


# ----------------------------------------------------------------------------------------------- reading


def read_hf_folder(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read ``config.json`` and the safetensors weights (single file or sharded) of a checkpoint folder.

    Returns ``(hf_config, tensors)``: the parsed config.json and every tensor of the checkpoint by its
    Hugging Face name, floating tensors as C-contiguous float32. Raises FileNotFoundError for a missing
    folder or file and ValueError for bad JSON, a corrupt or truncated safetensors file, an inconsistent
    shard index or a pickle-only checkpoint.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    hf_config = read_json(folder / CONFIG_NAME, "config.json")
    if not isinstance(hf_config, dict):
        raise ValueError(f"{folder / CONFIG_NAME}: expected a JSON object, got {type(hf_config).__name__}")
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        return hf_config, load_safetensors(single)
    if index.is_file():
        return hf_config, _load_sharded(folder, index)
    pickles = [n for n in _PICKLE_NAMES if (folder / n).exists()]
    if pickles:
        raise ValueError(
            f"{folder}: only a pickle checkpoint ({', '.join(pickles)}) was found, and pickle checkpoints are not "
            "loaded (unpickling can run arbitrary code). Convert it once, in an environment you trust, with "
            "transformers: AutoModel...from_pretrained(folder).save_pretrained(folder, safe_serialization=True), "
            f"which writes {WEIGHTS_NAME}.")
    raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} or {INDEX_NAME} found")


def _load_sharded(folder: Path, index_file: Path) -> dict[str, np.ndarray]:
    index = read_json(index_file, "shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_file}: expected a non-empty 'weight_map' object of tensor name -> shard file")
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or Path(shard).name != shard or shard in (".", ".."):
            raise ValueError(f"{index_file}: tensor {name!r} maps to {shard!r}, not a file name in the folder")
        shards.setdefault(shard, []).append(name)
    tensors: dict[str, np.ndarray] = {}
    for shard, names in shards.items():
        file = folder / shard
        if not file.is_file():
            raise FileNotFoundError(f"shard {file} listed in {index_file} not found")
        part = load_safetensors(file)
        for name in names:
            if name not in part:
                raise ValueError(f"{file}: tensor {name!r} listed in {index_file.name} is missing from the shard")
        for name, arr in part.items():
            if weight_map.get(name) != shard:
                raise ValueError(f"{file}: tensor {name!r} is not mapped to this shard in {index_file.name}")
            tensors[name] = arr
    return tensors


def load_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file, floating ones as float32; corrupt files raise ValueError."""
    from safetensors import safe_open

    size = file.stat().st_size
    if size < 8:
        raise ValueError(f"{file}: not a valid safetensors file ({size} bytes; truncated?)")
    tensors: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(file), framework="np") as f:
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype == "BF16":
                    arr = _read_bf16(file, name)
                elif dtype in _TO_FLOAT32 or dtype in _KEEP:
                    arr = f.get_tensor(name)
                else:
                    raise ValueError(f"{file}: tensor {name!r} has dtype {dtype}, which is not supported")
                if arr.dtype.kind == "f" and arr.dtype != np.float32:
                    arr = arr.astype(np.float32)
                tensors[name] = np.ascontiguousarray(arr)
    except ValueError:
        raise
    except Exception as e:  # safetensors' SafetensorError and friends: header garbage, file cut short
        raise ValueError(f"{file}: not a valid safetensors file, truncated or corrupt ({e})") from None
    return tensors


def _read_bf16(file: Path, name: str) -> np.ndarray:
    """Read a bfloat16 tensor's raw bits (NumPy has no bfloat16) and widen them to float32 exactly."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))  # already validated by safe_open
    info = header[name]
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    count = (end - start) // 2
    bits = np.fromfile(file, dtype="<u2", count=count, offset=8 + n + start)
    if bits.size != count or count != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"{file}: tensor {name!r} is truncated or its size does not match its shape")
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape(shape)


# ---------------------------------------------------------------------------------------------- configs


def config_from_hf(hf_config: dict) -> LlamaConfig | GPT2Config | BertConfig:
    """The qorus config of a Hugging Face ``config.json`` dict, chosen by ``architectures`` or ``model_type``.

    An unknown architecture raises a ValueError naming it and the supported ones.
    """
    if not isinstance(hf_config, dict):
        raise ValueError(f"config_from_hf: expected the config.json dict, got {type(hf_config).__name__}")
    supported = ", ".join(ARCHITECTURES)
    archs = hf_config.get("architectures")
    if archs:
        if isinstance(archs, str):
            archs = [archs]
        for a in archs:
            if a in ARCHITECTURES:
                return ARCHITECTURES[a].from_hf(hf_config)
        raise ValueError(f"unsupported architecture {', '.join(map(str, archs))}; supported: {supported}")
    model_type = hf_config.get("model_type")
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type].from_hf(hf_config)
    raise ValueError(f"unsupported model_type {model_type!r} (and no 'architectures' list); supported: "
                     f"{supported} (model_type {', '.join(MODEL_TYPES)})")


def expected_shapes(config: LlamaConfig | GPT2Config | BertConfig) -> dict[str, tuple[int, ...]]:
    """The Hugging Face parameter names of an architecture and their shapes, in the transformers layout.

    Linear weights are ``(out, in)`` as ``nn.Linear``, except GPT-2's ``Conv1D`` weights, which are
    ``(in, out)``. ``lm_head.weight`` is listed only when the embeddings are untied.
    """
    if isinstance(config, LlamaConfig):
        return _llama_shapes(config)
    if isinstance(config, GPT2Config):
        return _gpt2_shapes(config)
    if isinstance(config, BertConfig):
        return _bert_shapes(config)
    raise ValueError(f"expected_shapes: expected a LlamaConfig, GPT2Config or BertConfig, got {type(config).__name__}")


def _llama_shapes(c: LlamaConfig) -> dict[str, tuple[int, ...]]:
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


def _gpt2_shapes(c: GPT2Config) -> dict[str, tuple[int, ...]]:
    d, f = c.dim, c.hidden_dim
    s: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (c.vocab_size, d),
        "transformer.wpe.weight": (c.max_seq_len, d),
    }
    for i in range(c.n_layers):
        p = f"transformer.h.{i}."
        for name, inp, out in (("ln_1", None, d), ("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d),
                               ("ln_2", None, d), ("mlp.c_fc", d, f), ("mlp.c_proj", f, d)):
            s[p + name + ".weight"] = (out,) if inp is None else (inp, out)  # Conv1D: (in, out)
            s[p + name + ".bias"] = (out,)
    s["transformer.ln_f.weight"] = (d,)
    s["transformer.ln_f.bias"] = (d,)
    if not c.tie_embeddings:
        s["lm_head.weight"] = (c.vocab_size, d)
    return s


def _bert_shapes(c: BertConfig) -> dict[str, tuple[int, ...]]:
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


def _embedding_name(config) -> str | None:
    if isinstance(config, LlamaConfig):
        return "model.embed_tokens.weight"
    if isinstance(config, GPT2Config):
        return "transformer.wte.weight"
    return None


def check_tensors(config, tensors: dict[str, np.ndarray], source="tensors") -> dict[str, np.ndarray]:
    """Check checkpoint tensors against :func:`expected_shapes`; return the parameters by canonical name.

    ``source`` (a file or folder) is named in every error. Missing, unexpected and wrongly shaped tensors
    raise a ValueError naming the tensor. The returned dict drops the :data:`IGNORED_BUFFERS`, adds the
    base-model prefix when a checkpoint omits it (``h.0...`` -> ``transformer.h.0...``), and drops a
    ``lm_head.weight`` that equals the embedding of a tied model (a different one raises).
    """
    expected = expected_shapes(config)
    kind = type(config)
    if not isinstance(tensors, dict):
        raise ValueError(f"{source}: expected a dict of tensors, got {type(tensors).__name__}")
    prefix = _BASE_PREFIX.get(kind)
    if prefix and tensors and not any(k.startswith(prefix) for k in tensors):
        tensors = {(k if k.startswith("lm_head.") else prefix + k): v for k, v in tensors.items()}
    ignored = re.compile("|".join(f"(?:{p})" for p in IGNORED_BUFFERS.get(kind, ())) or r"(?!)")
    params = {k: v for k, v in tensors.items() if not ignored.fullmatch(k)}
    emb = _embedding_name(config)
    if "lm_head.weight" in params and "lm_head.weight" not in expected and emb in params:
        head, table = params["lm_head.weight"], params[emb]
        if np.shape(head) == np.shape(table) and np.array_equal(head, table):
            del params["lm_head.weight"]
        else:
            raise ValueError(f"{source}: tensor 'lm_head.weight' differs from {emb!r}, but the config ties the "
                             "embeddings (tie_word_embeddings=true)")
    optional = OPTIONAL_TENSORS.get(kind, frozenset())
    missing = [k for k in expected if k not in params and k not in optional]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValueError(f"{source}: missing tensor {missing[0]!r}{more} for {type(config).__name__}")
    unexpected = [k for k in params if k not in expected]
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise ValueError(f"{source}: unexpected tensor {unexpected[0]!r}{more} for {type(config).__name__}")
    for name, arr in params.items():
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{source}: tensor {name!r} is a {type(arr).__name__}, not a numpy array")
        if tuple(arr.shape) != expected[name]:
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(arr.shape)}, expected {expected[name]}")
        if arr.dtype.kind != "f":
            raise ValueError(f"{source}: tensor {name!r} has dtype {arr.dtype}, expected a floating dtype")
    return params


# ----------------------------------------------------------------------------------------------- writing


def write_hf_folder(path, hf_config: dict, tensors: dict[str, np.ndarray]) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``path`` atomically (created if missing).

    Each file is written to a temporary file in the same folder, flushed and fsynced, then moved over the
    old one with ``os.replace``, so an interrupted write leaves either the old file or the new one, never a
    damaged one. Tensors are stored in their own dtype with ``{"format": "pt"}`` metadata, as transformers
    expects. A stale ``model.safetensors.index.json`` (and the shards it lists) is removed afterwards, since
    it would describe other weights.
    """
    from safetensors.numpy import save_file

    folder = Path(path)
    if not isinstance(hf_config, dict):
        raise ValueError(f"write_hf_folder: hf_config must be a dict, got {type(hf_config).__name__}")
    if not isinstance(tensors, dict) or not tensors:
        raise ValueError("write_hf_folder: tensors must be a non-empty dict of name -> numpy array")
    arrays = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or not isinstance(arr, np.ndarray):
            raise ValueError(f"write_hf_folder: tensor {name!r} must be a numpy array under a str name, "
                             f"got {type(arr).__name__}")
        arrays[name] = np.ascontiguousarray(arr)
    try:  # fails before any file is touched
        text = json.dumps(hf_config, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"write_hf_folder: hf_config is not JSON-serializable ({e})") from None
    folder.mkdir(parents=True, exist_ok=True)
    weights_tmp = tmp_name(folder, WEIGHTS_NAME)
    config_tmp = tmp_name(folder, CONFIG_NAME)
    try:
        save_file(arrays, str(weights_tmp), metadata={"format": "pt"})
        fsync_file(weights_tmp)
        with open(config_tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(weights_tmp, folder / WEIGHTS_NAME)
        os.replace(config_tmp, folder / CONFIG_NAME)
    finally:
        for tmp in (weights_tmp, config_tmp):
            tmp.unlink(missing_ok=True)
    fsync_dir(folder)
    _remove_stale_index(folder)


def _remove_stale_index(folder: Path) -> None:
    index = folder / INDEX_NAME
    if not index.is_file():
        return
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        shards = {s for s in weight_map.values() if isinstance(s, str) and Path(s).name == s}
    except (ValueError, AttributeError, OSError):
        shards = set()
    index.unlink(missing_ok=True)
    for shard in shards:
        if shard != WEIGHTS_NAME:
            (folder / shard).unlink(missing_ok=True)
