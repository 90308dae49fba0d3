"""Fixtures shared by the tokenizer and dataset tests."""

import pytest

from qorus_jit.data import default_corpus
from qorus_jit.tokenizers import BPETokenizer


@pytest.fixture(scope="module")
def tk():
    """The optional tokenizers package (the test is skipped without it)."""
    return pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def corpus():
    """The default corpus's text."""
    return default_corpus()[1]


@pytest.fixture(scope="module")
def bpe(tk, corpus):
    """A BPE tokenizer of 800 ids trained on the corpus."""
    return BPETokenizer.train([corpus], vocab_size=800)
