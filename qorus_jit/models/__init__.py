"""The model library: architectures built from the layers through the graph, and Hugging Face folders."""

from .bert import Bert, mean_pool
from .configs import BertConfig, GPT2Config, LlamaConfig
from .gpt2 import GPT2
from .llama import Llama
from .mlp import MLP
from .pretrained import load_pretrained, save_pretrained

__all__ = [
    "GPT2", "MLP", "Bert", "BertConfig", "GPT2Config", "Llama", "LlamaConfig", "load_pretrained", "mean_pool",
    "save_pretrained",
]
