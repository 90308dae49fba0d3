"""The token cache of TextDataset.from_text_file is checked on reuse: its name carries the count and CRC-32
of the ids it holds, so a stale, damaged or planted file under the right name is tokenized again and
rewritten, silently; a cache that cannot be written is one error naming it and the OS's reason. The expected
ids are the text's bytes (the byte tokenizer), read independently."""

import errno
import os
import re
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from qorus_jit.cli import main
from qorus_jit.data import TextDataset
from qorus_jit.tokenizers.byte import ByteTokenizer


class Counting(ByteTokenizer):
    """The byte tokenizer, counting its encode calls (a reuse of the cache makes none)."""

    calls = 0

    def encode(self, text):
        Counting.calls += 1
        return super().encode(text)


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_bytes(("The quick brown fox jumps over the lazy dog. " * 200 + "unicode \u2713 \u65e5\u672c\n").encode())
    return f


def expected(text_file) -> np.ndarray:
    return np.frombuffer(text_file.read_bytes(), np.uint8)


def load(text_file, cache):
    Counting.calls = 0
    return TextDataset.from_text_file(text_file, Counting(), seq_len=16, cache_dir=cache)


def cache_files(cache):
    return sorted(cache.iterdir())


def test_the_name_carries_the_hash_of_the_ids_and_a_good_cache_is_reused(text_file, tmp_path):
    cache = tmp_path / "cache"
    ds = load(text_file, cache)
    assert Counting.calls == 1
    (file,) = cache_files(cache)
    ids = expected(text_file).astype(np.uint16)
    assert re.fullmatch(rf"corpus\.byte\.[0-9a-f]{{16}}\.{ids.size}\.{zlib.crc32(ids.tobytes()):08x}\.npy",
                        file.name), file.name
    np.testing.assert_array_equal(ds.tokens, ids)
    again = load(text_file, cache)
    assert Counting.calls == 0 and isinstance(again.tokens, np.memmap)  # reused, not tokenized
    np.testing.assert_array_equal(again.tokens, ids)


def plant(file, arr):
    with open(file, "wb") as f:
        np.save(f, arr, allow_pickle=False)


DAMAGE = {
    "other_ids": lambda file, ids: plant(file, (ids + 1).astype(np.uint16)),  # same length, other content
    "fewer_ids": lambda file, ids: plant(file, ids[:-10]),
    "wrong_dtype": lambda file, ids: plant(file, ids.astype(np.int32)),
    "two_d": lambda file, ids: plant(file, ids[: len(ids) // 2 * 2].reshape(2, -1)),
    "cut": lambda file, ids: file.write_bytes(file.read_bytes()[: file.stat().st_size // 2]),
    "garbage": lambda file, ids: file.write_bytes(b"\x93NUMPY garbage \xff"),
    "empty": lambda file, ids: file.write_bytes(b""),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_or_planted_cache_under_the_right_name_is_rebuilt(text_file, tmp_path, damage):
    cache = tmp_path / "cache"
    load(text_file, cache)
    (file,) = cache_files(cache)
    ids = np.load(file)
    DAMAGE[damage](file, ids)
    ds = load(text_file, cache)
    assert Counting.calls == 1  # tokenized again, without an error
    np.testing.assert_array_equal(ds.tokens, expected(text_file))
    assert cache_files(cache) == [file]  # rewritten under its name, nothing else left
    np.testing.assert_array_equal(np.load(file), expected(text_file))
    load(text_file, cache)
    assert Counting.calls == 0  # and reused from then on


def test_a_stale_cache_of_the_older_naming_is_replaced(text_file, tmp_path):
    cache = tmp_path / "cache"
    load(text_file, cache)
    (file,) = cache_files(cache)
    old = file.with_name(file.name.rsplit(".", 3)[0] + ".npy")  # corpus.byte.KEY.npy, nothing of the ids
    plant(old, np.zeros(100, np.uint16))
    file.unlink()
    ds = load(text_file, cache)
    assert Counting.calls == 1
    np.testing.assert_array_equal(ds.tokens, expected(text_file))
    assert cache_files(cache) == [file]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_cache_that_cannot_be_written(text_file, tmp_path, monkeypatch, code):
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(".npy"):
            raise OSError(code, os.strerror(code), src)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match=rf"^cannot write the token cache {re.escape(str(cache))}/corpus\.byte\.\S+\.npy "
                                      rf"\({os.strerror(code)}\)$"):
        load(text_file, cache)
    assert cache_files(cache) == []  # no temporary file left
    # the default folder: the message says how to choose another
    monkeypatch.setenv("QORUS_CACHE_DIR", str(tmp_path / "default"))
    with pytest.raises(OSError, match=r"; QORUS_CACHE_DIR can name another folder$"):
        TextDataset.from_text_file(text_file, "byte", seq_len=16, mmap_threshold=100)
    # qorus train: one line, nothing left behind
    monkeypatch.chdir(tmp_path)
    # a text this short goes to the cache when the threshold is 100 tokens
    monkeypatch.setitem(TextDataset.from_text_file.__func__.__kwdefaults__, "mmap_threshold", 100)
    res = CliRunner().invoke(main, ["train", "--data", str(text_file), "--seq-len", "8", "--dim", "16", "--n-heads",
                                    "2", "--hidden-dim", "32", "--n-layers", "1", "--batch-size", "2",
                                    "--eval-batches", "1", "--steps", "2", "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.stderr.count("\n") == 1
    assert res.stderr.startswith("error: data: cannot write the token cache ") and os.strerror(code) in res.stderr
    assert not (tmp_path / "runs").exists()
