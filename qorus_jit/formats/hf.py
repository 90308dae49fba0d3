"""Hugging Face checkpoint folders: read and write ``config.json`` + safetensors weights, without pickle.

A folder holds ``config.json`` and either ``model.safetensors`` or a sharded checkpoint
(``model.safetensors.index.json`` whose ``weight_map`` names the shard of each tensor). Tensors are read
as :func:`~qorus_jit.formats.safetensors.load_safetensors` reads them (floating ones as float32). Pickle
checkpoints (``pytorch_model.bin``) are never loaded: ``torch.load`` can run arbitrary code.

Reading goes in two steps so that nothing is allocated before the config is checked against the weights:
:func:`read_hf_config` and :func:`read_hf_shapes` (the tensor names and shapes, from the safetensors
headers alone), then :func:`read_hf_weights` (the data). :func:`read_hf_folder` does all three.

Links: a file of the folder (``config.json``, the weights, the index, each shard) may be a symbolic link
only if it resolves inside the folder, or, when the folder is a Hugging Face hub cache snapshot
(``<repo>/snapshots/<revision>/`` beside ``<repo>/blobs/``), inside that repo's ``blobs/`` folder, where
the hub keeps the files its snapshots link to (``../../blobs/<hash>``). A link elsewhere (``/etc/...``,
another user's file) is refused with a ValueError naming the file; shard names that are paths (``..``,
``a/b``, absolute) are refused as well.

This module knows files, not architectures: the tensor names and shapes of each architecture, and the
checks of a checkpoint against them, are in ``qorus_jit.models`` (``models/registry.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from qorus_jit.core.files import check_path, fsync_dir, read_json, tmp_name
from qorus_jit.formats.safetensors import (
    contiguous_tensors,
    load_safetensors,
    read_safetensors_header,
    write_safetensors,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

_PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "model.pt", "model.pth")


# ----------------------------------------------------------------------------------------------- reading


def make_folder(folder: Path, name: str = "path") -> None:
    """``folder`` and its parents created if missing; a file in the way is an error naming ``name``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(f"{name}: cannot make the folder {folder}: it or one of its parents is a "
                                 "file") from None


def _folder(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a folder path (str or os.PathLike), got {type(path).__name__}")
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    return folder


def _allowed_roots(folder: Path) -> list[Path]:
    """Where the files of ``folder`` may resolve to: the folder, and the repo's ``blobs/`` when the folder
    is a hub cache snapshot (``<repo>/snapshots/<revision>``)."""
    real = folder.resolve()
    roots = [real]
    blobs = real.parent.parent / "blobs"
    if real.parent.name == "snapshots" and blobs.is_dir():
        roots.append(blobs.resolve())
    return roots


def _member(folder: Path, name: str, what: str) -> Path:
    """``folder / name``, refused (ValueError naming it) if it is a link that resolves outside the roots of
    :func:`_allowed_roots`."""
    file = folder / name
    real = file.resolve()
    roots = _allowed_roots(folder)
    if not any(real == r or real.is_relative_to(r) for r in roots):
        where = "the model folder" + (" or the hub cache's blobs/ folder" if len(roots) > 1 else "")
        raise ValueError(f"{folder}: {what} {name!r} links to {real}, outside {where}; links out of a model "
                         "folder are not followed (copy the file into the folder)")
    return file


def read_hf_config(path) -> dict:
    """The parsed ``config.json`` of a checkpoint folder (a JSON object; :func:`~qorus_jit.core.files.read_json`)."""
    folder = _folder(path)
    hf_config = read_json(_member(folder, CONFIG_NAME, "config file"), CONFIG_NAME)
    if not isinstance(hf_config, dict):
        raise ValueError(f"{folder / CONFIG_NAME}: expected a JSON object, got {type(hf_config).__name__}")
    return hf_config


def _weight_files(folder: Path) -> list[tuple[Path, dict | None]]:
    """The safetensors files of a folder: ``[(model.safetensors, None)]``, or each shard with the weight
    map of the index when sharded; the index is checked (names, files present, links)."""
    single, index_file = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        return [(_member(folder, WEIGHTS_NAME, "weights file"), None)]
    if index_file.is_file():
        index = read_json(_member(folder, INDEX_NAME, "shard index"), "shard index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_file}: expected a non-empty 'weight_map' object of tensor name -> shard file")
        shards: dict[str, None] = {}
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or not shard or Path(shard).name != shard or shard in (".", ".."):
                raise ValueError(f"{index_file}: tensor {name!r} maps to {shard!r}, not a file name in the folder")
            shards.setdefault(shard)
        files = []
        for shard in shards:
            file = _member(folder, shard, "shard")
            if not file.is_file():
                raise FileNotFoundError(f"shard {file} listed in {index_file} not found")
            files.append((file, weight_map))
        return files
    pickles = [n for n in _PICKLE_NAMES if (folder / n).exists()]
    if pickles:
        raise ValueError(
            f"{folder}: only a pickle checkpoint ({', '.join(pickles)}) was found, and pickle checkpoints are not "
            "loaded (unpickling can run arbitrary code). Convert it once, in an environment you trust, with "
            "transformers: AutoModel...from_pretrained(folder).save_pretrained(folder, safe_serialization=True), "
            f"which writes {WEIGHTS_NAME}.")
    raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} or {INDEX_NAME} found")


def _headers(folder: Path) -> list[tuple[Path, dict[str, tuple[str, tuple[int, ...]]]]]:
    """Each weights file and its header; each shard holds exactly the tensors the index maps to it."""
    out = []
    files = _weight_files(folder)
    for file, weight_map in files:
        header = read_safetensors_header(file)
        if weight_map is not None:
            for name in header:
                if weight_map.get(name) != file.name:
                    raise ValueError(f"{file}: tensor {name!r} is not mapped to this shard in {INDEX_NAME}")
        out.append((file, header))
    if files[0][1] is not None:
        held = {name for _, header in out for name in header}
        for name, shard in files[0][1].items():
            if name not in held:
                raise ValueError(f"{folder / shard}: tensor {name!r} listed in {INDEX_NAME} is missing from the shard")
    return out


def read_hf_shapes(path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor of a checkpoint folder, from the safetensors headers alone (no
    tensor data is read): what the config is checked against before anything is allocated."""
    return {name: shape for _, header in _headers(_folder(path)) for name, (_, shape) in header.items()}


def read_hf_weights(path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint folder by its Hugging Face name, floating tensors as C-contiguous
    float32 (single file or shards, the index checked first)."""
    tensors: dict[str, np.ndarray] = {}
    for file, _ in _headers(_folder(path)):
        tensors.update(load_safetensors(file))
    return tensors


def read_hf_folder(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read ``config.json`` and the safetensors weights (single file or sharded) of a checkpoint folder.

    Returns ``(hf_config, tensors)``: the parsed config.json and every tensor of the checkpoint by its
    Hugging Face name, floating tensors as C-contiguous float32. Raises FileNotFoundError for a missing
    folder or file and ValueError for bad JSON, a corrupt or truncated safetensors file, an inconsistent
    shard index, a link out of the folder or a pickle-only checkpoint.
    """
    return read_hf_config(path), read_hf_weights(path)


# ----------------------------------------------------------------------------------------------- writing


def write_hf_folder(path, hf_config: dict, tensors: dict[str, np.ndarray]) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``path`` atomically (created if missing).

    Each file is written to a temporary file in the same folder, flushed and fsynced, then moved over the
    old one with ``os.replace``, so an interrupted write leaves either the old file or the new one, never a
    damaged one. Tensors are stored in their own dtype with ``{"format": "pt"}`` metadata, as transformers
    expects. A stale ``model.safetensors.index.json`` (and the shards it lists) is removed afterwards, since
    it would describe other weights.
    """
    folder = check_path("path", path)
    if not isinstance(hf_config, dict):
        raise ValueError(f"write_hf_folder: hf_config must be a dict, got {type(hf_config).__name__}")
    if not isinstance(tensors, dict) or not tensors:
        raise ValueError("write_hf_folder: tensors must be a non-empty dict of name -> numpy array")
    tensors = contiguous_tensors(tensors, "write_hf_folder")
    try:  # fails before any file is touched
        text = json.dumps(hf_config, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"write_hf_folder: hf_config is not JSON-serializable ({e})") from None
    make_folder(folder)
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
        weight_map = read_json(index, "shard index").get("weight_map", {})
        shards = {s for s in weight_map.values() if isinstance(s, str) and Path(s).name == s}
    except (ValueError, AttributeError, OSError):
        shards = set()
    index.unlink(missing_ok=True)
    for shard in shards:
        if shard != WEIGHTS_NAME:
            (folder / shard).unlink(missing_ok=True)
