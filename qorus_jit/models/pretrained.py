"""Load and save Hugging Face model folders as qorus models."""

from __future__ import annotations

from pathlib import Path

from qorus_jit.models import gpt2
from qorus_jit.models.bert import POOLER, Bert
from qorus_jit.models.configs import BertConfig, GPT2Config, LlamaConfig
from qorus_jit.models.llama import Llama


def load_pretrained(path):
    """Read a Hugging Face folder (``config.json`` + safetensors, sharded or not) into the matching model.

    Supported: ``LlamaForCausalLM``, ``GPT2LMHeadModel`` and ``BertModel`` (its pooler is skipped).
    Errors name the file and the tensor.
    """
    from qorus_jit.formats.hf import (  # hf imports the configs of this package
        check_tensors,
        config_from_hf,
        read_hf_folder,
    )

    hf_config, tensors = read_hf_folder(path)
    config = config_from_hf(hf_config)
    params = check_tensors(config, tensors, source=str(path))
    if isinstance(config, LlamaConfig):
        model = Llama(config)
    elif isinstance(config, GPT2Config):
        model, params = gpt2.GPT2(config), gpt2.from_hf_tensors(params)
    elif isinstance(config, BertConfig):
        model, params = Bert(config), {k: v for k, v in params.items() if k not in POOLER}
    else:
        raise ValueError(f"{path}: {type(config).__name__} models are not supported")
    model.load_parameters(params)
    return model


def save_pretrained(model, path) -> None:
    """Write ``model`` as a Hugging Face folder (``config.json`` + ``model.safetensors``), atomically."""
    from qorus_jit.formats.hf import write_hf_folder

    params = model.parameters()
    if isinstance(model.config, GPT2Config):
        params = gpt2.to_hf_tensors(params)
    write_hf_folder(Path(path), model.config.to_hf(), params)
