"""The model library: one module per architecture (config, model, Hugging Face names), built from the layers
through the graph; ``registry`` lists them and loads and saves Hugging Face folders."""

from qorus_jit.models.bert import Bert, BertConfig, mean_pool
from qorus_jit.models.gpt2 import GPT2, GPT2Config
from qorus_jit.models.llama import Llama, LlamaConfig
from qorus_jit.models.mlp import MLP
from qorus_jit.models.registry import load_pretrained, save_pretrained

__all__ = [
    "GPT2", "MLP", "Bert", "BertConfig", "GPT2Config", "Llama", "LlamaConfig", "load_pretrained", "mean_pool",
    "save_pretrained",
]
