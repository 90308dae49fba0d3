"""Damaged files in a run folder: every file a finished run holds, damaged in every way listed (bytes that are
not UTF-8, JSON nested past the parser's depth, JSON of the wrong shape, an empty file, a file cut in half),
then ``qorus train --resume`` and ``qorus plot``. Each either copes (a metrics line or ``latest`` is passed
over, a file it does not read changes nothing) or stops with one line naming the damaged file, never a
traceback."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from qorus_jit.cli import main
from qorus_jit.formats.checkpoint import latest_checkpoint, load_checkpoint
from qorus_jit.train.plot import plot_run
from qorus_jit.train.run import TrainConfig, start_run

Figure = pytest.importorskip("matplotlib.figure").Figure

SETTINGS = dict(dim=16, n_heads=2, hidden_dim=32, n_layers=1, seq_len=8, batch_size=2, steps=4, warmup_steps=1,
                eval_every=2, eval_batches=1, ckpt_every=2, sample_tokens=0)

DAMAGE = {
    "not_utf8": lambda data: b"\xff\xfe\x00\x9cgarbage\x80\n",
    "nested": lambda data: b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "wrong_json": lambda data: b'[1, {"step": "four"}]\n',
    "empty": lambda data: b"",
    "cut": lambda data: data[:len(data) // 2],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of 4 steps (checkpoints of steps 2 and 4) with its curves drawn."""
    tmp = tmp_path_factory.mktemp("finished")
    run = start_run(TrainConfig(**SETTINGS, out_dir=str(tmp), name="run"), progress=False)
    run.fit()
    plot_run(tmp / "run")
    return tmp / "run"


def run_files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def test_the_finished_run_holds_every_kind_of_file(finished):
    assert run_files(finished) == ["checkpoints/latest",
                                   *[f"checkpoints/step_000000{s}/{f}" for s in (2, 4)
                                     for f in ("model.safetensors", "optimizer.safetensors", "state.json")],
                                   "curves.png", "metrics.jsonl", "run.json", "tokenizer.json"]


def one_line_or_success(res, rel: str) -> bool:
    """True if the command succeeded; else its error is one line naming ``rel``, with exit code 2."""
    assert "Traceback" not in res.output, res.output
    if res.exit_code == 0:
        return True
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert rel in lines[0], f"{rel!r} not named in {lines[0]!r}"
    return False


@pytest.mark.parametrize("damage", DAMAGE)
def test_each_file_damaged(finished, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("QORUS_CACHE_DIR", str(tmp_path / "token-cache"))
    # qorus plot reads the metrics as ever, but draws nothing (seconds a figure; test_cli_train draws them)
    monkeypatch.setattr(Figure, "tight_layout", lambda self: None)
    monkeypatch.setattr(Figure, "savefig", lambda self, out, **kw: Path(out).write_bytes(b"\x89PNG\r\n\x1a\n"))
    outcomes = {}
    for rel in run_files(finished):
        run_dir = Path(shutil.copytree(finished, tmp_path / rel.replace("/", "_") / "run"))
        file = run_dir / rel
        file.write_bytes(DAMAGE[damage](file.read_bytes()))

        res = CliRunner().invoke(main, ["plot", str(run_dir), "--out", str(run_dir.parent / "c.png")])
        plotted = one_line_or_success(res, rel)
        res = CliRunner().invoke(main, ["train", "--resume", str(run_dir), "--steps", "5", "--no-progress"])
        resumed = one_line_or_success(res, rel)
        if resumed:
            assert load_checkpoint(latest_checkpoint(run_dir)).step == 5
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            assert [r["step"] for r in rows if "loss" in r][-1] == 5
        outcomes[rel] = (plotted, resumed)
    # what a resume reads it must trust: the settings, the tokenizer and the newest checkpoint's files; the
    # metrics and `latest` it repairs or passes over; an older checkpoint and the curves it does not read
    refused = {"run.json", "tokenizer.json", "checkpoints/step_0000004/model.safetensors",
               "checkpoints/step_0000004/optimizer.safetensors", "checkpoints/step_0000004/state.json"}
    if damage == "cut":  # half of a JSON file is no JSON; half of `latest` names no folder, nor half of a PNG
        assert {rel for rel, (_, resumed) in outcomes.items() if not resumed} == refused
    assert {rel for rel, (_, resumed) in outcomes.items() if not resumed} <= refused
    assert {rel for rel, (plotted, _) in outcomes.items() if not plotted} <= {"metrics.jsonl"}
