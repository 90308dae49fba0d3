"""Start-up: seconds from a fresh process to the first finished forward + backward of a small Llama.

    python -m qorus_jit.bench.model_startup [--threads 2] [--no-torch] [--out perf/results/model_startup.json]

Config (the layer issue's bar, W-train's shape): dim 256, 4 layers, 8 heads, SwiGLU hidden 768, vocab 256,
seq 256, batch 8. Runs in fresh interpreters: twice with the machine's numba cache (warm; the first run may
fill it) and once with an empty cache directory (cold: every kernel compiles). The reference is the same
for PyTorch and transformers (``LlamaForCausalLM``, eager): a fresh process importing them, building the
model and running its first forward, cross-entropy and backward. :func:`measure` returns the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CODE = """
import time
t0 = time.perf_counter()
import numpy as np
from qorus_jit.kernels.loss import cross_entropy_forward_backward
from qorus_jit.models import Llama, LlamaConfig
t1 = time.perf_counter()
cfg = LlamaConfig(dim=256, n_layers=4, n_heads=8, hidden_dim=768, vocab_size=256, max_seq_len=256)
model = Llama(cfg, rng=0)
t2 = time.perf_counter()
ids = np.random.default_rng(0).integers(0, 256, (8, 256))
logits = model.forward(ids)
dlogits = np.empty((8 * 256, 256), np.float32)
loss = cross_entropy_forward_backward(dlogits, logits.reshape(-1, 256), ids.reshape(-1))
model.backward(dlogits.reshape(8, 256, 256))
t3 = time.perf_counter()
logits = model.forward(ids)
cross_entropy_forward_backward(dlogits, logits.reshape(-1, 256), ids.reshape(-1))
model.backward(dlogits.reshape(8, 256, 256))
t4 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t3 - t0, t4 - t3)
"""

#: The same first step with PyTorch and transformers (same config, untied head as ours).
TORCH_CODE = """
import time
t0 = time.perf_counter()
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
t1 = time.perf_counter()
cfg = LlamaConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
                  intermediate_size=768, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=False)
model = LlamaForCausalLM(cfg).float().train()
t2 = time.perf_counter()
ids = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 256)))
loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits.view(-1, 256), ids.view(-1))
loss.backward()
t3 = time.perf_counter()
loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits.view(-1, 256), ids.view(-1))
loss.backward()
t4 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t3 - t0, t4 - t3)
"""

KEYS = ("import_s", "build_s", "first_step_s", "total_s", "second_step_s")

#: Thread-count variables a fresh process reads at start (numba, OpenMP as torch uses it, OpenBLAS, MKL).
THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def run_once(env=None, code: str = CODE, threads: int | None = None) -> dict:
    """One fresh process running ``code``; ``threads`` sets the libraries' thread counts through the
    environment (read at start, so nothing is timed for it)."""
    env = dict(os.environ if env is None else env)
    if threads:
        env.update({k: str(threads) for k in THREAD_ENV})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"start-up process failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return dict(zip(KEYS, (float(v) for v in out.stdout.split()[-5:]), strict=True))


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def measure(runs: int = 2, threads: int | None = None, fill: bool = True, cold: bool = True,
            torch: bool | None = None) -> dict:
    """``runs`` warm-cache processes of ours alternated with ``runs`` of the reference (after one run of ours
    that may fill the cache, when ``fill``), then one cold-cache run of ours (when ``cold``).

    Returns lists of per-process dicts under 'warm', 'torch' (when torch and transformers are importable
    and ``torch`` is not False), 'cold', and 'warm_fill'."""
    torch = torch_available() if torch is None else torch
    rows: dict = {"warm": []}
    if fill:
        rows["warm_fill"] = [run_once(threads=threads)]
    if torch:
        rows["torch"] = []
    for _ in range(runs):
        rows["warm"].append(run_once(threads=threads))
        if torch:
            rows["torch"].append(run_once(code=TORCH_CODE, threads=threads))
    if cold:
        with tempfile.TemporaryDirectory() as cache:
            rows["cold"] = [run_once(dict(os.environ, NUMBA_CACHE_DIR=cache), threads=threads)]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="threads of each process (default: the libraries')")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch + transformers reference")
    ap.add_argument("--out", default="perf/results/model_startup.json",
                    help="the JSON to write, from the working directory (default: %(default)s)")
    args = ap.parse_args(argv)
    rows = measure(runs=1, threads=args.threads, torch=False if args.no_torch else None)
    for name, runs in rows.items():
        for r in runs:
            print(f"{name:10s} " + "  ".join(f"{k} {v:7.2f}" for k, v in r.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
