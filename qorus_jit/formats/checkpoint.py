"""Run folders and training checkpoints: the names of a run folder's files, and checkpoints (weights,
optimizer state and the trainer's state) written atomically.

A run folder (what ``qorus train`` writes; training writes it, inference reads it) holds

- ``run.json``: the run's settings (``config``), the model record ``{"arch": ..., **config.to_dict()}``
  (``model``), the data source and token counts, and for a fine-tuning run its source (``init``) and its
  LoRA adapters (``lora``: rank, alpha, dropout, targets);
- ``tokenizer.json`` (``tokenizer.bin`` for llama2.c's tokenizer);
- ``metrics.jsonl``: one JSON object per logged step and per evaluation;
- ``adapter/`` (a LoRA run, once finished): its adapters as a PEFT folder;
- ``checkpoints/step_NNNNNNN/`` folders, each with

  - ``model.safetensors``: the model's parameters under their dotted names;
  - ``optimizer.safetensors``: the optimizer's state tensors (moments, momentum buffers);
  - ``state.json``: the step, the optimizer's hyperparameters and counters, the data position and RNG
    state, and whatever else the trainer records (written last: a folder without it is incomplete).

A checkpoint is written into a hidden temporary folder beside the others, every file fsynced, and then
renamed into place in one step; ``checkpoints/latest`` (a one-line text file naming the newest folder) is
replaced atomically after that. A crash or SIGKILL at any moment leaves the previous checkpoint whole, and
:func:`latest_checkpoint` skips leftovers of an interrupted write. No pickle is written or read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qorus_jit.core.files import atomic_write_text, fsync_dir, fsync_file, read_json
from qorus_jit.formats.safetensors import load_safetensors, write_safetensors

RUN_FILE = "run.json"
RUN_TOKENIZER_JSON = "tokenizer.json"
RUN_TOKENIZER_BIN = "tokenizer.bin"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
ADAPTER_DIR = "adapter"  # a finished LoRA run's adapters, as a PEFT folder
FORMAT = 1
_NAME = re.compile(r"step_(\d+)$")


# ------------------------------------------------------------------------------------------- run folders


def run_tokenizer_name(tokenizer) -> str:
    """The name a run folder keeps ``tokenizer`` under: ``tokenizer.bin`` for llama2.c's, else JSON."""
    return RUN_TOKENIZER_BIN if getattr(tokenizer, "name", None) == "llama2c" else RUN_TOKENIZER_JSON


def run_tokenizer_path(run_dir) -> Path:
    """The tokenizer file of a run folder (``tokenizer.json``, or ``tokenizer.bin``)."""
    run_dir = Path(run_dir)
    binary = run_dir / RUN_TOKENIZER_BIN
    json_file = run_dir / RUN_TOKENIZER_JSON
    return binary if binary.is_file() and not json_file.is_file() else json_file


def read_run_record(run_dir) -> dict:
    """The parsed ``run.json`` of a run folder. FileNotFoundError when it is absent; ValueError for bad JSON
    or a file without a ``config`` table."""
    file = Path(run_dir) / RUN_FILE
    d = read_json(file, "run file")
    if not isinstance(d, dict) or not isinstance(d.get("config"), dict):
        raise ValueError(f"{file} is not a qorus run file (no config table)")
    return d


# ------------------------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` reads back."""

    path: Path
    step: int
    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    state: dict


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of ``step``: ``step_0000100`` (seven digits, so names sort by step)."""
    return f"step_{step:07d}"


def save_checkpoint(run_dir, step: int, model_tensors: dict[str, np.ndarray],
                    optimizer_tensors: dict[str, np.ndarray], state: dict, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``run_dir/checkpoints`` atomically; keep the newest ``keep`` of them.

    ``state`` must be JSON-serializable (no NaN); it is stored with ``step`` and a format number.
    Returns the checkpoint folder.
    """
    if keep < 1:
        raise ValueError(f"keep: expected at least 1 checkpoint to keep, got {keep}")
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    try:  # fails before anything is written
        text = json.dumps({"format": FORMAT, "step": int(step), **state}, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"state: not JSON-serializable ({e})") from None
    final = root / checkpoint_name(step)
    if (final / STATE_FILE).is_file():  # this step is saved already (a finished run saved again): keep it
        return final
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        for name, tensors in ((MODEL_FILE, model_tensors), (OPTIMIZER_FILE, optimizer_tensors)):
            write_safetensors(tmp / name, tensors, metadata={"format": "np"})
        (tmp / STATE_FILE).write_text(text, encoding="utf-8")
        fsync_file(tmp / STATE_FILE)
        os.chmod(tmp, 0o755)
        fsync_dir(tmp)
        if final.exists():  # an incomplete folder of this step (no state file): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    atomic_write_text(root / LATEST, final.name + "\n")
    for old in list_checkpoints(run_dir)[:-keep]:
        _discard(old)
    remove_partial(run_dir)
    return final


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder, renamed first to a temporary name: a kill in the middle leaves a folder that
    :func:`remove_partial` finishes, never a half-deleted ``step_N``."""
    trash = folder.with_name(f".{folder.name}.pruned.tmp")
    try:
        os.rename(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoint folders of ``run_dir`` (those with a state file), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or None. Leftovers of interrupted writes are skipped; a
    ``latest`` file that is missing, unreadable or names no complete checkpoint (damaged, not UTF-8) is passed
    over for the newest complete ``step_N`` folder."""
    root = Path(run_dir) / CHECKPOINTS
    try:
        with open(root / LATEST, "rb") as f:
            name = f.read(64).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if _NAME.match(name) and (root / name / STATE_FILE).is_file():
        return root / name
    done = list_checkpoints(run_dir)
    return done[-1] if done else None


def checkpoint_step(path) -> int:
    """The step of a checkpoint folder, from its name ``step_NNNNNNN``."""
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path}: not a checkpoint folder name (step_NNNNNNN expected)")
    return int(m.group(1))


def remove_partial(run_dir) -> int:
    """Delete what interrupted checkpoint writes and prunings left: temporary folders, and ``step_N`` folders
    without a state file older than the newest complete checkpoint; returns how many."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return 0
    done = list_checkpoints(run_dir)
    newest = int(_NAME.match(done[-1].name).group(1)) if done else -1
    stale = [p for p in root.iterdir() if p.name.startswith(".step_") and p.name.endswith(".tmp")]
    stale += [p for p in root.iterdir() if (m := _NAME.match(p.name)) and int(m.group(1)) < newest
              and not (p / STATE_FILE).is_file()]
    for p in stale:  # best effort, as leftovers are skipped anyway (a read-only folder keeps them)
        try:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        except OSError:
            pass
    return len(stale)


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint folder written by :func:`save_checkpoint`; damaged files raise ValueError."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a checkpoint folder")
    state_file = path / STATE_FILE
    try:
        state = read_json(state_file, "checkpoint state")
    except FileNotFoundError:
        raise ValueError(f"{path}: incomplete checkpoint (no {STATE_FILE})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("step"), int):
        raise ValueError(f"{state_file}: not a qorus checkpoint state (format {FORMAT} with a step expected)")
    tensors = {}
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        if not (path / name).is_file():
            raise ValueError(f"{path}: incomplete checkpoint (no {name})")
        tensors[name] = load_safetensors(path / name)
    return Checkpoint(path, state.pop("step"), tensors[MODEL_FILE], tensors[OPTIMIZER_FILE],
                      {k: v for k, v in state.items() if k != "format"})
