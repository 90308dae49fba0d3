"""qorus_jit.data: text and array datasets and the default corpus, checked against independent references.

References: the token array itself for every dataset window, Python's UTF-8 codec and the ``tokenizers``
library for tokenized files, and set/permutation arithmetic for the epochs.
"""

from __future__ import annotations

import doctest
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

import qorus_jit.data
from qorus_jit.data import ArrayDataset, TextDataset, default_corpus, train_test_split
from qorus_jit.tokenizers import ByteTokenizer


def json_round_trip(state):
    return json.loads(json.dumps(state))


def windows_of(tokens, width):
    return np.lib.stride_tricks.sliding_window_view(np.asarray(tokens), width)





# --------------------------------------------------------------------------------------------- TextDataset


def unique_tokens(n):
    return np.arange(n, dtype=np.int64)


def test_text_dataset_windows_are_train_slices():
    n, T = 1000, 16
    ds = TextDataset(unique_tokens(n), seq_len=T, val_fraction=0.1, seed=0)
    n_train = 900  # the last 10% is validation
    assert (ds.n_train, ds.n_val) == (n_train, 100)
    for _ in range(20):
        x, y = ds.train_batch(8)
        for a in (x, y):
            assert a.shape == (8, T) and a.dtype == np.int32 and a.flags.c_contiguous
        starts = x[:, 0]
        np.testing.assert_array_equal(x, starts[:, None] + np.arange(T))
        np.testing.assert_array_equal(y, x + 1)
        assert y.max() < n_train  # the target of the last position is still a train token


def test_text_dataset_windows_of_random_tokens():
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 50_000, size=3000).astype(np.uint16)
    T = 12
    ds = TextDataset(tokens, seq_len=T, val_fraction=0.2, seed=1, vocab_size=50_000)
    n_train = 2400
    win = windows_of(tokens, T + 1)
    for _ in range(10):
        x, y = ds.train_batch(4)
        for xi, yi in zip(x, y, strict=True):
            full = np.concatenate([xi, yi[-1:]])
            np.testing.assert_array_equal(yi[:-1], xi[1:])
            hits = np.flatnonzero((win == full).all(axis=1))
            assert hits.size and (hits + T + 1 <= n_train).any()


def test_text_dataset_covers_every_train_start_and_no_other():
    n, T = 250, 8
    ds = TextDataset(unique_tokens(n), seq_len=T, val_fraction=0.2, seed=3)
    n_train = 200
    starts = set()
    for _ in range(200):
        x, _ = ds.train_batch(16)
        starts.update(x[:, 0].tolist())
    assert starts == set(range(n_train - T))  # the last start, n_train - T - 1, ends at n_train - 1


def test_text_dataset_val_batches_fixed_and_inside_val_part():
    n, T = 2000, 10
    ds = TextDataset(unique_tokens(n), seq_len=T, val_fraction=0.25, seed=0)
    n_train = 1500
    first = ds.val_batches(batch_size=4, n_batches=5)
    ds.train_batch(7)
    ds.train_batch(3)
    second = ds.val_batches(batch_size=4, n_batches=5)
    other_seed = TextDataset(unique_tokens(n), seq_len=T, val_fraction=0.25, seed=9).val_batches(4, 5)
    assert len(first) == 5
    for (x1, y1), (x2, y2), (x3, _) in zip(first, second, other_seed, strict=True):
        for a in (x1, y1):
            assert a.shape == (4, T) and a.dtype == np.int32 and a.flags.c_contiguous
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x3)
        np.testing.assert_array_equal(x1, x1[:, :1] + np.arange(T))
        np.testing.assert_array_equal(y1, x1 + 1)
        assert x1.min() >= n_train and y1.max() < n
    starts = np.concatenate([x[:, 0] for x, _ in first])
    assert len(set(starts.tolist())) == starts.size  # distinct
    assert starts.min() == n_train and starts.max() == n - T - 1  # spread over the whole part
    assert np.all(np.diff(starts) > T)  # evenly spread: disjoint windows when they fit


def test_text_dataset_val_batches_too_many():
    ds = TextDataset(unique_tokens(300), seq_len=10, val_fraction=0.1, seed=0)  # 30 val tokens: 20 starts
    assert len(ds.val_batches(batch_size=4, n_batches=5)) == 5
    with pytest.raises(ValueError, match="batch_size \\* n_batches.*20"):
        ds.val_batches(batch_size=3, n_batches=7)
    with pytest.raises(ValueError, match="n_batches"):
        ds.val_batches(batch_size=3, n_batches=0)


def test_text_dataset_seeds():
    tokens = unique_tokens(5000)
    a = TextDataset(tokens, 32, seed=7)
    b = TextDataset(tokens, 32, seed=7)
    c = TextDataset(tokens, 32, seed=8)
    xa = [a.train_batch(8)[0] for _ in range(3)]
    xb = [b.train_batch(8)[0] for _ in range(3)]
    xc = [c.train_batch(8)[0] for _ in range(3)]
    for p, q in zip(xa, xb, strict=True):
        np.testing.assert_array_equal(p, q)
    assert any(not np.array_equal(p, q) for p, q in zip(xa, xc, strict=True))


def test_text_dataset_resumes_exactly_through_json():
    tokens = np.random.default_rng(0).integers(0, 300, size=4000)
    full = TextDataset(tokens, 16, seed=11)
    uninterrupted = [full.train_batch(bs) for bs in (4, 4, 2, 8, 4, 4, 3, 4)]

    first = TextDataset(tokens, 16, seed=11)
    for bs in (4, 4, 2):
        first.train_batch(bs)
    state = json_round_trip(first.state_dict())
    assert state["batches_drawn"] == 3
    fresh = TextDataset(tokens, 16, seed=11)
    fresh.load_state_dict(state)
    assert fresh.batches_drawn == 3
    resumed = [fresh.train_batch(bs) for bs in (8, 4, 4, 3, 4)]
    for (x1, y1), (x2, y2) in zip(uninterrupted[3:], resumed, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # the original keeps going identically too
    np.testing.assert_array_equal(first.train_batch(8)[0], uninterrupted[3][0])


def test_text_dataset_state_errors():
    tokens = unique_tokens(1000)
    ds = TextDataset(tokens, 16)
    state = ds.state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        TextDataset(tokens, 8).load_state_dict(state)
    with pytest.raises(ValueError, match="n_train"):
        TextDataset(unique_tokens(1200), 16).load_state_dict(state)
    with pytest.raises(ValueError, match="rng"):
        ds.load_state_dict({k: v for k, v in state.items() if k != "rng"})
    with pytest.raises(ValueError, match="rng"):
        ds.load_state_dict({**state, "rng": {"bit_generator": "MT19937"}})
    with pytest.raises(ValueError, match="batches_drawn"):
        ds.load_state_dict({**state, "batches_drawn": -1})
    with pytest.raises(TypeError, match="state"):
        ds.load_state_dict([1, 2])


def test_text_dataset_input_errors():
    good = unique_tokens(1000)
    with pytest.raises(TypeError, match="tokens"):
        TextDataset(list(range(1000)), 8)
    with pytest.raises(ValueError, match="tokens.*1-D"):
        TextDataset(good.reshape(10, 100), 8)
    with pytest.raises(TypeError, match="tokens.*integer"):
        TextDataset(good.astype(np.float32), 8)
    with pytest.raises(ValueError, match="seq_len"):
        TextDataset(good, 0)
    with pytest.raises(ValueError, match="seq_len"):
        TextDataset(good, 2.5)
    for frac in (0, 1, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="val_fraction"):
            TextDataset(good, 8, val_fraction=frac)
    with pytest.raises(ValueError, match="seq_len \\+ 1 = 101"):
        TextDataset(good, 100, val_fraction=0.05)  # 50 validation tokens
    with pytest.raises(ValueError, match="seq_len \\+ 1"):
        TextDataset(good, 950, val_fraction=0.01)  # train part too short... and val too
    with pytest.raises(ValueError, match="tokens.*-3"):
        TextDataset(np.array([1, 2, -3] * 100), 8)
    with pytest.raises(ValueError, match="tokens.*vocab_size"):
        TextDataset(good, 8, vocab_size=500)
    with pytest.raises(ValueError, match="seed"):
        TextDataset(good, 8, seed=-1)
    ds = TextDataset(good, 8)
    with pytest.raises(ValueError, match="batch_size"):
        ds.train_batch(0)


# -------------------------------------------------------------------------------- TextDataset from files


class CountingByteTokenizer(ByteTokenizer):
    calls = 0

    def encode(self, text):
        CountingByteTokenizer.calls += 1
        return super().encode(text)


@pytest.fixture
def text_file(tmp_path, corpus):
    f = tmp_path / "corpus.txt"
    f.write_text(corpus[:60_000] + "\nunicode ✓ 日本\n", encoding="utf-8")
    return f


@pytest.fixture
def no_default_cache(tmp_path, monkeypatch):
    """Point the default token cache into the test's folder, and return that folder."""
    folder = tmp_path / "default_cache"
    monkeypatch.setenv("QORUS_CACHE_DIR", str(folder))
    return folder


def test_from_text_file_in_memory(text_file, no_default_cache):
    ds = TextDataset.from_text_file(text_file, "byte", seq_len=32, seed=4)
    raw = np.frombuffer(text_file.read_bytes(), np.uint8)
    assert not isinstance(ds.tokens, np.memmap)
    np.testing.assert_array_equal(ds.tokens, raw)
    assert ds.n_tokens == raw.size
    assert not no_default_cache.exists()  # small: nothing written
    json.dumps(ds.info)


def test_from_text_file_cache_is_memory_mapped(text_file, tmp_path, no_default_cache):
    cache = tmp_path / "cache"
    CountingByteTokenizer.calls = 0
    mm = TextDataset.from_text_file(text_file, CountingByteTokenizer(), seq_len=32, seed=4, cache_dir=cache)
    assert CountingByteTokenizer.calls == 1
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"  # no temporary file left behind
    assert isinstance(mm.tokens, np.memmap)
    on_disk = np.load(files[0], allow_pickle=False)
    assert on_disk.dtype == np.uint16
    np.testing.assert_array_equal(on_disk, np.frombuffer(text_file.read_bytes(), np.uint8))
    assert mm.info["memory_mapped"] and mm.info["tokens_file"] == str(files[0])

    mem = TextDataset(np.frombuffer(text_file.read_bytes(), np.uint8), seq_len=32, seed=4)
    for _ in range(5):
        (x1, y1), (x2, y2) = mm.train_batch(6), mem.train_batch(6)
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    for (x1, _), (x2, _) in zip(mm.val_batches(3, 4), mem.val_batches(3, 4), strict=True):
        np.testing.assert_array_equal(x1, x2)

    again = TextDataset.from_text_file(text_file, CountingByteTokenizer(), seq_len=32, seed=4, cache_dir=cache)
    assert CountingByteTokenizer.calls == 1  # reused, not tokenized again
    np.testing.assert_array_equal(again.train_batch(6)[0], TextDataset(mem.tokens, 32, seed=4).train_batch(6)[0])

    text_file.write_text("different text " * 100, encoding="utf-8")
    changed = TextDataset.from_text_file(text_file, CountingByteTokenizer(), seq_len=32, cache_dir=cache)
    assert CountingByteTokenizer.calls == 2 and len(list(cache.iterdir())) == 2
    np.testing.assert_array_equal(changed.tokens, np.frombuffer(text_file.read_bytes(), np.uint8))
    assert not no_default_cache.exists()


def test_from_text_file_large_goes_to_the_default_cache(text_file, no_default_cache):
    ds = TextDataset.from_text_file(text_file, "byte", seq_len=32, mmap_threshold=1000)
    assert isinstance(ds.tokens, np.memmap)
    assert [p.suffix for p in no_default_cache.iterdir()] == [".npy"]
    np.testing.assert_array_equal(ds.tokens, np.frombuffer(text_file.read_bytes(), np.uint8))


def test_from_text_file_bpe(bpe, tk, text_file, tmp_path):
    tok_file = bpe.save(tmp_path / "tok" / "tokenizer.json")
    ds = TextDataset.from_text_file(text_file, tok_file, seq_len=16, cache_dir=tmp_path / "cache")
    want = tk.Tokenizer.from_file(str(tok_file)).encode(text_file.read_text(encoding="utf-8"),
                                                         add_special_tokens=False).ids
    assert isinstance(ds.tokens, np.memmap) and ds.tokens.dtype == np.uint16
    assert ds.tokens.tolist() == want
    assert ds.vocab_size == bpe.vocab_size


def test_from_text_file_errors(tmp_path, no_default_cache):
    with pytest.raises(FileNotFoundError, match="path.*missing.txt"):
        TextDataset.from_text_file(tmp_path / "missing.txt", "byte", seq_len=8)
    with pytest.raises(IsADirectoryError, match="path"):
        TextDataset.from_text_file(tmp_path, "byte", seq_len=8)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        TextDataset.from_text_file(empty, "byte", seq_len=8)
    short = tmp_path / "short.txt"
    short.write_text("just a few words here")
    with pytest.raises(ValueError, match="short.txt.*too short"):
        TextDataset.from_text_file(short, "byte", seq_len=8)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(ValueError, match="UTF-8"):
        TextDataset.from_text_file(latin1, "byte", seq_len=8)
    ok = tmp_path / "ok.txt"
    ok.write_text("plenty of text " * 100)
    with pytest.raises(NotADirectoryError, match="cache_dir"):
        TextDataset.from_text_file(ok, "byte", seq_len=8, cache_dir=ok)
    with pytest.raises(FileNotFoundError, match="^tokenizer: .*no_tokenizer"):
        TextDataset.from_text_file(ok, tmp_path / "no_tokenizer", seq_len=8)
    for tokenizer in (None, 3):
        with pytest.raises(TypeError, match="^tokenizer: expected 'byte', a tokenizer"):
            TextDataset.from_text_file(ok, tokenizer, seq_len=8)


def test_from_tokens_file(tmp_path):
    tokens = np.random.default_rng(6).integers(0, 70_000, size=5000).astype(np.int32)
    np.save(tmp_path / "ids.npy", tokens)
    ds = TextDataset.from_tokens_file(tmp_path / "ids.npy", seq_len=20, seed=2)
    mem = TextDataset(tokens, seq_len=20, seed=2)
    assert isinstance(ds.tokens, np.memmap)
    for _ in range(3):
        np.testing.assert_array_equal(ds.train_batch(5)[1], mem.train_batch(5)[1])
    np.save(tmp_path / "floats.npy", tokens.astype(np.float32))  # errors of the ids name the file
    with pytest.raises(TypeError, match=r"^path: .*floats\.npy: expected an integer dtype"):
        TextDataset.from_tokens_file(tmp_path / "floats.npy", seq_len=20)
    np.save(tmp_path / "two_d.npy", tokens.reshape(50, 100))
    with pytest.raises(ValueError, match=r"^path: .*two_d\.npy: expected a 1-D"):
        TextDataset.from_tokens_file(tmp_path / "two_d.npy", seq_len=20)
    np.save(tmp_path / "negative.npy", np.where(np.arange(5000) == 7, -1, tokens))
    with pytest.raises(ValueError, match=r"^path: .*negative\.npy: expected ids in \[0, 2\*\*31\), got -1"):
        TextDataset.from_tokens_file(tmp_path / "negative.npy", seq_len=20)
    with pytest.raises(ValueError, match=r"^path: .*ids\.npy: expected ids in \[0, 100\) \(vocab_size\)"):
        TextDataset.from_tokens_file(tmp_path / "ids.npy", seq_len=20, vocab_size=100)
    with pytest.raises(ValueError, match=r"^path: .*ids\.npy: 5000 tokens split"):
        TextDataset.from_tokens_file(tmp_path / "ids.npy", seq_len=4000)
    with pytest.raises(ValueError, match="^seq_len: expected"):  # the other arguments' errors stay theirs
        TextDataset.from_tokens_file(tmp_path / "ids.npy", seq_len=0)
    (tmp_path / "junk.npy").write_text("not an array")
    with pytest.raises(ValueError, match="junk.npy"):
        TextDataset.from_tokens_file(tmp_path / "junk.npy", seq_len=20)
    np.savez(tmp_path / "arch.npz", ids=tokens)
    with pytest.raises(ValueError, match="npz"):
        TextDataset.from_tokens_file(tmp_path / "arch.npz", seq_len=20)
    with pytest.raises(FileNotFoundError, match="absent"):
        TextDataset.from_tokens_file(tmp_path / "absent.npy", seq_len=20)


# ----------------------------------------------------------------------------------------- default corpus


def test_default_corpus():
    from pydoc_data.topics import topics

    name, text = default_corpus()
    assert isinstance(name, str) and name
    assert len(text) > 200_000
    assert 'The "for" statement' in text
    assert "for_stmt" in text or "for target_list in" in text
    # every topic, in sorted topic order
    pos = 0
    for key in sorted(topics):
        body = topics[key].strip()
        at = text.find(body, pos)
        assert at >= pos, key
        pos = at + len(body)


# ------------------------------------------------------------------------------------------- ArrayDataset


def make_xy(n=23, f=3):
    X = (np.arange(n * f, dtype=np.float32).reshape(n, f)) / 7
    y = np.arange(n, dtype=np.int64)
    return X, y


def check_rows(X, xb, yb):
    """Each batch row is the sample its label names (y = the sample index)."""
    assert xb.flags.c_contiguous and yb.flags.c_contiguous
    np.testing.assert_array_equal(xb, X[yb])


def test_array_dataset_epochs_are_permutations():
    X, y = make_xy()
    ds = ArrayDataset(X, y, batch_size=5, seed=0)
    assert len(ds) == 5
    orders = []
    for epoch in range(4):
        assert ds.epoch == epoch
        batches = list(ds)
        assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
        for xb, yb in batches:
            assert xb.dtype == np.float32 and yb.dtype == np.int64 and xb.shape[1:] == (3,)
            check_rows(X, xb, yb)
        order = np.concatenate([b[1] for b in batches])
        assert sorted(order.tolist()) == list(range(23))
        orders.append(order.tolist())
    assert ds.epoch == 4
    assert len({tuple(o) for o in orders}) == 4  # reshuffled every epoch
    again = ArrayDataset(X, y, batch_size=5, seed=0)
    assert [np.concatenate([b[1] for b in again]).tolist() for _ in range(4)] == orders
    other = ArrayDataset(X, y, batch_size=5, seed=1)
    assert np.concatenate([b[1] for b in other]).tolist() != orders[0]


def test_array_dataset_drop_last_and_no_shuffle():
    X, y = make_xy()
    ds = ArrayDataset(X, y, batch_size=5, drop_last=True, seed=2)
    assert len(ds) == 4
    for _ in range(3):
        batches = list(ds)
        assert [len(b[1]) for b in batches] == [5, 5, 5, 5]
        seen = np.concatenate([b[1] for b in batches])
        assert len(set(seen.tolist())) == 20
    plain = ArrayDataset(X, y, batch_size=5, shuffle=False)
    assert np.concatenate([b[1] for b in plain]).tolist() == list(range(23))
    assert np.concatenate([b[1] for b in plain]).tolist() == list(range(23))


def test_array_dataset_next_batch_crosses_epochs_like_iteration():
    X, y = make_xy()
    it = ArrayDataset(X, y, batch_size=4, seed=3)
    by_iter = [yb.tolist() for _ in range(3) for _, yb in it]
    nb = ArrayDataset(X, y, batch_size=4, seed=3)
    by_next = [nb.next_batch()[1].tolist() for _ in range(len(by_iter))]
    assert by_next == by_iter
    assert nb.epoch == 2 and nb.position == 23
    nb.next_batch()
    assert nb.epoch == 3 and nb.position == 4


def test_array_dataset_resumes_mid_epoch_through_json():
    X, y = make_xy()
    ref = ArrayDataset(X, y, batch_size=5, seed=9)
    stream = [ref.next_batch() for _ in range(17)]

    first = ArrayDataset(X, y, batch_size=5, seed=9)
    for _ in range(7):  # epoch 1, two batches in
        first.next_batch()
    assert (first.epoch, first.position) == (1, 10)
    state = json_round_trip(first.state_dict())
    fresh = ArrayDataset(X, y, batch_size=5, seed=9)
    fresh.load_state_dict(state)
    for xb_ref, yb_ref in stream[7:]:
        xb, yb = fresh.next_batch()
        np.testing.assert_array_equal(xb, xb_ref)
        np.testing.assert_array_equal(yb, yb_ref)

    # iterating a resumed dataset finishes the interrupted epoch, then runs whole ones
    fresh2 = ArrayDataset(X, y, batch_size=5, seed=9)
    fresh2.load_state_dict(state)
    rest = [yb.tolist() for _, yb in fresh2]
    assert rest == [yb.tolist() for _, yb in stream[7:10]]
    assert fresh2.epoch == 2
    nxt = [yb.tolist() for _, yb in fresh2]
    assert nxt == [yb.tolist() for _, yb in stream[10:15]]


def test_array_dataset_inputs_other_layouts_and_targets():
    X, _ = make_xy(30, 4)
    Xs = X[:, ::2]  # not C-contiguous: batches are still contiguous copies
    targets = np.random.default_rng(0).standard_normal((30, 2)).astype(np.float32)
    ds = ArrayDataset(Xs, targets, batch_size=7, seed=1)
    for xb, yb in ds:
        assert xb.flags.c_contiguous and yb.flags.c_contiguous and yb.dtype == np.float32
        rows = [int(np.flatnonzero((targets == r).all(axis=1))[0]) for r in yb]
        np.testing.assert_array_equal(xb, Xs[rows])
    labels = np.arange(30, dtype=np.int32) % 3
    assert next(iter(ArrayDataset(X, labels, 8)))[1].dtype == np.int32


def test_array_dataset_errors():
    X, y = make_xy()
    with pytest.raises(TypeError, match="X.*float32"):
        ArrayDataset(X.astype(np.float64), y, 4)
    with pytest.raises(TypeError, match="X"):
        ArrayDataset(X.tolist(), y, 4)
    with pytest.raises(TypeError, match="y.*dtype"):
        ArrayDataset(X, y.astype(np.float16), 4)
    with pytest.raises(TypeError, match="y.*dtype"):
        ArrayDataset(X, y > 3, 4)
    with pytest.raises(TypeError, match="y"):
        ArrayDataset(X, list(y), 4)
    with pytest.raises(ValueError, match="y.*22"):
        ArrayDataset(X, y[:22], 4)
    with pytest.raises(ValueError, match="X.*N >= 1"):
        ArrayDataset(X[:0], y[:0], 4)
    with pytest.raises(ValueError, match="batch_size"):
        ArrayDataset(X, y, 0)
    with pytest.raises(ValueError, match="batch_size"):
        ArrayDataset(X, y, 30, drop_last=True)
    with pytest.raises(TypeError, match="shuffle"):
        ArrayDataset(X, y, 4, shuffle="yes")
    with pytest.raises(ValueError, match="seed"):
        ArrayDataset(X, y, 4, seed=-2)
    ds = ArrayDataset(X, y, 4)
    with pytest.raises(ValueError, match="batch_size"):
        ds.load_state_dict(ArrayDataset(X, y, 5).state_dict())
    with pytest.raises(ValueError, match="n"):
        ds.load_state_dict(ArrayDataset(X[:20], y[:20], 4).state_dict())
    with pytest.raises(ValueError, match="shuffle"):
        ds.load_state_dict(ArrayDataset(X, y, 4, shuffle=False).state_dict())
    with pytest.raises(ValueError, match="position"):
        ds.load_state_dict({**ds.state_dict(), "position": 99})
    with pytest.raises(ValueError, match="epoch"):
        ds.load_state_dict({k: v for k, v in ds.state_dict().items() if k != "epoch"})


def test_train_test_split():
    X, y = make_xy(50)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_fraction=0.2, seed=0)
    assert (len(ytr), len(yte)) == (40, 10)
    assert sorted(ytr.tolist() + yte.tolist()) == list(range(50))
    for xs, ys in ((Xtr, ytr), (Xte, yte)):
        check_rows(X, xs, ys)
    assert ytr.tolist() != sorted(ytr.tolist())  # shuffled
    again = train_test_split(X, y, test_fraction=0.2, seed=0)
    assert again[3].tolist() == yte.tolist()
    assert train_test_split(X, y, test_fraction=0.2, seed=1)[3].tolist() != yte.tolist()
    for frac in (0, 1, 0.001, 0.999, "0.2"):
        with pytest.raises(ValueError, match="test_fraction"):
            train_test_split(X, y, test_fraction=frac)
    with pytest.raises(ValueError, match="y"):
        train_test_split(X, y[:10])



# --------------------------------------------------------------------------------------------- the package


def modules():
    """Every module of qorus_jit.data, imported."""
    folder = Path(qorus_jit.data.__file__).parent
    return [qorus_jit.data] + [importlib.import_module(f"qorus_jit.data.{p.stem}")
                               for p in sorted(folder.glob("*.py")) if p.stem != "__init__"]


def test_docstring_examples_run():
    results = [doctest.testmod(m, optionflags=doctest.NORMALIZE_WHITESPACE) for m in modules()]
    assert sum(r.attempted for r in results) >= 8 and sum(r.failed for r in results) == 0


def test_no_pickle_in_the_package():
    loads = []
    for m in modules():
        source = Path(m.__file__).read_text()
        assert "import pickle" not in source and "allow_pickle=True" not in source, m.__name__
        loads += [line for line in source.splitlines() if "np.load(" in line]
    assert loads and all("allow_pickle=False" in line for line in loads)
