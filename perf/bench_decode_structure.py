"""The float32 decoder against its own reads: what the multiply-adds cost, and what reading in phases costs.

    python -m perf.bench_decode_structure [--shapes 15M,110M] [--rounds 5] [--threads 2] [--json PATH]

Models: the random Llamas of ``perf.bench_quant_decode`` (stories15M and stories110M shapes, float32). One
process, one model at a time; each round takes positions 40-103, and at each position three sides one after the
other (the first turning position by position), so that a busy moment of the shared machine falls on all alike.
Each side runs after a read of another array of the token's bytes, then once more, timed: what the caches hold
then is what one pass of its own left. (The AMD EPYC's 32 MB L3 keeps part of a 62 MB token's bytes from one
pass over them to the next, more after several: a side run right after another side that reads the same weights
went 10-23% faster.)

- token: one token of the one-call decoder (``_Decoder.step``);
- reads: the same token by a copy of ``kernels/decode.py`` whose float32 row dots are plain sums of W's rows
  (x is not read; the logits are meaningless): every phase, claim, wait, the attention, the norms and the head
  split as in the token, without the products' multiply-adds (the attention's scores, which share the IR dot,
  become sums of the cached keys too: q is not read there). Built at run time into a temporary folder
  (:func:`reads_module`), its kernels compiled there once;
- products: the token's matrices (every block's and the head) times a vector in one parallel call, each thread
  its share of each matrix's rows, by the decoder's own float32 row kernel as it reads W on this machine
  (``_matvec_cols``): the products with nothing between them (no phases, attention, norms or head logic);
- squares: the same matrices, each weight times itself added into its row's sum, two rows half the rows apart as
  the decoder pairs them (numba's 256-bit loop): the one multiply-add a weight that any product does, and
  nothing else (x is not read);
- stream: the bound's read (``perf.bench_quant_decode``): a parallel sum over one array of the token's bytes
  (``bytes_per_token``: the weights and the mean KV cache of the positions).

Reported per shape: the median times; each side as a fraction of the stream (the median of the positions'
paired ratios: ``stream / side``), and ``token / reads``, what the arithmetic adds, each with its spread over
the rounds. The gap between ``reads`` and 1 is the cost of reading a token's weights as the decoder does (in
phases, a phase's items split over threads, every participant waiting for a phase's end) rather than as one
flat stream; ``products`` and ``squares`` say how near to the stream a product can read at all.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
from numba import prange

from perf.bench_decode_positions import decode_parser, start_run
from perf.bench_quant_decode import SHAPES, build, spread
from qorus_jit.bench._timing import write_results
from qorus_jit.core.numerics import FASTMATH
from qorus_jit.kernels.decode import _matvec_cols

POSITIONS = range(40, 104)
# the float32 row dots of kernels/decode.py: one row (s += r[k] * x[k]) and four rows (s0 += r0[k] * xk)
_DOT = re.compile(r"\b(s\d?) \+= (r\d?)\[k\] \* (?:x\[k\]|xk)")
# and the one in vector IR (_lane_dots, under _make_row_dots and the attention's scores: a row's lanes times x's
# added into its accumulator)
_DOT_IR = re.compile(r"builder\.call\(fma, \[wv, xv, builder\.load\(acc\)\]\)")


def reads_source(src: str) -> str:
    """kernels/decode.py's source with every float32 row dot made a plain sum of the row."""
    out, n = _DOT.subn(r"\1 += \2[k]", src)
    out, m = _DOT_IR.subn(r"builder.fadd(wv, builder.load(acc))", out)
    if n < 7 or m != 1:  # _matvec_cols (one row, four rows, their tail), _matvec_rows_streamed; _make_row_dots
        raise RuntimeError(f"kernels/decode.py: expected the float32 row dots (7 and 1 in IR), found {n} and {m}: "
                           f"update perf.bench_decode_structure._DOT and _DOT_IR")
    return out


def reads_module():
    """The copy of ``qorus_jit.kernels.decode`` whose float32 dots only read W, as a module of its own in a
    temporary folder named by the source's hash (its numba cache kept there between runs)."""
    import qorus_jit.kernels.decode as decode

    src = reads_source(Path(decode.__file__).read_text())
    folder = Path(tempfile.gettempdir()) / f"qorus_decode_reads_{hashlib.sha256(src.encode()).hexdigest()[:12]}"
    folder.mkdir(exist_ok=True)
    path = folder / "decode_reads.py"
    if not path.exists() or path.read_text() != src:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(src)
        tmp.replace(path)
    name = "qorus_decode_reads"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def reads_step(decoder, module):
    """``decoder.step`` (``models.decoder._Decoder``) through ``module``'s kernel: the same arguments."""
    from qorus_jit.models.decoder import _NO_STOPS, decode_split

    head, mid, final = decoder.args
    split = decode_split(decoder.n_kv_heads)

    def step(tok: int, pos: int):
        module._llama_decode(*decoder.out, decoder.one, _NO_STOPS, tok, *head, pos, *mid, *split, *final)
    return step


def matrices(model) -> list[np.ndarray]:
    """The 2-D float32 weights one token reads through products: every block's and the head (the embedding table
    where it is tied to the head; else a token reads one row of it)."""
    ps = model.parameters()
    tied = "lm_head.weight" not in ps
    return [w for k, w in ps.items() if w.ndim == 2 and (tied or k != "model.embed_tokens.weight")]


@numba.njit(cache=False)
def _share(n, t, T):
    """Rows [lo, hi) of thread t of T in a matrix of n rows."""
    per = (n + T - 1) // T
    return min(n, t * per), min(n, (t + 1) * per)


@numba.njit(parallel=True, cache=False)
def _products(mats, x, out, one_row):
    """out[t, :rows] = thread t's rows of each matrix of ``mats`` (a typed List) times x[:columns], in turn."""
    T = out.shape[0]
    for t in prange(T):
        for m in mats:
            lo, hi = _share(m.shape[0], t, T)
            _matvec_cols(out[t, :hi - lo], m[lo:hi], x[:m.shape[1]], 0, m.shape[1], one_row)


@numba.njit(parallel=True, fastmath=set(FASTMATH), cache=False)
def _squares(mats, out):
    """out[t, i] = the sum of the squares of row i of thread t's rows of each matrix, rows p and h + p together."""
    T = out.shape[0]
    for t in prange(T):
        o = out[t]
        for m in mats:
            lo, hi = _share(m.shape[0], t, T)
            w = m[lo:hi]
            h = (hi - lo) // 2
            for p in range(h):
                r0, r1 = w[p], w[h + p]
                s0 = s1 = np.float32(0)
                for k in range(r0.shape[0]):
                    s0 += r0[k] * r0[k]
                    s1 += r1[k] * r1[k]
                o[p], o[h + p] = s0, s1
            for i in range(2 * h, hi - lo):
                r = w[i]
                s = np.float32(0)
                for k in range(r.shape[0]):
                    s += r[k] * r[k]
                o[i] = s


def time_structure(name: str, rounds: int) -> dict:
    from qorus_jit.bench.decode import _stream_read, bytes_per_token
    from qorus_jit.layers.attention import DecodeState

    model = build(SHAPES[name], "fp32")
    state = DecodeState(batch=1, max_seq_len=SHAPES[name]["max_seq_len"])
    model.decode_greedy(1, state, 2)  # kernels loaded, the decoder built
    d = model._decoder
    n_bytes = bytes_per_token(model, POSITIONS[0], len(POSITIONS))
    big, part = np.ones(int(n_bytes) // 4, np.float32), np.zeros(64, np.float32)
    other = np.ones_like(big)  # read before each side: no side starts from another's pass over its bytes
    reads = reads_step(d, reads_module())
    mats = numba.typed.List(matrices(model))
    threads = numba.get_num_threads()
    x = np.ones(max(m.shape[1] for m in mats), np.float32)
    out = np.zeros((threads, max(m.shape[0] for m in mats)), np.float32)
    sides = {"token": lambda pos: d.step(5, pos), "reads": lambda pos: reads(5, pos),
             "products": lambda pos: _products(mats, x, out, d.one_row), "squares": lambda pos: _squares(mats, out),
             "stream": lambda pos: _stream_read(big, part)}
    for f in sides.values():  # compiled (the reads' kernel on its first run) and warm
        f(POSITIONS[0])
    names = list(sides)
    times = {k: [] for k in names}
    per_round = {k: [] for k in names[:-1]} | {"token_over_reads": []}
    for r in range(rounds):
        got = {k: [] for k in names}
        for i, pos in enumerate(POSITIONS):
            k0 = (i + r) % len(names)
            for k in names[k0:] + names[:k0]:
                _stream_read(other, part)
                sides[k](pos)
                t0 = time.perf_counter()
                sides[k](pos)
                got[k].append(time.perf_counter() - t0)
        got = {k: np.array(v) for k, v in got.items()}
        for k in names[:-1]:
            per_round[k].append(float(np.median(got["stream"] / got[k])))
        per_round["token_over_reads"].append(float(np.median(got["token"] / got["reads"])))
        for k in names:
            times[k] += list(got[k])
    return {"positions": [POSITIONS[0], POSITIONS[-1]], "bytes_per_token_MB": n_bytes / 1e6,
            "ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
            **{f"{k}_of_stream": spread(per_round[k]) for k in names[:-1]},
            "token_over_reads": spread(per_round["token_over_reads"])}


def main(argv=None) -> dict:
    a = decode_parser(__doc__, rounds=5).parse_args(argv)
    out = start_run(a.threads, a.rounds)
    sides = ("token", "reads", "products", "squares")
    print(f"| shape | MB a token | ms {' / '.join(sides)} / stream | "
          f"{' | '.join(f'{k}, of the stream (rounds)' for k in sides)} | token / reads (rounds) |")
    print("| --- " * (len(sides) + 4) + "|")
    for name in a.shapes.split(","):
        r = out["runs"][name] = time_structure(name, a.rounds)
        ms = " / ".join(f"{r['ms'][k]:.2f}" for k in (*sides, "stream"))
        cells = [f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"
                 for s in [r[f"{k}_of_stream"] for k in sides] + [r["token_over_reads"]]]
        print(f"| {name} | {r['bytes_per_token_MB']:.1f} | {ms} | {' | '.join(cells)} |", flush=True)
    if a.json:
        write_results(a.json, out)
    return out


if __name__ == "__main__":
    main()
