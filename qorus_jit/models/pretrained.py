"""Load and save Hugging Face model folders as qorus models."""

from __future__ import annotations

from pathlib import Path

from ..hf import check_tensors, config_from_hf, read_hf_folder, write_hf_folder
from .configs import LlamaConfig
from .llama import Llama


def load_pretrained(path):
    """Read a Hugging Face folder (``config.json`` + safetensors, sharded or not) into the matching model.

    Supported: ``LlamaForCausalLM``. Errors name the file and the tensor.
    """
    hf_config, tensors = read_hf_folder(path)
    config = config_from_hf(hf_config)
    params = check_tensors(config, tensors, source=str(path))
    if isinstance(config, LlamaConfig):
        model = Llama(config)
    else:
        raise ValueError(f"{path}: {type(config).__name__} models are not built yet (supported: Llama)")
    model.load_parameters(params)
    return model


def save_pretrained(model, path) -> None:
    """Write ``model`` as a Hugging Face folder (``config.json`` + ``model.safetensors``), atomically."""
    write_hf_folder(Path(path), model.config.to_hf(), model.parameters())
