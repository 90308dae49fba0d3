"""The model library: architecture configs now; models and ``load_pretrained`` follow."""

from .configs import BertConfig, GPT2Config, LlamaConfig

__all__ = ["BertConfig", "GPT2Config", "LlamaConfig"]
