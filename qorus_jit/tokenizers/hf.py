"""A tokenizer's files in a Hugging Face folder (what ``save_pretrained``, ``qorus export`` and ``qorus quantize``
write beside the weights)."""

from __future__ import annotations

import json

from qorus_jit.tokenizers.bpe import BPETokenizer
from qorus_jit.tokenizers.byte import ByteTokenizer


def hf_tokenizer_files(tokenizer, max_len: int) -> dict[str, str]:
    """``tokenizer.json`` and ``tokenizer_config.json`` (name -> text) for a Hugging Face folder: a
    ``PreTrainedTokenizerFast`` over ``tokenizer``'s own ids, no special tokens added, texts up to ``max_len``
    tokens, with the chat template and special token names a BPE tokenizer brought from its folder."""
    if isinstance(tokenizer, ByteTokenizer):
        text = tokenizer.to_hf_json()
    elif isinstance(tokenizer, BPETokenizer):
        text = tokenizer.to_json()
    else:
        raise TypeError(f"tokenizer: expected a ByteTokenizer or BPETokenizer (what a Hugging Face folder can "
                        f"hold), got {type(tokenizer).__name__}")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": int(max_len),
              "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False}
    if isinstance(tokenizer, BPETokenizer):
        config.update(tokenizer.tokenizer_config())  # its chat template and special token names
    return {"tokenizer.json": text, "tokenizer_config.json": json.dumps(config, indent=2, allow_nan=False) + "\n"}
