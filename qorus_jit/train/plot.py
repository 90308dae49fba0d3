"""Loss and learning-rate curves of a run directory's ``metrics.jsonl`` (matplotlib, an optional extra)."""

from __future__ import annotations

import json
from pathlib import Path

from qorus_jit.core.files import atomic_write, write_error
from qorus_jit.formats.checkpoint import METRICS_FILE


def read_metrics(run_dir) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl`` (damaged lines, such as one cut by a kill or bytes that are not
    UTF-8 or not JSON, are skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {METRICS_FILE} (not a run directory, or no step finished yet)")
    rows = []
    for line in path.read_bytes().split(b"\n"):
        try:
            row = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_run(run_dir, out=None) -> Path:
    """Write ``out`` (default ``run_dir/curves.png``): training and validation loss, and the learning rate.

    Draws on a figure of its own (no pyplot), so it neither needs a display nor changes the matplotlib
    backend of the program that calls it.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError('qorus plot needs matplotlib: pip install "qorus-jit[plot]"') from None
    rows = [r for r in read_metrics(run_dir) if _number(r["step"])]
    train = [r for r in rows if _number(r.get("loss"))]
    val = [r for r in rows if _number(r.get("val_loss"))]
    lr = [r for r in train if _number(r.get("lr"))]
    if not train:
        raise ValueError(f"{run_dir}: {METRICS_FILE} holds no training step yet")
    fig = Figure(figsize=(8, 6))
    ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, label="train loss")
    if val:
        ax1.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax1.set_title(Path(run_dir).resolve().name)
    ax2.plot([r["step"] for r in lr], [r["lr"] for r in lr], color="tab:green")
    ax2.set_ylabel("learning rate")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.tight_layout()
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    except OSError as e:
        raise write_error(out, e) from None
    return out
