"""The Trainer: losses against NumPy float64, gradient accumulation, non-finite losses, checkpoints and
in-process exact resume."""

import json

import numpy as np
import pytest

from qorus_jit.data import ArrayDataset, TextDataset
from qorus_jit.formats.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from qorus_jit.models import MLP, Llama, LlamaConfig
from qorus_jit.train.losses import CrossEntropyLoss, MSELoss, make_loss
from qorus_jit.train.optim import SGD, AdamW
from qorus_jit.train.schedule import warmup_cosine
from qorus_jit.train.trainer import Trainer, TrainingError


def ref_cross_entropy(logits, targets, ignore_index=-100):
    """Mean cross-entropy and its gradient in float64 (naive log-softmax)."""
    x = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    t = targets.reshape(-1)
    keep = t != ignore_index
    z = x - x.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = keep.sum()
    loss = -logp[keep, t[keep]].sum() / n
    grad = np.exp(logp)
    grad[np.arange(len(t))[keep], t[keep]] -= 1
    grad[~keep] = 0
    return loss, (grad / n).reshape(logits.shape)


def test_cross_entropy_loss_matches_numpy_with_ignored_rows_and_scale():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, (3, 5))
    targets[0, :2] = -100
    loss, grad = CrossEntropyLoss()(logits, targets, scale=0.5)
    want_loss, want_grad = ref_cross_entropy(logits, targets)
    assert abs(loss - want_loss) < 1e-5
    np.testing.assert_allclose(grad, 0.5 * want_grad, atol=1e-6)
    total, count, correct = CrossEntropyLoss().evaluate(logits, targets)
    assert count == 13 and abs(total / count - want_loss) < 1e-5
    keep = targets != -100
    assert correct == int(((logits.argmax(-1) == targets) & keep).sum())


def test_mse_loss_matches_numpy():
    rng = np.random.default_rng(1)
    pred = rng.standard_normal((6, 3)).astype(np.float32)
    target = rng.standard_normal((6, 3)).astype(np.float32)
    loss, grad = MSELoss()(pred, target, scale=0.25)
    diff = pred.astype(np.float64) - target
    assert abs(loss - (diff ** 2).mean()) < 1e-6
    np.testing.assert_allclose(grad, 0.25 * 2 * diff / diff.size, atol=1e-7)


@pytest.mark.parametrize("bad", [
    lambda: CrossEntropyLoss()(np.zeros((2, 3), np.float32), np.array([0, 3])),  # id out of range
    lambda: CrossEntropyLoss()(np.zeros((2, 3), np.float32), np.array([0, 1, 2])),  # wrong shape
    lambda: CrossEntropyLoss()(np.zeros((2, 3), np.float64), np.array([0, 1])),  # not float32
    lambda: MSELoss()(np.zeros((2, 3), np.float32), np.zeros(5)),
])
def test_losses_reject_bad_input(bad):
    with pytest.raises(ValueError):
        bad()


def test_mse_target_of_no_numbers_is_named():
    with pytest.raises(ValueError, match="^target: expected an array of numbers"):
        MSELoss()(np.zeros((2, 3), np.float32), "x")


def test_cross_entropy_loss_ignore_index_beyond_int64_counts_every_row():
    logits = np.random.default_rng(6).standard_normal((4, 5)).astype(np.float32)
    targets = np.array([0, 4, 2, 1])
    loss, grad = CrossEntropyLoss(ignore_index=2**64)(logits, targets)
    want_loss, want_grad = ref_cross_entropy(logits, targets)
    assert abs(loss - want_loss) < 1e-5
    np.testing.assert_allclose(grad, want_grad, atol=1e-6)
    assert CrossEntropyLoss(ignore_index=2**64).evaluate(logits, targets)[1] == 4


class FixedBatches:
    """A data source that hands out a fixed list of batches in turn (no randomness)."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next_batch(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, d):
        self.i = d["i"]


def test_gradient_accumulation_equals_one_big_batch():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((16, 6)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    big, acc = MLP([6, 8, 3], rng=0), MLP([6, 8, 3], rng=0)
    Trainer(big, SGD(big, lr=0.5), FixedBatches([(X, y)]), steps=1, progress=False).fit()
    halves = [(X[:8].copy(), y[:8].copy()), (X[8:].copy(), y[8:].copy())]
    Trainer(acc, SGD(acc, lr=0.5), FixedBatches(halves), steps=1, grad_accum=2, progress=False).fit()
    for name, p in big.parameters().items():
        np.testing.assert_allclose(acc.parameters()[name], p, atol=1e-6, err_msg=name)
    # and the step really moved the weights
    assert not np.allclose(big.parameters()["fc0.weight"], MLP([6, 8, 3], rng=0).parameters()["fc0.weight"])


def test_non_finite_loss_stops_with_the_step_and_leaves_weights(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((32, 4)).astype(np.float32)
    y = rng.integers(0, 2, 32)
    model = MLP([4, 8, 2], rng=0)
    trainer = Trainer(model, AdamW(model, lr=1e-2), ArrayDataset(X, y, batch_size=8), steps=10, ckpt_every=2,
                      run_dir=tmp_path, progress=False)
    for _ in range(2):
        trainer.train_step()
    saved = trainer.save()
    before = {k: v.copy() for k, v in model.parameters().items()}
    model.parameters()["fc1.bias"][0] = np.nan  # the next forward gives NaN logits
    before["fc1.bias"][0] = np.nan
    with pytest.raises(TrainingError, match="step 3: the loss is nan"):
        trainer.fit()
    for name, p in model.parameters().items():
        np.testing.assert_array_equal(p, before[name], err_msg=name)
    assert latest_checkpoint(tmp_path) == saved
    assert load_checkpoint(saved).step == 2


def tiny_llama():
    return Llama(LlamaConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=40, max_seq_len=16), rng=0)


def make_trainer(run_dir, steps, total=12):
    tokens = np.random.default_rng(5).integers(0, 40, 2000)
    model = tiny_llama()
    opt = AdamW(model, lr=1e-2, weight_decay=0.1)
    data = TextDataset(tokens, seq_len=12, val_fraction=0.2, seed=7)
    return Trainer(model, opt, data, steps=steps, batch_size=3, schedule=warmup_cosine(1e-2, 2, total, 1e-3),
                   clip=1.0, eval_every=4, eval_batches=2, ckpt_every=4, run_dir=run_dir, progress=False)


def metric_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_in_process_continues_exactly(tmp_path):
    full = make_trainer(tmp_path / "full", steps=12)
    full.fit()
    first = make_trainer(tmp_path / "split", steps=6)
    first.fit()
    assert latest_checkpoint(tmp_path / "split").name == "step_0000006"
    second = make_trainer(tmp_path / "split", steps=12)
    assert second.resume(tmp_path / "split").name == "step_0000006"
    assert second.step == 6
    second.fit()
    for name, p in full.model.parameters().items():
        np.testing.assert_array_equal(second.model.parameters()[name], p, err_msg=name)
    a = [(r["step"], r["loss"]) for r in metric_rows(tmp_path / "full") if "loss" in r]
    b = [(r["step"], r["loss"]) for r in metric_rows(tmp_path / "split") if "loss" in r]
    assert a == b and [s for s, _ in a] == list(range(1, 13))
    assert [r["step"] for r in metric_rows(tmp_path / "split") if "val_loss" in r] == [4, 6, 8, 12]


def test_checkpoints_are_pruned_and_partial_writes_are_skipped(tmp_path):
    w = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, w, {}, {"x": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002", "step_0000003"]
    root = tmp_path / "checkpoints"
    (root / ".step_0000004.abc.tmp").mkdir()  # an interrupted write
    (root / "step_0000005").mkdir()  # a folder without its state file
    (root / "latest").write_text("step_0000005\n")
    found = latest_checkpoint(tmp_path)
    assert found.name == "step_0000003"
    c = load_checkpoint(found)
    assert c.step == 3 and c.state["x"] == 3
    np.testing.assert_array_equal(c.model["w"], w["w"])
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        load_checkpoint(root / "step_0000005")
    (root / "step_0000003" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_checkpoint(root / "step_0000003")


def test_a_killed_pruning_is_finished_by_the_next_run(tmp_path):
    """A kill while an old checkpoint was being deleted leaves a half-deleted folder; the next save or resume
    (remove_partial) deletes it, and keeps every complete checkpoint and a newer incomplete one."""
    from qorus_jit.formats.checkpoint import remove_partial

    w = {"w": np.ones((2, 2), np.float32)}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, w, {}, {}, keep=3)
    root = tmp_path / "checkpoints"
    (root / "step_0000001" / "state.json").unlink()   # pruning killed after the state file went
    (root / ".step_0000002.pruned.tmp").mkdir()      # pruning killed after the rename
    (root / "step_0000009").mkdir()                   # a newer write without its state file: not ours to delete
    assert remove_partial(tmp_path) == 2
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000002", "step_0000003", "step_0000009"]
    (root / "step_0000002" / "model.safetensors").unlink()
    (root / "step_0000002" / "state.json").unlink()  # half-deleted again, found by the next save
    save_checkpoint(tmp_path, 4, w, {}, {}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000003", "step_0000004", "step_0000009"]


def test_trainer_rejects_bad_settings():
    model = MLP([2, 2], rng=0)
    data = ArrayDataset(np.zeros((4, 2), np.float32), np.zeros(4, np.int64), batch_size=2)
    with pytest.raises(ValueError, match="steps"):
        Trainer(model, SGD(model, lr=0.1), data, steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(model, SGD(model, lr=0.1), data, steps=1, batch_size=4)
    with pytest.raises(ValueError, match="clip"):
        Trainer(model, SGD(model, lr=0.1), data, steps=1, clip=-1.0)
    with pytest.raises(TypeError, match="data"):
        Trainer(model, SGD(model, lr=0.1), object(), steps=1)
    with pytest.raises(ValueError, match="loss"):
        Trainer(model, SGD(model, lr=0.1), data, steps=1, loss="hinge")


@pytest.mark.parametrize("change, error, name", [
    (dict(model=None), TypeError, "model"), (dict(optimizer=None), TypeError, "optimizer"),
    (dict(optimizer="other-model"), ValueError, "optimizer"), (dict(progress="no"), TypeError, "progress"),
    (dict(val_data="x"), TypeError, "val_data"), (dict(schedule="cosine"), TypeError, "schedule"),
    (dict(schedule=0.1), TypeError, "schedule"), (dict(run_dir=3), TypeError, "run_dir"),
    (dict(extra_state="x"), TypeError, "extra_state"), (dict(print_evals="yes"), TypeError, "print_evals"),
])
def test_trainer_names_a_bad_argument(change, error, name):
    model = MLP([2, 2], rng=0)
    kw = dict(model=model, optimizer=SGD(model, lr=0.1), progress=False)
    if change.get("optimizer") == "other-model":
        change = dict(optimizer=SGD(MLP([2, 2], rng=0), lr=0.1))  # it would train nothing, grad norm 0
    kw.update(change)
    data = ArrayDataset(np.zeros((4, 2), np.float32), np.zeros(4, np.int64), batch_size=2)
    with pytest.raises(error, match=f"^{name}: expected"):
        Trainer(kw.pop("model"), kw.pop("optimizer"), data, steps=1, **kw)


def test_trainer_takes_numpy_ints_as_the_plain_ones():
    X = np.random.default_rng(5).standard_normal((8, 3)).astype(np.float32)
    y = np.arange(8) % 2
    runs = []
    for steps, accum, clip in ((3, 2, 0.5), (np.int64(3), np.int32(2), np.float32(0.5))):
        model = MLP([3, 2], rng=0)
        Trainer(model, SGD(model, lr=0.1), FixedBatches([(X, y)]), steps=steps, grad_accum=accum, clip=clip,
                progress=False).fit()
        runs.append(model.parameters()["fc0.weight"].copy())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_progress_bar_shows_the_loss_of_the_step_it_counts(monkeypatch):
    """Every frame the bar draws pairs its step count with that step's loss."""
    import io
    import re

    import tqdm.auto

    screen, real = io.StringIO(), tqdm.auto.tqdm

    def drawn_tqdm(*args, **kw):  # every update drawn, into screen
        return real(*args, **{**kw, "file": screen, "disable": False, "mininterval": 0, "ascii": True})

    monkeypatch.setattr(tqdm.auto, "tqdm", drawn_tqdm)
    X = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    model = MLP([4, 8, 2], rng=0)
    trainer = Trainer(model, AdamW(model, lr=1e-2), ArrayDataset(X, y, batch_size=16), steps=5)
    losses, train_step = [], trainer.train_step

    def recorded_step():
        row = train_step()
        losses.append(row["loss"])
        return row

    monkeypatch.setattr(trainer, "train_step", recorded_step)
    trainer.fit()
    frames = [f for f in re.split(r"[\r\n]", screen.getvalue()) if "loss" in f]
    assert frames
    for frame in frames:
        count = int(re.search(r"\| *(\d+)/5", frame).group(1))
        shown = float(re.search(r"loss ([0-9.]+)", frame).group(1))
        assert shown == pytest.approx(losses[count - 1], abs=1e-4), frame


def test_cross_entropy_inplace_equals_the_separate_buffer():
    """``inplace`` writes the same gradient over the logits (what the Trainer's loss does), and the loss."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (6, 5))
    targets[0, :2] = -100
    want_loss, want = CrossEntropyLoss()(logits, targets, scale=0.5)
    want = want.copy()
    work = logits.copy()
    loss, grad = CrossEntropyLoss(inplace=True)(work, targets, scale=0.5)
    assert loss == pytest.approx(want_loss, rel=1e-6) and np.shares_memory(grad, work)
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)
    assert make_loss("cross_entropy").inplace and not CrossEntropyLoss().inplace
