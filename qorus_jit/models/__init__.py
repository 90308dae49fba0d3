"""The model library: architectures built from the layers through the graph, and Hugging Face folders."""

from qorus_jit.models.bert import Bert, mean_pool
from qorus_jit.models.configs import BertConfig, GPT2Config, LlamaConfig
from qorus_jit.models.gpt2 import GPT2
from qorus_jit.models.llama import Llama
from qorus_jit.models.mlp import MLP
from qorus_jit.models.pretrained import load_pretrained, save_pretrained

__all__ = [
    "GPT2", "MLP", "Bert", "BertConfig", "GPT2Config", "Llama", "LlamaConfig", "load_pretrained", "mean_pool",
    "save_pretrained",
]
