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

from qorus_jit.core.numerics import DTYPE, FASTMATH, get_num_threads, set_num_threads  # noqa: E402
from qorus_jit.data import ArrayDataset, TextDataset, default_corpus, train_test_split  # noqa: E402
from qorus_jit.infer.embeddings import SentenceEncoder, embed  # noqa: E402
from qorus_jit.infer.generate import generate, generate_text, sample_text, warm_up  # noqa: E402
from qorus_jit.infer.sources import load_source  # noqa: E402
from qorus_jit.layers import (  # noqa: E402
    GELU,
    Activation,
    Add,
    DecodeState,
    Embedding,
    FeedForward,
    Graph,
    KVCache,
    Layer,
    LayerNorm,
    Linear,
    MultiHeadAttention,
    PositionEmbedding,
    ReLU,
    RMSNorm,
    Sequential,
    SiLU,
    Softmax,
    Swish,
    TransformerBlock,
)
from qorus_jit.models import (  # noqa: E402
    GPT2,
    MLP,
    Bert,
    BertConfig,
    GPT2Config,
    Llama,
    LlamaConfig,
    load_pretrained,
    mean_pool,
    save_pretrained,
)
from qorus_jit.models.llama import load_llama2c, save_llama2c  # noqa: E402
from qorus_jit.tokenizers import BPETokenizer, ByteTokenizer, Llama2cTokenizer, load_tokenizer  # noqa: E402
from qorus_jit.train import (  # noqa: E402
    SGD,
    Adam,
    AdamW,
    ConfigError,
    CrossEntropyLoss,
    MSELoss,
    Optimizer,
    Profile,
    Run,
    TrainConfig,
    Trainer,
    TrainingError,
    constant,
    cosine,
    decay_groups,
    linear,
    make_loss,
    make_schedule,
    profile,
    resume_run,
    start_run,
    step_decay,
    warmup,
    warmup_cosine,
)

__version__ = "0.1.0"

__all__ = [
    # numerics and threads
    "DTYPE", "FASTMATH", "get_num_threads", "set_num_threads",
    # layers and the graph
    "Activation", "Add", "DecodeState", "Embedding", "FeedForward", "GELU", "Graph", "KVCache", "Layer", "LayerNorm",
    "Linear", "MultiHeadAttention", "PositionEmbedding", "RMSNorm", "ReLU", "Sequential", "SiLU", "Softmax", "Swish",
    "TransformerBlock",
    # models and their files
    "Bert", "BertConfig", "GPT2", "GPT2Config", "Llama", "LlamaConfig", "MLP", "load_llama2c", "load_pretrained",
    "mean_pool", "save_llama2c", "save_pretrained",
    # tokenizers and data
    "BPETokenizer", "ByteTokenizer", "Llama2cTokenizer", "load_tokenizer", "ArrayDataset", "TextDataset",
    "default_corpus", "train_test_split",
    # training
    "Adam", "AdamW", "ConfigError", "CrossEntropyLoss", "MSELoss", "Optimizer", "Profile", "Run", "SGD",
    "TrainConfig", "Trainer", "TrainingError", "constant", "cosine", "decay_groups", "linear", "make_loss",
    "make_schedule", "profile", "resume_run", "start_run", "step_decay", "warmup", "warmup_cosine",
    # inference
    "SentenceEncoder", "embed", "generate", "generate_text", "load_source", "sample_text", "warm_up",
    "__version__",
]
