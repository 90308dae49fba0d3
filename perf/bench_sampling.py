"""Sampling the next token: ``infer.generate.sample`` (kernels/sampling.py) beside the NumPy sampler it replaced
(scale, sort the whole vocabulary for top-p, cumulative sum), and ``generate``'s tokens/s with sampling beside
greedy decoding.

    python -m perf.bench_sampling [--vocab 32000] [--pairs 15] [--json PATH]

Logits: a vocabulary of ``--vocab`` float32 logits, "peaked" (normal, standard deviation 4: a trained model's
shape) and "flat" (0.5: a random model's, where the nucleus holds thousands of tokens). Settings: ``qorus
generate``'s defaults (temperature 0.8, top-p 0.95), the same with top-k 40, and temperature 1 alone. Each pair
times one call of each side, alternating which goes first; reported: microseconds a call (medians) and the
median of the pairs' ratios NumPy / ours (above 1: ours faster) with their spread. Then a random Llama of the
stories15M shape with int8 weights generates 200 tokens greedily and with the default sampling (3 rounds each,
alternating): tokens/s. The CPU is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

SETTINGS = {"T 0.8, top-p 0.95": (0.8, None, 0.95), "T 0.8, top-k 40, top-p 0.95": (0.8, 40, 0.95),
            "T 1": (1.0, None, None)}


def numpy_sample(logits, rng, temperature, top_k, top_p):
    """The sampler before kernels/sampling.py: float64 NumPy, a stable sort of the vocabulary for top-p."""
    x = (np.asarray(logits, np.float64) - np.max(logits)) / temperature
    if top_k is not None:
        kth = np.partition(x, x.size - top_k)[x.size - top_k]
        x[x < kth] = -np.inf
    if top_p is not None:
        order = np.argsort(-x, kind="stable")
        p = np.exp(x[order] - x[order[0]])
        p /= p.sum()
        x[order[(np.cumsum(p) - p) >= top_p]] = -np.inf
    cdf = np.cumsum(np.exp(x))
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), x.size - 1))


def time_calls(vocab: int, pairs: int) -> dict:
    from qorus_jit.infer.generate import sample

    rng = np.random.default_rng(0)
    out = {}
    for shape, std in (("peaked", 4.0), ("flat", 0.5)):
        logits = (rng.standard_normal(vocab) * std).astype(np.float32)
        for name, (t, k, p) in SETTINGS.items():
            args = (logits, rng, t, k, p)
            sides = {"ours": lambda a=args: sample(*a), "numpy": lambda a=args: numpy_sample(*a)}
            for f in sides.values():
                f()
            times = {s: [] for s in sides}
            for r in range(pairs):
                for s in (("ours", "numpy") if r % 2 == 0 else ("numpy", "ours")):
                    t0 = time.perf_counter()
                    sides[s]()
                    times[s].append(time.perf_counter() - t0)
            ratios = [a / b for a, b in zip(times["numpy"], times["ours"], strict=True)]
            out[f"{shape}, {name}"] = {"ours_us": 1e6 * statistics.median(times["ours"]),
                                       "numpy_us": 1e6 * statistics.median(times["numpy"]),
                                       "speedup": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def generate_rates(rounds: int = 3) -> dict:
    from perf.bench_quant_decode import SHAPES, build
    from qorus_jit.infer.generate import generate

    model = build(SHAPES["15M"], "int8")
    kinds = {"greedy": dict(temperature=0.0), "T 0.8, top-p 0.95": dict(temperature=0.8, top_p=0.95, seed=0)}
    for kw in kinds.values():
        list(generate(model, [1], 8, **kw))
    rates = {k: [] for k in kinds}
    for r in range(rounds):
        for k in (list(kinds) if r % 2 == 0 else list(kinds)[::-1]):
            g = generate(model, [1], 200, **kinds[k])
            list(g)
            rates[k].append(g.decode_tokens_per_s)
    return {k: statistics.median(v) for k, v in rates.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from qorus_jit.sysinfo import collect

    calls, rates = time_calls(args.vocab, args.pairs), generate_rates()
    print(f"CPU: {collect()['cpu']['model']}, vocabulary {args.vocab}, {args.pairs} pairs\n")
    print("| logits, setting | ours us | NumPy us | NumPy / ours (pairs) |\n| --- | --- | --- | --- |")
    for name, r in calls.items():
        print(f"| {name} | {r['ours_us']:.0f} | {r['numpy_us']:.0f} | {r['speedup']:.1f} "
              f"({r['min']:.1f}-{r['max']:.1f}) |")
    print("\nstories15M int8, 200 tokens: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in rates.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"calls": calls, "generate_tokens_per_s": rates}, f, indent=1)


if __name__ == "__main__":
    main()
