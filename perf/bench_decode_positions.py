"""Decoding late in a long context against early in it: what reading the KV cache adds to a token.

    python -m perf.bench_decode_positions [--shapes 15M,110M] [--dtypes fp32,int8] [--rounds 9] [--threads 2]
                                          [--json PATH]

Models: the random Llamas of ``perf.bench_quant_decode`` (stories15M and stories110M shapes, 256 and 1024
positions). One process, one model at a time; each round decodes 16 tokens at early positions (16 on) and 16 at
late ones (the last 24 positions of the context on), one early and one late in turn (which goes first alternating
token by token and round by round), so that a busy moment of the shared machine falls on both alike:

- late / early: the median of the rounds' ratios of median token times;
- bytes late / early: what a token must read there (``qorus_jit.bench.decode.bytes_per_token``: the weights once
  and the cached keys and values), the growth a decoder reading the cache as fast as the weights would show;
- cache cost over its bytes: (late / early - 1) / (bytes late / early - 1); 1 when the cache costs what its bytes
  would cost at the weights' rate, above 1 when it is read slower;
- of the bound late: late tokens/s over the streaming-read bound of the late token's bytes, measured in each
  round (``stream_bandwidth``, as ``perf.bench_quant_decode``).
"""

from __future__ import annotations

import argparse
import statistics
import time

from perf.bench_quant_decode import SHAPES, build, spread
from qorus_jit.bench._timing import write_results
from qorus_jit.core.numerics import get_num_threads

TOKENS = 16  # a window's tokens


def time_positions(name: str, dtype: str, rounds: int) -> dict:
    from qorus_jit.bench.decode import bytes_per_token, stream_bandwidth
    from qorus_jit.layers.attention import DecodeState

    shape = SHAPES[name]
    model = build(shape, dtype)
    T = shape["max_seq_len"]
    early, late = 16, T - 24
    state = DecodeState(batch=1, max_seq_len=T)
    model.decode_greedy(1, state, 2)  # kernels loaded, the decoder built
    step = model._decoder.step  # one token at a given position (the cache's contents do not change its time)
    b_early, b_late = bytes_per_token(model, early, TOKENS), bytes_per_token(model, late, TOKENS)
    ratios, of_bound, t_early, t_late = [], [], [], []
    for r in range(rounds):
        e, l_ = [], []
        for i in range(TOKENS):
            pair = ((early + i, e), (late + i, l_))
            for pos, times in (pair if (i + r) % 2 == 0 else pair[::-1]):
                t0 = time.perf_counter()
                step(5, pos)
                times.append(time.perf_counter() - t0)
        bound = stream_bandwidth(int(b_late)) / b_late
        ratios.append(statistics.median(l_) / statistics.median(e))
        of_bound.append(1 / statistics.median(l_) / bound)
        t_early += e
        t_late += l_
    growth = statistics.median(ratios)
    return {"positions": {"early": [early, early + TOKENS - 1], "late": [late, late + TOKENS - 1]},
            "token_ms": {"early": statistics.median(t_early) * 1e3, "late": statistics.median(t_late) * 1e3},
            "bytes_per_token_MB": {"early": b_early / 1e6, "late": b_late / 1e6},
            "late_over_early": spread(ratios), "bytes_late_over_early": b_late / b_early,
            "cache_cost_over_bytes": (growth - 1) / (b_late / b_early - 1),
            "late_fraction_of_bound": spread(of_bound)}


def decode_parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    """The arguments the decode benchmarks share: --shapes, --rounds, --threads, --json."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--shapes", default="15M,110M")
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    return ap


def start_run(threads: int | None, rounds: int) -> dict:
    """Set the thread count (None: as it is), print the machine's line and return the run's record to fill."""
    from perf.bench_finetune import machine as describe
    from qorus_jit.core.numerics import set_num_threads

    if threads:
        set_num_threads(threads)
    machine = describe()
    print(f"CPU: {machine['cpu']} ({', '.join(machine['simd'])}), {machine['cpus']} CPUs, threads "
          f"{get_num_threads()}, load {machine['loadavg'][0]:.1f}\n")
    return {"machine": machine, "threads": get_num_threads(), "rounds": rounds, "runs": {}}


def main(argv=None) -> dict:
    ap = decode_parser(__doc__, rounds=9)
    ap.add_argument("--dtypes", default="fp32,int8")
    a = ap.parse_args(argv)
    out = start_run(a.threads, a.rounds)
    print("| shape | dtype | positions early / late | ms a token early / late | late / early (rounds) | "
          "bytes late / early | cache cost over its bytes | late, of the bound (rounds) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in a.shapes.split(","):
        for dtype in a.dtypes.split(","):
            r = out["runs"][f"{name} {dtype}"] = time_positions(name, dtype, a.rounds)
            g, f = r["late_over_early"], r["late_fraction_of_bound"]
            print(f"| {name} | {dtype} | {r['positions']['early'][0]} / {r['positions']['late'][0]} | "
                  f"{r['token_ms']['early']:.2f} / {r['token_ms']['late']:.2f} | "
                  f"{g['median']:.3f} ({g['min']:.3f}-{g['max']:.3f}) | {r['bytes_late_over_early']:.3f} | "
                  f"{r['cache_cost_over_bytes']:.2f} | {f['median']:.2f} ({f['min']:.2f}-{f['max']:.2f}) |",
                  flush=True)
    if a.json:
        write_results(a.json, out)
    return out


if __name__ == "__main__":
    main()
