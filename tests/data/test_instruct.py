"""InstructDataset: JSONL prompt/completion pairs whose loss counts the completion tokens only. The targets are
checked against a hand-built NumPy reference, the masked loss against PyTorch, bad lines by their number, and
``qorus train --data x.jsonl`` by a 20-step smoke run whose loss goes down."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qorus_jit.cli import main
from qorus_jit.data import InstructDataset
from qorus_jit.data.instruct import IGNORE_INDEX
from qorus_jit.tokenizers import ByteTokenizer
from qorus_jit.train.losses import CrossEntropyLoss

PAIRS = [("Q: what is 2+2?\nA:", " 4"), ("hi", " there, friend"), ("", "no prompt"),
         ("a long prompt that does not fit in the window at all", " x"), ("p", "")]


def reference_rows(pairs, seq_len):
    """x, y of each example built position by position (byte tokens, no end-of-text id)."""
    rows = []
    for prompt, completion in pairs:
        p, c = list(prompt.encode()), list(completion.encode())
        ids = (p + c)[:seq_len + 1]
        x = np.zeros(seq_len, np.int32)
        y = np.full(seq_len, -100, np.int32)
        for i in range(len(ids) - 1):
            x[i] = ids[i]
            if i + 1 >= len(p):  # the next token is the completion's
                y[i] = ids[i + 1]
        if (y != -100).any():
            rows.append((x, y))
    return rows


def write_jsonl(path, pairs):
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs), encoding="utf-8")
    return path


def test_targets_mask_exactly_the_prompt_and_padding():
    seq_len = 24
    ds = InstructDataset(PAIRS, ByteTokenizer(), seq_len, val_fraction=0.3)
    ref = reference_rows(PAIRS, seq_len)
    # dropped: the long prompt leaves no completion token in the window, and "p" has none
    assert ds.n_dropped == 2 and len(ref) == 3
    assert ds.n_train_examples == 2 and ds.n_val_examples == 1
    x, y = ds._gather(np.arange(3))
    np.testing.assert_array_equal(x, np.stack([r[0] for r in ref]))
    np.testing.assert_array_equal(y, np.stack([r[1] for r in ref]))
    assert x.dtype == y.dtype == np.int32 and x.flags.c_contiguous and y.flags.c_contiguous
    # the first row: exactly the 2 completion bytes counted, after 17 prompt positions
    assert (y[0] != IGNORE_INDEX).sum() == 2 and y[0, len(PAIRS[0][0]) - 1] == ord(" ")


def test_end_of_text_id_is_appended_and_pads():
    class EosBytes(ByteTokenizer):
        eos_id = 0  # a stand-in end-of-text id; its BOS flag is the prompt's only

        def encode(self, text, bos=False):
            return super().encode(text)

    ds = InstructDataset([("ab", "cd"), ("ef", "gh")], EosBytes(), 8, val_fraction=0.5)
    x, y = ds._gather(np.array([0]))
    np.testing.assert_array_equal(x[0], [97, 98, 99, 100, 0, 0, 0, 0])
    np.testing.assert_array_equal(y[0], [-100, 99, 100, 0, -100, -100, -100, -100])


def test_batches_are_deterministic_and_resumable():
    pairs = [(f"q{i}:", f" a{i}") for i in range(40)]
    a = InstructDataset(pairs, "byte", 12, val_fraction=0.25, seed=3)
    b = InstructDataset(pairs, "byte", 12, val_fraction=0.25, seed=3)
    for _ in range(3):
        for u, v in zip(a.train_batch(5), b.train_batch(5), strict=True):
            np.testing.assert_array_equal(u, v)
    state = json.loads(json.dumps(a.state_dict()))
    c = InstructDataset(pairs, "byte", 12, val_fraction=0.25, seed=3)
    c.load_state_dict(state)
    for u, v in zip(a.train_batch(5), c.train_batch(5), strict=True):
        np.testing.assert_array_equal(u, v)
    # training rows come from the first 30 examples, validation from the last 10, the same on every call
    x, _ = a.train_batch(200)
    assert {bytes(r[:4]).split(b":")[0] for r in x.astype(np.uint8)} <= {f"q{i}".encode() for i in range(30)}
    v1, v2 = a.val_batches(5, 2), a.val_batches(5, 2)
    xs = np.concatenate([vx for vx, _ in v1])
    assert sorted(bytes(r[:4]).split(b":")[0].decode() for r in xs.astype(np.uint8)) == sorted(
        f"q{i}" for i in range(30, 40))
    for (p, q), (r, s) in zip(v1, v2, strict=True):
        np.testing.assert_array_equal(p, r)
        np.testing.assert_array_equal(q, s)
    with pytest.raises(ValueError, match="batch_size \\* n_batches"):
        a.val_batches(11, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_loss_matches_torch(dtype):
    ds = InstructDataset(PAIRS, "byte", 24, val_fraction=0.3)
    _, y = ds._gather(np.arange(3))
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((*y.shape, 256)) * 3).astype(dtype)
    ref_logits = torch.tensor(logits.astype(np.float64), requires_grad=True)
    ref = torch.nn.functional.cross_entropy(ref_logits.reshape(-1, 256), torch.tensor(y.reshape(-1), dtype=torch.long),
                                            ignore_index=-100)
    ref.backward()
    loss, grad = CrossEntropyLoss()(logits.astype(np.float32), y)
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-5)
    np.testing.assert_allclose(grad, ref_logits.grad.numpy(), atol=1e-6)
    assert not grad[y == IGNORE_INDEX].any()  # prompt and padding positions get no gradient
    total, count, _ = CrossEntropyLoss().evaluate(logits.astype(np.float32), y)
    assert count == int((y != -100).sum()) and abs(total / count - ref.item()) < 1e-4


@pytest.mark.parametrize("line, needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"prompt": "a"}', 'string "completion", got nothing'),
    ('{"prompt": 3, "completion": "b"}', 'string "prompt", got int'),
])
def test_bad_line_names_file_and_line(tmp_path, line, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n\n' + line + '\n{"prompt": "c", "completion": "d"}\n')
    with pytest.raises(ValueError, match="line 3") as e:
        InstructDataset.from_jsonl(f, "byte", 8)
    assert str(f) in str(e.value) and needle in str(e.value)


def test_empty_file_is_an_error(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n")
    with pytest.raises(ValueError, match="no examples"):
        InstructDataset.from_jsonl(f, "byte", 8)


def test_qorus_train_on_jsonl(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(120):
        a, b = (int(v) for v in rng.integers(0, 10, 2))
        pairs.append((f"{a}+{b}=", f"{a + b}."))
    write_jsonl(tmp_path / "x.jsonl", pairs)
    res = CliRunner().invoke(main, [
        "train", "--data", "x.jsonl", "--steps", "20", "--warmup-steps", "1", "--dim", "32", "--n-heads", "2",
        "--hidden-dim", "64", "--n-layers", "1", "--seq-len", "16", "--batch-size", "8", "--eval-batches", "1",
        "--val-fraction", "0.1", "--sample-tokens", "0", "--no-progress", "--out-dir", "runs", "--name", "sft"])
    assert res.exit_code == 0, res.output + str(res.exception)
    lines = [json.loads(s) for s in (tmp_path / "runs" / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses
    assert any("val_loss" in r for r in lines)
    # a bad line stops the run before it starts, naming the line
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    res = CliRunner().invoke(main, ["train", "--data", "bad.jsonl", "--steps", "2", "--out-dir", "runs",
                                    "--name", "bad", "--no-progress"])
    assert res.exit_code != 0 and "line 2" in res.output
    assert not (tmp_path / "runs" / "bad").exists()
