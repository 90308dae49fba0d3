"""``qorus export``: a ``qorus train`` run as a Hugging Face folder that transformers loads as it is
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``,
``generation_config.json``), from the run's newest complete checkpoint.

>>> export_run("runs/my-run", "my-model")                                # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from qorus_jit.core.files import check_path, fsync_dir, os_reason
from qorus_jit.formats.checkpoint import RUN_FILE
from qorus_jit.models.sources import SourceError, load_run_model

#: What ``--format`` accepts.
FORMATS = ("hf",)


def export_run(run_dir, out, format: str = "hf") -> Path:
    """Write the newest checkpoint of the run ``run_dir`` with its tokenizer to the new folder ``out``
    (absent or empty), atomically: everything is written to a hidden folder beside ``out``, then renamed, so
    ``out`` appears whole or not at all. A bad argument is a one-line SourceError naming it, before anything
    is written."""
    run_dir, out = check_path("run_dir", run_dir), check_path("out", out)
    if format not in FORMATS:
        raise SourceError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    if not (run_dir / RUN_FILE).is_file():
        raise SourceError(f"run_dir: expected a run directory of qorus train (holding {RUN_FILE}), got {run_dir}")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        what = "a non-empty folder" if out.is_dir() else "a file"
        raise SourceError(f"out: expected a new or empty folder, got {what} {out}")
    from qorus_jit.models.registry import save_pretrained

    model, tokenizer = load_run_model(run_dir)
    parent = out.absolute().parent
    if not parent.is_dir():
        raise SourceError(f"out: no such folder: {parent}")
    try:
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise SourceError(f"out: cannot write in {parent} ({os_reason(e)})") from None
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        save_pretrained(model, tmp, tokenizer=tokenizer)
        os.replace(tmp, out)  # over an empty folder too
    except OSError as e:
        raise SourceError(f"out: cannot write {out} ({os_reason(e)}); nothing was written") from None
    except TypeError as e:  # a tokenizer a Hugging Face folder cannot hold
        raise SourceError(f"{run_dir}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(parent)
    return out
