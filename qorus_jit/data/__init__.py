"""Datasets for training: pure NumPy, deterministic and exactly resumable. They hand out C-contiguous
mini-batches:

- :class:`TextDataset`: next-token windows ``(x, y)`` of shape ``(B, T)`` from one token stream, random
  training windows and a fixed set of held-out validation windows; token files are memory-mapped ``.npy``.
- :class:`InstructDataset`: JSONL prompt/completion pairs as padded ``(x, y)`` rows whose targets count the
  completion only (the prompt and the padding get the ignore index -100).
- :class:`ArrayDataset`: shuffled epochs of ``(X, y)`` arrays; :func:`train_test_split` splits them.
- :func:`default_corpus`: the text ``qorus train`` uses when given none.

Every stateful object has ``state_dict()`` (plain JSON types) and ``load_state_dict(d)``: after loading,
the batches continue exactly as an uninterrupted run would. Nothing is pickled: ``.npy`` files are read
with ``allow_pickle=False``. The tokenizers are in :mod:`qorus_jit.tokenizers`.
"""

from qorus_jit.data.arrays import ArrayDataset, train_test_split
from qorus_jit.data.corpus import default_corpus
from qorus_jit.data.instruct import InstructDataset
from qorus_jit.data.text import MMAP_THRESHOLD, TextDataset

__all__ = ["MMAP_THRESHOLD", "ArrayDataset", "InstructDataset", "TextDataset", "default_corpus", "train_test_split"]
