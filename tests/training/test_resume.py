"""Exact resume after SIGKILL: a run killed at a random step (or in the middle of writing a checkpoint)
and resumed from its newest complete checkpoint ends with the losses and weights of an uninterrupted run."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from qorus_jit.formats.checkpoint import latest_checkpoint, load_checkpoint

SETTINGS = dict(steps=24, warmup_steps=2, dim=32, n_heads=2, hidden_dim=64, seq_len=32, batch_size=4,
                eval_every=8, eval_batches=2, ckpt_every=3, sample_tokens=0)

START = """
import sys
from qorus_jit.train.run import TrainConfig, start_run
cfg = TrainConfig(**{settings!r}, out_dir=sys.argv[1], name=sys.argv[2])
{before}
start_run(cfg, progress=False).fit()
"""

# Kill the process in the middle of writing its second checkpoint: half of the weights file is on disk.
KILL_IN_SAVE = """
import os, signal
import safetensors.numpy as stn
real, calls = stn.save_file, [0]
def save_file(tensors, filename, metadata=None):
    calls[0] += 1
    if calls[0] == 3:  # model file of the second checkpoint
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(tensors, filename, metadata=metadata)
stn.save_file = save_file
"""


# Pace the steps (15 ms of sleep after each, results unchanged) so that the test's kill, sent within tens of
# milliseconds of the step it waits for, lands before the run ends even on a fast or a busy machine.
PACED = """
import time
from qorus_jit.train.trainer import Trainer
_step = Trainer.train_step
def train_step(self):
    row = _step(self)
    time.sleep(0.015)
    return row
Trainer.train_step = train_step
"""


def start(out, name, before=""):
    code = START.format(settings=SETTINGS, before=before)
    return subprocess.Popen([sys.executable, "-c", code, str(out), name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def resume(run_dir):
    return subprocess.run([sys.executable, "-m", "qorus_jit.cli", "train", "--resume", str(run_dir), "--no-progress"],
                          capture_output=True, text=True, timeout=600)


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r], [(r["step"], r["val_loss"]) for r in rows
                                                                    if "val_loss" in r]


def final_weights(run_dir):
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def last_step(run_dir):
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return max(json.loads(line)["step"] for line in lines[:-1] or lines) if lines else 0
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    p = start(out, "ref")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return out / "ref"


def assert_same_run(run_dir, ref):
    (a, va), (b, vb) = losses(run_dir), losses(ref)
    assert [s for s, _ in a] == list(range(1, SETTINGS["steps"] + 1))
    np.testing.assert_allclose([v for _, v in a], [v for _, v in b], rtol=0, atol=1e-6)
    assert [s for s, _ in va] == [s for s, _ in vb]
    np.testing.assert_allclose([v for _, v in va], [v for _, v in vb], rtol=0, atol=1e-6)
    got, want = final_weights(run_dir), final_weights(ref)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)


def test_sigkill_at_a_random_step_then_resume_matches_uninterrupted(tmp_path, reference):
    kill_at = int(np.random.default_rng().integers(4, SETTINGS["steps"] // 2 + 1))
    p = start(tmp_path, "run", before=PACED)
    deadline = time.time() + 300
    while last_step(tmp_path / "run") < kill_at and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, f"the run ended before step {kill_at}: {p.communicate()[1]}"
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = last_step(tmp_path / "run")
    assert killed_at < SETTINGS["steps"], "killed too late to test anything"
    saved = load_checkpoint(latest_checkpoint(tmp_path / "run")).step
    assert saved <= killed_at + 1 and saved % SETTINGS["ckpt_every"] == 0
    res = resume(tmp_path / "run")
    assert res.returncode == 0, res.stderr
    assert f"at step {saved} of {SETTINGS['steps']}" in res.stderr
    assert_same_run(tmp_path / "run", reference)


def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path, reference):
    p = start(tmp_path, "run", before=KILL_IN_SAVE)
    p.communicate(timeout=600)
    assert p.returncode == -signal.SIGKILL
    run_dir = tmp_path / "run"
    leftovers = [q.name for q in (run_dir / "checkpoints").iterdir() if q.name.endswith(".tmp")]
    assert leftovers, "the kill should have left a partial checkpoint folder behind"
    found = latest_checkpoint(run_dir)
    assert found.name == "step_0000003"
    assert load_checkpoint(found).step == 3  # loadable, whole
    res = resume(run_dir)
    assert res.returncode == 0, res.stderr
    assert not [q for q in (run_dir / "checkpoints").iterdir() if q.name.endswith(".tmp")]
    assert_same_run(run_dir, reference)
