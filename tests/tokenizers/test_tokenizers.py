"""qorus_jit.tokenizers: the byte and BPE tokenizers and load_tokenizer, checked against independent references.

References: Python's own UTF-8 codec for the byte tokenizer, the ``tokenizers`` library used directly for
BPE. llama2.c's tokenizer is tested in tests/test_llama2c.py.
"""

from __future__ import annotations

import doctest
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import qorus_jit.tokenizers
from qorus_jit.tokenizers import BPETokenizer, ByteTokenizer, Llama2cTokenizer, load_tokenizer
from qorus_jit.tokenizers._common import check_text

SAMPLES = [
    "",
    "hello, world",
    "héllo wörld: ça va? ñ",
    "日本語のテキスト、中文，한국어",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "control \x00\x01\t\r\n\x7f and combining e\u0301 a\u030a",
    "math ∑∫√∞ ≠ ≤, arrows ← → and \U0001f600\U0010ffff",
    "  leading and trailing spaces  \n\n\n",
]


def random_unicode(rng, n):
    """``n`` random code points (any plane), surrogates excluded: always valid Unicode."""
    cps = rng.integers(1, 0x110000, size=n)
    cps = np.where((cps >= 0xD800) & (cps <= 0xDFFF), cps - 0x800, cps)
    return "".join(map(chr, cps.tolist()))


def json_round_trip(state):
    return json.loads(json.dumps(state))


# ------------------------------------------------------------------------------------------ ByteTokenizer


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_tokenizer_matches_utf8_and_round_trips(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text
    assert tok.vocab_size == 256 and tok.name == "byte"


def test_byte_tokenizer_random_unicode():
    rng = np.random.default_rng(1)
    tok = ByteTokenizer()
    for _ in range(20):
        text = random_unicode(rng, 200)
        ids = tok.encode(text)
        assert ids.tolist() == list(text.encode("utf-8"))
        assert tok.decode(ids) == text


def test_byte_tokenizer_decodes_any_byte_sequence():
    tok = ByteTokenizer()
    for raw in (b"\xff\xfe", b"abc\xc3(", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80" * 5):
        assert tok.decode(np.frombuffer(raw, np.uint8)) == raw.decode("utf-8", errors="replace")
    rng = np.random.default_rng(2)
    for _ in range(50):
        raw = rng.integers(0, 256, size=64).astype(np.uint8).tobytes()
        assert tok.decode(np.frombuffer(raw, np.uint8).astype(np.int64)) == raw.decode("utf-8", errors="replace")


def test_byte_tokenizer_errors():
    tok = ByteTokenizer()
    with pytest.raises(TypeError, match="text"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="text.*surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(ValueError, match=r"ids.*\[0, 256\).*256"):
        tok.decode([65, 256])
    with pytest.raises(ValueError, match="ids.*-1"):
        tok.decode(np.array([-1, 3]))
    with pytest.raises(ValueError, match="ids.*1-D"):
        tok.decode(np.zeros((2, 2), np.int32))
    with pytest.raises(TypeError, match="ids.*integer"):
        tok.decode(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="ids"):
        tok.decode("abc")


def test_byte_tokenizer_save_and_load(tmp_path):
    tok = ByteTokenizer()
    file = tok.save(tmp_path / "tok.json")
    assert file == tmp_path / "tok.json"
    assert json.loads(file.read_text())["vocab_size"] == 256
    assert isinstance(load_tokenizer(file), ByteTokenizer)
    written = tok.save(tmp_path)  # a folder: tokenizer.json inside
    assert written == tmp_path / "tokenizer.json"
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------------------------------- BPETokenizer




def test_bpe_round_trips_and_compresses(bpe, corpus):
    ids = bpe.encode(corpus)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.min() >= 0 and ids.max() < bpe.vocab_size
    assert len(ids) < 0.6 * len(corpus.encode("utf-8"))  # merges learnt
    assert bpe.decode(ids) == corpus
    assert 256 < bpe.vocab_size <= 800


@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_round_trips_unseen_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_round_trips_random_unicode(bpe):
    rng = np.random.default_rng(3)
    for _ in range(10):
        text = random_unicode(rng, 300)
        assert bpe.decode(bpe.encode(text)) == text


def test_bpe_is_byte_level(bpe, tk):
    vocab = bpe.tokenizer.get_vocab()
    alphabet = tk.pre_tokenizers.ByteLevel.alphabet()
    assert len(alphabet) == 256
    assert all(ch in vocab for ch in alphabet)


def test_bpe_training_is_deterministic(bpe, corpus):
    again = BPETokenizer.train([corpus], vocab_size=800)
    assert again.to_json() == bpe.to_json()
    assert again.fingerprint == bpe.fingerprint


def test_bpe_trains_from_files_like_from_texts(tmp_path, tk, corpus):
    text = corpus[:50_000]
    f = tmp_path / "part.txt"
    f.write_text(text, encoding="utf-8")
    from_file = BPETokenizer.train([f], vocab_size=400)
    from_text = BPETokenizer.train(text, vocab_size=400)
    assert from_file.to_json() == from_text.to_json()


def test_bpe_save_load_identical_ids(bpe, tk, corpus, tmp_path):
    file = bpe.save(tmp_path / "tokenizer.json")
    loaded = BPETokenizer.load(file)
    text = corpus[:20_000] + "".join(SAMPLES)
    want = bpe.encode(text)
    np.testing.assert_array_equal(loaded.encode(text), want)
    # the tokenizers library itself reads the file and encodes the same
    direct = tk.Tokenizer.from_file(str(file))
    assert direct.encode(text, add_special_tokens=False).ids == want.tolist()
    assert loaded.vocab_size == direct.get_vocab_size()
    assert loaded.decode(want) == text
    # folder forms
    folder = tmp_path / "model"
    folder.mkdir()
    bpe.save(folder)
    for tok in (BPETokenizer.from_folder(folder), BPETokenizer.load(folder), load_tokenizer(folder),
                load_tokenizer(folder / "tokenizer.json"), load_tokenizer(str(folder))):
        assert isinstance(tok, BPETokenizer)
        np.testing.assert_array_equal(tok.encode(text), want)


def test_bpe_reads_a_tokenizer_json_built_by_the_library(tk, tmp_path):
    # A WordLevel tokenizer made with the library alone: ids are fixed by its vocabulary.
    vocab = {"[UNK]": 0, "the": 1, "cat": 2, "sat": 3}
    raw = tk.Tokenizer(tk.models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = BPETokenizer.from_folder(tmp_path)
    assert tok.encode("the cat sat dog").tolist() == [1, 2, 3, 0]
    assert tok.vocab_size == 4


def test_bpe_missing_files(tk, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_folder"):
        BPETokenizer.from_folder(tmp_path / "missing_folder")
    empty = tmp_path / "no_tok"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json in .*no_tok"):
        BPETokenizer.from_folder(empty)
    (empty / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        BPETokenizer.from_folder(empty)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        BPETokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("not json at all")
    with pytest.raises(ValueError, match="bad.json"):
        BPETokenizer.load(bad)
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(bad)
    with pytest.raises(FileNotFoundError, match="spec.*nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="spec.*no_tok"):
        load_tokenizer(empty)
    with pytest.raises(TypeError, match="spec"):
        load_tokenizer(3)


def test_bpe_bad_arguments(bpe, tk, tmp_path):
    with pytest.raises(ValueError, match="vocab_size.*256"):
        BPETokenizer.train(["some text"], vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(["some text"], vocab_size=0)
    with pytest.raises(ValueError, match="texts_or_files"):
        BPETokenizer.train([], vocab_size=300)
    with pytest.raises(TypeError, match=r"texts_or_files\[1\]"):
        BPETokenizer.train(["ok", 3], vocab_size=300)
    with pytest.raises(FileNotFoundError, match=r"texts_or_files\[0\].*absent"):
        BPETokenizer.train([tmp_path / "absent.txt"], vocab_size=300)
    with pytest.raises(ValueError, match="min_frequency"):
        BPETokenizer.train(["some text"], vocab_size=300, min_frequency=-1)
    with pytest.raises(ValueError, match="ids"):
        bpe.decode([bpe.vocab_size])
    with pytest.raises(TypeError, match="text"):
        bpe.encode(None)
    with pytest.raises(TypeError, match="tokenizer"):
        BPETokenizer("not a tokenizer")


def test_bpe_special_tokens(tk, corpus):
    tok = BPETokenizer.train([corpus[:30_000]], vocab_size=400, special_tokens=["<|endoftext|>"])
    eot = tok.tokenizer.token_to_id("<|endoftext|>")
    assert eot == 0
    text = "first document<|endoftext|>second document"
    ids = tok.encode(text)
    assert eot in ids.tolist()
    assert tok.decode(ids) == text
    assert "<|endoftext|>" not in tok.decode(ids, skip_special_tokens=True)


class _CountingTokenizer:
    """Proxy of a tokenizers.Tokenizer that counts the texts it is asked to encode."""

    def __init__(self, inner):
        self.inner = inner
        self.pieces = 0

    def encode(self, text, **kw):
        self.pieces += 1
        return self.inner.encode(text, **kw)

    def encode_batch(self, texts, **kw):
        self.pieces += len(texts)
        return self.inner.encode_batch(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_bpe_long_text_in_pieces_equals_one_call(bpe, tk, corpus, tmp_path):
    text = corpus + "\n".join(SAMPLES) + "tail\nend"
    whole = tk.Tokenizer.from_str(bpe.to_json()).encode(text, add_special_tokens=False).ids
    counting = _CountingTokenizer(bpe.tokenizer)
    bpe._tok = counting
    try:
        got = bpe._encode(text, chunk_chars=1000)
    finally:
        bpe._tok = counting.inner
    assert counting.pieces > 100  # really split
    assert got.tolist() == whole


def test_bpe_not_split_when_splitting_could_change_ids(tk, corpus):
    # a prefix space is added to every piece: such a tokenizer is encoded in one call
    raw = tk.Tokenizer(tk.models.BPE())
    raw.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=True)
    raw.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=400, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
    raw.train_from_iterator([corpus[:30_000]], trainer=trainer)
    tok = BPETokenizer(raw)
    text = corpus[:30_000]
    got = tok._encode(text, chunk_chars=500)
    assert got.tolist() == raw.encode(text, add_special_tokens=False).ids


def test_bpe_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r'pip install "qorus-jit\[bpe\]"'):
        BPETokenizer.train(["text"], vocab_size=300)


# --------------------------------------------------------------------------------------------- the package


def modules():
    """Every module of qorus_jit.tokenizers, imported."""
    folder = Path(qorus_jit.tokenizers.__file__).parent
    return [qorus_jit.tokenizers] + [importlib.import_module(f"qorus_jit.tokenizers.{p.stem}")
                               for p in sorted(folder.glob("*.py")) if p.stem != "__init__"]


def test_docstring_examples_run():
    pytest.importorskip("tokenizers")  # the BPETokenizer example
    results = [doctest.testmod(m, optionflags=doctest.NORMALIZE_WHITESPACE) for m in modules()]
    assert sum(r.attempted for r in results) >= 8 and sum(r.failed for r in results) == 0


def test_no_pickle_in_the_package():
    for m in modules():
        source = Path(m.__file__).read_text()
        assert "import pickle" not in source and "allow_pickle=True" not in source, m.__name__


@pytest.mark.parametrize("content", [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{}", b'{"a": 1' + b"1" * 5000 + b"}"])
def test_load_tokenizer_refuses_unreadable_json_naming_the_file(tmp_path, content):
    """Deep nesting, bytes that are not UTF-8 and an integer too long to convert: one ValueError naming the file."""
    file = tmp_path / "tokenizer.json"
    file.write_bytes(content)
    with pytest.raises(ValueError, match=r"tokenizer\.json: not valid JSON"):
        load_tokenizer(file)


# -- malformed inputs (fuzz wave 1)


@pytest.mark.parametrize("text, index", [("a\ud800b", 1), ("\udfff", 0), ("caf\xe9 \ud83d", 5),
                                         ("\xe9" * (1 << 20) + "x\udc80", (1 << 20) + 1)])
def test_a_lone_surrogate_is_refused_naming_the_text(bpe, text, index):
    msg = rf"^text: expected valid Unicode, got a lone surrogate at index {index}$"
    for tok in (bpe, ByteTokenizer()):  # the same message from every tokenizer
        with pytest.raises(ValueError, match=msg):
            tok.encode(text)
    assert check_text("text", "caf\xe9 \U0001f600") == "caf\xe9 \U0001f600"  # a pair is fine


def test_load_tokenizer_names_the_callers_argument(tmp_path):
    with pytest.raises(TypeError, match="^tokenizer: expected 'byte'"):
        load_tokenizer(None, "tokenizer")
    with pytest.raises(FileNotFoundError, match="^tok: .*nowhere"):
        load_tokenizer(tmp_path / "nowhere", "tok")


@pytest.mark.parametrize("pieces, error, name", [(None, TypeError, "pieces"), (3, TypeError, "pieces"),
                                                 ("abc", TypeError, "pieces"), (b"abc", TypeError, "pieces"),
                                                 (["<unk>", "<s>", 3], TypeError, r"pieces\[2\]"),
                                                 (["<unk>", "<s>", "a\ud800"], ValueError, r"pieces\[2\]")])
def test_llama2c_tokenizer_names_bad_pieces(pieces, error, name):
    with pytest.raises(error, match=f"^{name}: expected"):
        Llama2cTokenizer(pieces, [0.0, 0.0, 0.0])


def test_llama2c_tokenizer_names_bad_scores_and_takes_numpy_ints():
    pieces = [b"<unk>", b"<s>", b"</s>", b"ab"]
    with pytest.raises(TypeError, match="^scores: expected"):
        Llama2cTokenizer(pieces, ["x", 0, 0, 0])
    scores = np.zeros(4, np.float32)
    tok = Llama2cTokenizer(iter(pieces), scores, max_token_length=np.int64(5))
    assert tok.max_token_length == 5 and tok.pieces == tuple(pieces)
    assert scores.flags.writeable  # the caller's array is copied, not made read-only
