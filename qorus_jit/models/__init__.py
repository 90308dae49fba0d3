"""The model library: architectures built from the layers through the graph, and Hugging Face folders."""

from .configs import BertConfig, GPT2Config, LlamaConfig
from .gpt2 import GPT2
from .llama import Llama
from .mlp import MLP
from .pretrained import load_pretrained, save_pretrained

__all__ = ["GPT2", "BertConfig", "GPT2Config", "Llama", "LlamaConfig", "MLP", "load_pretrained", "save_pretrained"]
