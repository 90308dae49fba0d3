"""The architectures of the model library, and what is done with each of them alike: find one by its Hugging
Face or short name, check a checkpoint's tensors against it, load and save Hugging Face folders, and rebuild
a model from a run folder's record.

Adding an architecture: write its module (a :class:`~qorus_jit.models.base.Config` and an
:class:`~qorus_jit.models.base.Architecture`, as ``models/gpt2.py`` does) and list its class here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from qorus_jit.formats.hf import read_hf_folder, write_hf_folder
from qorus_jit.models.base import Architecture, Config
from qorus_jit.models.bert import Bert
from qorus_jit.models.gpt2 import GPT2
from qorus_jit.models.llama import Llama

#: Every architecture, in the order error messages list them.
ARCHITECTURES: tuple[type[Architecture], ...] = (Llama, GPT2, Bert)

#: By the ``architectures`` entry of a ``config.json`` ...
BY_HF_ARCHITECTURE: dict[str, type[Architecture]] = {a.config_class.hf_architecture: a for a in ARCHITECTURES}
#: ... and by its ``model_type``, when that list is absent.
BY_MODEL_TYPE: dict[str, type[Architecture]] = {a.config_class.hf_model_type: a for a in ARCHITECTURES}
#: By short name: ``TrainConfig.arch`` and the ``arch`` of a run folder's model record.
BY_ARCH: dict[str, type[Architecture]] = {a.arch: a for a in ARCHITECTURES}
_BY_CONFIG: dict[type[Config], type[Architecture]] = {a.config_class: a for a in ARCHITECTURES}


def architecture(arch: str) -> type[Architecture]:
    """The model class of a short name (``"llama"``, ``"gpt2"``, ``"bert"``)."""
    cls = BY_ARCH.get(arch) if isinstance(arch, str) else None
    if cls is None:
        raise ValueError(f"arch: expected one of {', '.join(BY_ARCH)}, got {arch!r}")
    return cls


def architecture_of(config) -> type[Architecture]:
    """The model class of a config (a :class:`LlamaConfig`, ...)."""
    cls = _BY_CONFIG.get(type(config))
    if cls is None:
        names = [c.__name__ for c in _BY_CONFIG]
        raise ValueError(f"config: expected a {', '.join(names[:-1])} or {names[-1]}, got {type(config).__name__}")
    return cls


# -------------------------------------------------------------------------------------------- run records


def model_record(model: Architecture) -> dict:
    """What a run folder keeps to rebuild ``model``: ``{"arch": ..., **model.config.to_dict()}`` (JSON)."""
    if not isinstance(model, Architecture):
        raise TypeError(f"model: expected one of {', '.join(a.__name__ for a in ARCHITECTURES)}, "
                        f"got {type(model).__name__}")
    return {"arch": type(model).arch, **model.config.to_dict()}


def build_model(arch: str, config: dict | Config, rng=None) -> Architecture:
    """A new model of architecture ``arch`` (a short name) from ``config``: its config, or the dict of its
    fields (``config.to_dict()``, the rest of a :func:`model_record`); weights drawn from ``rng``.

    >>> model = build_model("llama", {"dim": 16, "n_layers": 1, "n_heads": 2, "hidden_dim": 32, "vocab_size": 10})
    >>> record = model_record(model)  # {"arch": "llama", "dim": 16, ...}, as run.json keeps it
    >>> build_model(record.pop("arch"), record).config == model.config
    True
    """
    cls = architecture(arch)
    if isinstance(config, dict):
        config = cls.config_class.from_dict(config)
    elif not isinstance(config, cls.config_class):
        raise TypeError(f"config: expected a {cls.config_class.__name__} or a dict of its fields for arch "
                        f"{arch!r}, got {type(config).__name__}")
    return cls(config, rng=rng)


# ---------------------------------------------------------------------------------- Hugging Face folders


def config_from_hf(hf_config: dict) -> Config:
    """The qorus config of a Hugging Face ``config.json`` dict, chosen by ``architectures`` or ``model_type``.

    An unknown architecture raises a ValueError naming it and the supported ones.
    """
    if not isinstance(hf_config, dict):
        raise ValueError(f"config_from_hf: expected the config.json dict, got {type(hf_config).__name__}")
    supported = ", ".join(BY_HF_ARCHITECTURE)
    archs = hf_config.get("architectures")
    if archs:
        if isinstance(archs, str):
            archs = [archs]
        for a in archs:
            if a in BY_HF_ARCHITECTURE:
                return BY_HF_ARCHITECTURE[a].config_class.from_hf(hf_config)
        raise ValueError(f"unsupported architecture {', '.join(map(str, archs))}; supported: {supported}")
    model_type = hf_config.get("model_type")
    if model_type in BY_MODEL_TYPE:
        return BY_MODEL_TYPE[model_type].config_class.from_hf(hf_config)
    raise ValueError(f"unsupported model_type {model_type!r} (and no 'architectures' list); supported: "
                     f"{supported} (model_type {', '.join(BY_MODEL_TYPE)})")


def expected_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """The Hugging Face tensor names of an architecture and their shapes, in the transformers layout
    (:meth:`Architecture.hf_shapes`): linear weights are ``(out, in)`` as ``nn.Linear``, except GPT-2's
    ``Conv1D`` weights, which are ``(in, out)``; ``lm_head.weight`` is listed only when the embeddings are
    untied."""
    try:
        cls = architecture_of(config)
    except ValueError as e:
        raise ValueError(f"expected_shapes: {e}") from None
    return cls.hf_shapes(config)


def check_tensors(config: Config, tensors: dict[str, np.ndarray], source="tensors") -> dict[str, np.ndarray]:
    """Check checkpoint tensors against :func:`expected_shapes`; return them by canonical name.

    ``source`` (a file or folder) is named in every error. Missing, unexpected and wrongly shaped tensors
    raise a ValueError naming the tensor. The returned dict drops the buffers the architecture ignores
    (``hf_ignored``: causal masks, rotary tables, position ids), adds the base-model prefix when a
    checkpoint omits it (``h.0...`` -> ``transformer.h.0...``), and drops a ``lm_head.weight`` that
    equals the embedding of a tied model (a different one raises). Optional tensors (BERT's pooler) may
    be absent.
    """
    cls = architecture_of(config)
    expected = cls.hf_shapes(config)
    if not isinstance(tensors, dict):
        raise ValueError(f"{source}: expected a dict of tensors, got {type(tensors).__name__}")
    prefix = cls.hf_base_prefix
    if prefix and tensors and not any(k.startswith(prefix) for k in tensors):
        tensors = {(k if k.startswith("lm_head.") else prefix + k): v for k, v in tensors.items()}
    ignored = re.compile("|".join(f"(?:{p})" for p in cls.hf_ignored) or r"(?!)")
    params = {k: v for k, v in tensors.items() if not ignored.fullmatch(k)}
    emb = cls.hf_embedding
    if "lm_head.weight" in params and "lm_head.weight" not in expected and emb in params:
        head, table = params["lm_head.weight"], params[emb]
        if np.shape(head) == np.shape(table) and np.array_equal(head, table):
            del params["lm_head.weight"]
        else:
            raise ValueError(f"{source}: tensor 'lm_head.weight' differs from {emb!r}, but the config ties the "
                             "embeddings (tie_word_embeddings=true)")
    missing = [k for k in expected if k not in params and k not in cls.hf_optional]
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


def load_pretrained(path) -> Architecture:
    """Read a Hugging Face folder (``config.json`` + safetensors, sharded or not) into the matching model.

    Supported: ``LlamaForCausalLM``, ``GPT2LMHeadModel`` and ``BertModel`` (its pooler is skipped).
    Errors name the file and the tensor.
    """
    hf_config, tensors = read_hf_folder(path)
    config = config_from_hf(hf_config)
    cls = architecture_of(config)
    params = cls.from_hf_tensors(check_tensors(config, tensors, source=str(path)))
    model = cls(config)
    model.load_parameters(params)
    return model


def save_pretrained(model: Architecture, path) -> None:
    """Write ``model`` as a Hugging Face folder (``config.json`` + ``model.safetensors``), atomically."""
    if not isinstance(model, Architecture):
        raise TypeError(f"model: expected one of {', '.join(a.__name__ for a in ARCHITECTURES)}, "
                        f"got {type(model).__name__}")
    write_hf_folder(Path(path), model.config.to_hf(), type(model).to_hf_tensors(model.parameters()))
