"""The default corpus of ``qorus train``: text that every Python installation carries."""

from __future__ import annotations


def default_corpus() -> tuple[str, str]:
    """``(name, text)`` of a corpus every Python installation carries: the documentation topics of the
    standard library (``pydoc_data.topics.topics``, the text behind ``help("for")``), joined in sorted
    topic order with a blank line between topics. About half a megabyte of English prose and code.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise ImportError("default_corpus: this Python installation lacks pydoc_data (the standard library's "
                          "documentation topics); pass a text file instead") from None
    text = "\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"
    return "pydoc_data.topics", text
