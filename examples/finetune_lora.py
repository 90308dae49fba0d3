"""Fine-tune a pretrained model on your own prompt/answer pairs with LoRA, export it, load it in transformers.

The steps, each printed as it goes:

1. The base model: ``--base PATH``, a Hugging Face Llama or GPT-2 folder with its ``tokenizer.json`` (one you
   downloaded, such as ``gpt2`` or ``TinyLlama``). There is no download here, so without ``--base`` the example
   first makes a small stand-in for a downloaded model: a byte-level Llama trained from scratch for a minute on
   the standard library's documentation (``qorus train`` on the built-in corpus), exported as a Hugging Face
   folder. It knows some English and Python; it has never seen the task below.
2. The data: ``pairs.jsonl``, one ``{"prompt": ..., "completion": ...}`` object a line. The task: "shout" a word,
   ``"Q: shout cat\\nA:"`` -> ``" CAT."``. The training pairs shout random three-letter strings (``"qzv"`` ->
   ``"QZV"``); the last lines shout real words (cat, dog, sun, ...) and are held out: they are the run's
   validation part (``val_fraction``), never trained on, so a right answer there was not memorized.
3. Greedy answers of the base model on the held-out prompts (through qorus): not the task.
4. LoRA fine-tuning (``TrainConfig(init=base, data="pairs.jsonl", lora_rank=8)``, ``start_run``, ``fit``): the
   base weights stay frozen, rank-8 adapters on every projection learn; the loss counts the answer tokens
   only. The validation loss on the held-out pairs before and after; the greedy answers again.
5. Export: ``export_run(run, out, merge_lora=True)`` writes a Hugging Face folder with the adapters merged into
   the weights; transformers' ``AutoModelForCausalLM`` and ``AutoTokenizer`` load it as it is, and their
   greedy answer equals qorus's (skipped, with how to install it, without transformers).
6. Unmerged: the run folder's ``adapter/`` is a PEFT folder; ``peft.PeftModel.from_pretrained`` loads it over
   the base model (the two lines are printed; run when peft is installed).

The same from the command line (``--val-fraction 0.014``: the last 8 of the 608 pairs; their loss is the
validation loss, one batch of 8)::

    qorus train --init BASE --data pairs.jsonl --lora-rank 8 --lora-alpha 16 --lr 5e-3 --min-lr 5e-4 \\
        --seq-len 32 --batch-size 8 --steps 500 --val-fraction 0.014 --eval-batches 1 --name ft
    qorus generate runs/ft -p $'Q: shout cat\\nA:' -n 5 -t 0
    qorus export runs/ft ft-merged --merge-lora

Run it (about two minutes on two cores; the stand-in base takes half of it)::

    python examples/finetune_lora.py
    python examples/finetune_lora.py --base ~/models/gpt2 --out my-finetune --steps 300

Typical learning rates: LoRA 1e-4 to 1e-3 on a real pretrained model (the default with ``--base``: 1e-3), more
on a tiny one (the stand-in: 5e-3); full fine-tuning about ten times less than LoRA (1e-5 to 1e-4).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from qorus_jit import load_source
from qorus_jit.infer.export import export_run
from qorus_jit.infer.generate import generate
from qorus_jit.train.run import TrainConfig, start_run

#: Held-out words: the answers shown before and after fine-tuning (never in the training pairs).
HELD_OUT = ["cat", "dog", "sun", "map", "red", "box", "cup", "hat", "pen", "car", "owl", "jam"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SEQ_LEN = 32  # tokens per training row: a pair is about 20 bytes
ANSWER_TOKENS = 8  # new tokens generated for an answer (cut at its ".")

#: Sizes: the stand-in base model and its training, and the fine-tuning (--small: the test suite's).
SIZES = {
    "default": {"base": dict(dim=64, n_layers=2, n_heads=4, hidden_dim=192, seq_len=64, steps=600, batch_size=16,
                             lr=3e-3, min_lr=3e-4),
                "steps": 500, "n_train": 600, "n_held": 8},
    "small": {"base": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, seq_len=32, steps=60, batch_size=8,
                           lr=3e-3, min_lr=3e-4),
              "steps": 40, "n_train": 200, "n_held": 8},
}


def prompt_of(word: str) -> str:
    return f"Q: shout {word}\nA:"


def make_pairs(n_train: int, n_held: int, seed: int) -> tuple[list, list]:
    """``(train, held)`` lists of (prompt, completion): random three-letter strings to train on (none of them
    a held-out word), and the first ``n_held`` words of :data:`HELD_OUT`."""
    rng = random.Random(seed)
    held_words = HELD_OUT[:n_held]
    seen, train = set(held_words), []
    while len(train) < n_train:
        w = "".join(rng.choice(LETTERS) for _ in range(3))
        if w not in seen:
            seen.add(w)
            train.append((prompt_of(w), f" {w.upper()}."))
    return train, [(prompt_of(w), f" {w.upper()}.") for w in held_words]


def write_jsonl(path: Path, pairs) -> None:
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs), encoding="utf-8")


def answer_of(text: str) -> str:
    """The answer in a greedy continuation: up to its first "." (or line end)."""
    text = text.split("\n")[0]
    return text[:text.index(".") + 1] if "." in text else text


def greedy(src, prompt: str) -> tuple[list[int], str]:
    """qorus's greedy continuation of ``prompt`` by the source ``src``: its new ids and its answer."""
    ids = list(generate(src.model, src.encode(prompt), ANSWER_TOKENS, temperature=0.0,
                        stop_tokens=src.stop_ids, vocab_limit=src.vocab_limit))
    return ids, answer_of(src.decode(ids))


def make_base(out: Path, size: dict, seed: int, progress: bool) -> Path:
    """The stand-in for a downloaded model: a byte-level Llama trained from scratch on the built-in corpus,
    exported as a Hugging Face folder ``out/base-hf``."""
    cfg = TrainConfig(**size, warmup_steps=size["steps"] // 20, eval_every=size["steps"], eval_batches=4,
                      ckpt_every=size["steps"], sample_tokens=0, seed=seed, out_dir=str(out), name="base-run")
    run = start_run(cfg, progress=progress)
    run.fit()
    return export_run(run.run_dir, out / "base-hf").path


def show_answers(title: str, held, answers) -> int:
    right = sum(a == c for (_, c), a in zip(held, answers, strict=True))
    print(f"{title}: {right} of {len(held)} right")
    for (p, c), a in zip(held, answers, strict=True):
        print(f"  {p.splitlines()[0]:<14} -> {a!r:<10} (expected {c!r})")
    return right


def main(argv=None) -> dict:
    """Run every step; returns the paths (``out``, ``base``, ``pairs``, ``run_dir``, ``merged``), the held-out
    pairs ``held``, the greedy answers ``before``/``after`` and the validation losses on the held-out pairs
    ``val_loss_before``/``val_loss_after``; ``transformers_answer`` and ``max_logit_diff`` when transformers
    ran, ``peft_answer`` when peft did."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="", help="Hugging Face Llama or GPT-2 folder with tokenizer.json "
                                                   "(default: train a small stand-in first)")
    parser.add_argument("--out", default="", help="new or empty folder for everything written "
                                                  "(default: a new folder in the temp dir)")
    parser.add_argument("--steps", type=int, default=0, help="fine-tuning steps (default: 500; --small: 40)")
    parser.add_argument("--lr", type=float, default=0.0, help="peak learning rate (default: 5e-3 for the "
                                                              "stand-in, 1e-3 with --base)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pairs, weights and batches")
    parser.add_argument("--small", action="store_true", help="tiny sizes and few steps (what the tests run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    size = SIZES["small" if args.small else "default"]
    steps = args.steps or size["steps"]
    lr = args.lr or (1e-3 if args.base else 5e-3)
    if steps < 1 or lr <= 0 or args.rank < 1:
        parser.error("--steps, --lr and --rank: expected numbers > 0")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="qorus-finetune-"))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--out: expected a new or empty folder, got {out}")
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    start = time.perf_counter()
    print(f"writing to {out}")

    # 1. the pretrained base model
    if args.base:
        base = Path(args.base)
        print(f"\n[1] base model: {base}")
    else:
        print("\n[1] base model: none given (--base), so first a small stand-in for a downloaded pretrained model:\n"
              f"    a byte-level Llama trained from scratch for {size['base']['steps']} steps on the standard "
              "library's docs,\n    exported as a Hugging Face folder (a real one is better: --base PATH)")
        base = make_base(out, size["base"], args.seed, progress)
        print(f"    wrote {base}")

    # 2. the data
    train, held = make_pairs(size["n_train"], size["n_held"], args.seed)
    pairs = out / "pairs.jsonl"
    write_jsonl(pairs, train + held)  # the held-out pairs last: the validation part of the run
    print(f"\n[2] wrote {pairs}: {len(train)} training pairs (random letters), then {len(held)} held out "
          f"(real words)\n    e.g. {json.dumps({'prompt': train[0][0], 'completion': train[0][1]})}")

    # 3. the base model's answers
    src = load_source(base)
    before = [greedy(src, p)[1] for p, _ in held]
    print()
    show_answers("[3] greedy answers of the base model on held-out prompts", held, before)
    del src

    # 4. LoRA fine-tuning; val_fraction makes the last len(held) pairs the validation part exactly
    cfg = TrainConfig(init=str(base), data=str(pairs), val_fraction=(len(held) + 0.5) / (len(train) + len(held)),
                      lora_rank=args.rank, lora_alpha=2.0 * args.rank, seq_len=SEQ_LEN, steps=steps, batch_size=8,
                      lr=lr, min_lr=lr / 10, warmup_steps=max(1, steps // 20), eval_every=max(1, steps // 5),
                      eval_batches=1, ckpt_every=steps, sample_tokens=0, seed=args.seed, out_dir=str(out),
                      name="lora-run")
    print(f"\n[4] LoRA fine-tuning: rank {args.rank}, alpha {2 * args.rank}, lr {lr:g}, {steps} steps of 8 pairs "
          "(the loss counts the answer tokens only)")
    print(f"    (qorus train --init {base} --data {pairs} --lora-rank {args.rank} --lora-alpha {2 * args.rank} "
          f"--lr {lr:g} --min-lr {lr / 10:g} --seq-len {SEQ_LEN} --batch-size 8 --steps {steps} "
          f"--warmup-steps {cfg.warmup_steps} --eval-every {cfg.eval_every} --val-fraction {cfg.val_fraction:.4g} "
          f"--eval-batches 1 --seed {args.seed} --out-dir {out} --name lora-run)")
    run = start_run(cfg, progress=progress)
    assert run.data.n_val_examples == len(held)
    val_before = run.trainer.evaluate()["val_loss"]
    val_after = run.fit()["val_loss"]
    print(f"    held-out loss (nats per answer token): {val_before:.3f} before, {val_after:.3f} after")
    print(f"    run folder: {run.run_dir} (adapters in PEFT's format: {run.run_dir / 'adapter'})")
    src = load_source(run.run_dir)  # the base with the trained adapters, and its tokenizer
    tuned = [greedy(src, p) for p, _ in held]
    after = [a for _, a in tuned]
    print()
    show_answers("    greedy answers after fine-tuning", held, after)

    # 5. export with the adapters merged, load in transformers
    merged = export_run(run.run_dir, out / "merged-hf", merge_lora=True)
    print(f"\n[5] qorus export {run.run_dir} {merged.path} --merge-lora")
    for note in merged.notes:
        print(f"    {note}")
    result = {"out": out, "base": base, "pairs": pairs, "run_dir": run.run_dir, "merged": merged.path,
              "held": held, "before": before, "after": after, "val_loss_before": val_before,
              "val_loss_after": val_after}
    prompt, (ids, answer) = held[0][0], tuned[0]
    try:
        import torch
        import transformers
    except ImportError:
        print("    transformers is not installed, so this step is skipped: pip install transformers torch")
        transformers = None
    if transformers is not None:
        transformers.logging.disable_progress_bar()  # the weights are tiny: no loading bars
        print("    in transformers:\n"
              f"      tokenizer = AutoTokenizer.from_pretrained({str(merged.path)!r})\n"
              f"      model = AutoModelForCausalLM.from_pretrained({str(merged.path)!r})")
        tokenizer = transformers.AutoTokenizer.from_pretrained(merged.path)
        model = transformers.AutoModelForCausalLM.from_pretrained(merged.path).eval()
        x = torch.tensor(src.encode(prompt)[None])
        with torch.no_grad():
            theirs = model.generate(x, max_new_tokens=len(ids), do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id or 0)[0, x.shape[1]:].tolist()
            logits = model(x).logits[0].numpy()
        diff = float(np.abs(logits - src.model.forward(src.encode(prompt)[None])[0]).max())
        hf_answer = answer_of(tokenizer.decode(theirs))
        same = "equal to" if theirs == ids else "DIFFERENT from"
        print(f"    transformers' greedy answer to {prompt.splitlines()[0]!r}: {hf_answer!r}, {same} qorus's "
              f"{answer!r} (logits differ by at most {diff:.1e})")
        result.update(transformers_answer=hf_answer, transformers_ids=theirs, qorus_ids=ids, max_logit_diff=diff)

    # 6. the unmerged adapters with peft
    adapter = run.run_dir / "adapter"
    print(f"\n[6] unmerged: {adapter} holds the adapters in PEFT's format; over the base model:\n"
          f"      model = AutoModelForCausalLM.from_pretrained({str(base)!r})\n"
          f"      model = PeftModel.from_pretrained(model, {str(adapter)!r})")
    try:
        import peft
    except ImportError:
        print("    peft is not installed, so they are not run: pip install peft")
        peft = None
    if peft is not None and transformers is not None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft calls an API transformers deprecates
            model = transformers.AutoModelForCausalLM.from_pretrained(base)
            model = peft.PeftModel.from_pretrained(model, adapter).eval()
            theirs = model.generate(input_ids=x, max_new_tokens=len(ids), do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id or 0)[0, x.shape[1]:].tolist()
        result["peft_answer"] = answer_of(tokenizer.decode(theirs))
        print(f"    peft's greedy answer: {result['peft_answer']!r}")
    print(f"\ndone in {time.perf_counter() - start:.0f} s; everything is in {out}")
    return result


if __name__ == "__main__":
    main()
