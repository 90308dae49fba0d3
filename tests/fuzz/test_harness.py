"""The harness itself: it names arguments as the suite's rules say, and sees every class of failure (a signal
pinned to its case, a hang, a wrong exception class, an unnamed error, a silent acceptance, a wrong result)."""

from tests.fuzz.harness import names_in, run_surface


def test_names_in():
    assert names_in("x: expected a numpy array, got list", ["x"])
    assert names_in("LlamaConfig.dim: expected an int >= 1, got 0", ["dim"])
    assert names_in("eps must be positive", ["eps"])
    assert names_in("unknown key 'top_k'", ["top_k"])
    assert names_in("/tmp/run/config.json: not valid JSON", ["config.json"])
    assert names_in("error: invalid value for '--top-k': 0 is not >= 1", ["--top-k"])
    assert not names_in("expected a numpy array", ["a"])  # the article is not the argument a
    assert not names_in("index out of range", ["out"])
    assert not names_in("the sequence length 3", ["length"])
    assert not names_in("--top-kk: bad", ["--top-k"])
    assert not names_in("x: bad", ["dx"])


def test_every_class_of_failure_is_seen():
    n, failures, stats = run_surface("selftest", timeout=10)
    kinds = {f["id"].split("/")[1]: f["kind"] for f in failures}
    assert n == 17
    assert kinds == {
        "unnamed": "unnamed", "exception": "exception:KeyError", "numba": "exception:TypingError",
        "accepted": "accepted", "wrong-result": "wrong-result", "refused": "refused",
        "memory": "exception:MemoryError", "recursion": "exception:RecursionError", "exit": "exception:SystemExit",
        "segfault": "signal", "abort": "signal", "hang": "timeout",
    }
    segv = next(f for f in failures if f["id"] == "selftest/segfault")
    assert "SIGSEGV" in segv["detail"] and segv["detail"].startswith("alone:")
    assert stats["pinned"] == 2
