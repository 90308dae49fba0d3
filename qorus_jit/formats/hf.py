"""Hugging Face checkpoint folders: read and write ``config.json`` + safetensors weights, without pickle.

A folder holds ``config.json`` and either ``model.safetensors`` or a sharded checkpoint
(``model.safetensors.index.json`` whose ``weight_map`` names the shard of each tensor). Tensors are read
as :func:`~qorus_jit.formats.safetensors.load_safetensors` reads them (floating ones as float32). Pickle
checkpoints (``pytorch_model.bin``) are never loaded: ``torch.load`` can run arbitrary code.

This module knows files, not architectures: the tensor names and shapes of each architecture, and the
checks of a checkpoint against them, are in ``qorus_jit.models`` (``models/registry.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from qorus_jit.core.files import fsync_dir, read_json, tmp_name
from qorus_jit.formats.safetensors import contiguous_tensors, load_safetensors, write_safetensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

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


# ----------------------------------------------------------------------------------------------- writing


def write_hf_folder(path, hf_config: dict, tensors: dict[str, np.ndarray]) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``path`` atomically (created if missing).

    Each file is written to a temporary file in the same folder, flushed and fsynced, then moved over the
    old one with ``os.replace``, so an interrupted write leaves either the old file or the new one, never a
    damaged one. Tensors are stored in their own dtype with ``{"format": "pt"}`` metadata, as transformers
    expects. A stale ``model.safetensors.index.json`` (and the shards it lists) is removed afterwards, since
    it would describe other weights.
    """
    folder = Path(path)
    if not isinstance(hf_config, dict):
        raise ValueError(f"write_hf_folder: hf_config must be a dict, got {type(hf_config).__name__}")
    if not isinstance(tensors, dict) or not tensors:
        raise ValueError("write_hf_folder: tensors must be a non-empty dict of name -> numpy array")
    tensors = contiguous_tensors(tensors, "write_hf_folder")
    try:  # fails before any file is touched
        text = json.dumps(hf_config, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"write_hf_folder: hf_config is not JSON-serializable ({e})") from None
    folder.mkdir(parents=True, exist_ok=True)
    weights_tmp = tmp_name(folder, WEIGHTS_NAME)
    config_tmp = tmp_name(folder, CONFIG_NAME)
    try:
        write_safetensors(weights_tmp, tensors, metadata={"format": "pt"})
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
