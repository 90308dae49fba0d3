"""Fixtures shared by the tokenizer and dataset tests, and the suite's peak-memory check."""

import os
import resource
import sys

# The suite runs at a fixed thread count (every core), so that results do not depend on the machine's load; the
# auto policy's own tests turn it on (tests/test_threads.py). Set before qorus_jit loads: subprocesses inherit it.
os.environ.setdefault("QORUS_THREADS", str(os.cpu_count() or 1))

import pytest  # noqa: E402

from qorus_jit.data import default_corpus  # noqa: E402
from qorus_jit.tokenizers import BPETokenizer  # noqa: E402


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


#: The suite's memory bar: it must run on a 16 GB laptop next to an editor and a browser.
PEAK_RSS_LIMIT_GB = 4.0


def _peak_rss_gb() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child process, in GB (Linux: KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 1e9
    return own, child


def pytest_terminal_summary(terminalreporter):
    own, child = _peak_rss_gb()
    terminalreporter.write_line(f"peak RSS: {own:.2f} GB in the test process, {child:.2f} GB in the largest "
                                f"subprocess (limit {PEAK_RSS_LIMIT_GB:g} GB"
                                f"{'; OVER IT: the run fails' if max(own, child) > PEAK_RSS_LIMIT_GB else ''})")


def pytest_sessionfinish(session):
    own, child = _peak_rss_gb()
    if max(own, child) > PEAK_RSS_LIMIT_GB and session.exitstatus == 0:
        session.exitstatus = 1  # reported by pytest_terminal_summary; a suite over the bar fails
