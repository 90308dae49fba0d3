"""Start-up: seconds from a fresh process to the first finished forward + backward of a small Llama.

    python -m perf.model_startup [--out perf/results/model_startup.json]

Config (the layer issue's bar): dim 256, 4 layers, 8 heads, SwiGLU hidden 768, vocab 256, seq 256,
batch 8. Runs in fresh interpreters: twice with the machine's numba cache (warm; the first run may fill
it) and once with an empty cache directory (cold: every kernel compiles).
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

KEYS = ("import_s", "build_s", "first_step_s", "total_s", "second_step_s")


def run_once(env=None) -> dict:
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    return dict(zip(KEYS, (float(v) for v in out.stdout.split()[-5:]), strict=True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "model_startup.json"))
    args = ap.parse_args(argv)
    rows = {"warm_fill": run_once(), "warm": run_once()}
    with tempfile.TemporaryDirectory() as cache:
        rows["cold"] = run_once(dict(os.environ, NUMBA_CACHE_DIR=cache))
    for name, r in rows.items():
        print(f"{name:10s} " + "  ".join(f"{k} {v:7.2f}" for k, v in r.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
