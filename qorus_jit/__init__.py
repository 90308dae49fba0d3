"""Qorus: a JIT-compiled, pure-Python deep-learning framework on numba kernels.

Every name a user imports is exported here and listed in ``__all__`` (the one list of the public API);
the subpackages hold the code, from the bottom up: ``core`` (dtypes, the kernel decorator, threads,
checks), ``kernels``, ``formats``, ``layers``, ``tokenizers``, ``models``, ``data``, ``train``, ``infer``
and the ``qorus`` command (``cli``). docs/design.md maps them.
"""

import os as _os

# Waiting threads must not spin long, or numba's and the BLAS's workers keep each other off the cores
# (docs/design.md, "Threads on a shared machine"). Read when the libraries load; values already set win.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# The public names, by the module that defines them. They load on first use (PEP 562), so `import qorus_jit`
# and the `qorus` command start without numba; the command prints its first line before the kernels load.
_EXPORTS = {
    "qorus_jit.core.numerics": ("DTYPE", "FASTMATH", "get_num_threads", "set_num_threads"),
    "qorus_jit.data": ("ArrayDataset", "InstructDataset", "TextDataset", "default_corpus", "train_test_split"),
    "qorus_jit.infer.embeddings": ("SentenceEncoder", "embed"),
    "qorus_jit.infer.generate": ("generate", "generate_text", "sample_text", "warm_up"),
    "qorus_jit.models.sources": ("load_source",),
    "qorus_jit.layers": (
        "GELU", "Activation", "Add", "DecodeState", "Embedding", "FeedForward", "Graph", "KVCache", "Layer",
        "LayerNorm", "Linear", "LoRALinear", "MultiHeadAttention", "PositionEmbedding", "QuantizedEmbedding",
        "QuantizedLinear", "ReLU", "RMSNorm", "Sequential", "SiLU", "Softmax", "Swish", "TransformerBlock",
        "apply_lora", "load_lora", "merge_lora", "save_lora",
    ),
    "qorus_jit.models": (
        "GPT2", "MLP", "Bert", "BertConfig", "GPT2Config", "Llama", "LlamaConfig", "load_pretrained", "mean_pool",
        "save_pretrained",
    ),
    "qorus_jit.models.llama": ("load_llama2c", "save_llama2c"),
    "qorus_jit.models.quantize": ("quantize_model", "save_quantized"),
    "qorus_jit.tokenizers": ("BPETokenizer", "ByteTokenizer", "Llama2cTokenizer", "load_tokenizer"),
    "qorus_jit.train": (
        "SGD", "Adam", "AdamW", "ConfigError", "CrossEntropyLoss", "MSELoss", "Optimizer", "Profile", "Run",
        "TrainConfig", "Trainer", "TrainingError", "constant", "cosine", "decay_groups", "linear", "make_loss",
        "make_schedule", "profile", "resume_run", "start_run", "step_decay", "warmup", "warmup_cosine",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
# Modules exported whole: ``from qorus_jit import distributed as dist`` (Horovod's init, rank, size, allreduce).
_MODULES = {"distributed": "qorus_jit.core.distributed"}

__version__ = "0.1.0"

__all__ = [*_MODULE_OF, *_MODULES, "__version__"]  # the one list of the public API


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None and name not in _MODULES:
        raise AttributeError(f"module 'qorus_jit' has no attribute {name!r}")
    import importlib

    if module is None:
        value = importlib.import_module(_MODULES[name])
    else:
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

