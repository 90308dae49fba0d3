"""Train a tiny byte-level Llama from Python, then sample text from it.

Shows ``ByteTokenizer`` and ``TextDataset`` over a corpus, a small ``Llama``, and ``Trainer`` with AdamW,
a warmup-cosine schedule, gradient clipping and a progress bar; prints the validation loss (nats per
byte) before and after training, then a sample. The default corpus is the standard library's
documentation (``default_corpus()``, nothing to download); ``--data`` takes any UTF-8 text file.
Untrained, the loss is about ln 256 = 5.55 (a uniform guess over bytes) and byte frequencies alone give
3.2; the default 1000 steps (about half a minute on one free core) reach about 1.3.

Run it::

    python examples/train_tiny_llama.py
    python examples/train_tiny_llama.py --data my_text.txt --steps 3000 --seed 1

For longer runs with checkpoints, resume and metrics, use ``qorus train`` (``qorus_jit.train.run``).
"""

from __future__ import annotations

import argparse

import numpy as np

from qorus_jit.data import TextDataset, default_corpus
from qorus_jit.infer.generate import sample_tokens
from qorus_jit.models import Llama, LlamaConfig
from qorus_jit.tokenizers import ByteTokenizer
from qorus_jit.train.optim import AdamW
from qorus_jit.train.schedule import warmup_cosine
from qorus_jit.train.trainer import Trainer

SEQ_LEN = 64  # bytes of context per training window


def main(argv=None) -> dict:
    """Train and sample; returns ``val_loss_before``, ``val_loss_after``, ``sample`` (the text generated
    after the prompt), its ``sample_ids`` and the trained ``model``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: 1000)")
    parser.add_argument("--data", default="", help="UTF-8 text file (default: the standard library's docs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the batches and the sample")
    parser.add_argument("--sample-len", type=int, default=200, help="bytes to generate at the end")
    parser.add_argument("--prompt", default="The ", help="text the sample starts from")
    args = parser.parse_args(argv)
    if not args.prompt:
        parser.error("--prompt: the sample needs at least one byte to start from")

    tokenizer = ByteTokenizer()
    if args.data:
        data = TextDataset.from_text_file(args.data, tokenizer, SEQ_LEN, val_fraction=0.05, seed=args.seed)
    else:
        _, text = default_corpus()
        data = TextDataset(tokenizer.encode(text), SEQ_LEN, val_fraction=0.05, seed=args.seed,
                           vocab_size=tokenizer.vocab_size)

    config = LlamaConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=192, vocab_size=tokenizer.vocab_size,
                         max_seq_len=SEQ_LEN, tie_embeddings=True)
    model = Llama(config, rng=args.seed)
    lr = 3e-3
    optimizer = AdamW(model, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = warmup_cosine(lr, warmup_steps=args.steps // 20, total_steps=args.steps, min_lr=lr / 10)
    trainer = Trainer(model, optimizer, data, steps=args.steps, batch_size=16, schedule=schedule, clip=1.0,
                      eval_every=max(1, args.steps // 5))

    before = trainer.evaluate()["val_loss"]
    print(f"validation loss before training: {before:.3f} nats/byte")
    after = trainer.fit()["val_loss"]
    print(f"validation loss after {args.steps} steps: {after:.3f} nats/byte")

    prompt_ids = tokenizer.encode(args.prompt)
    ids = sample_tokens(model, prompt_ids, args.sample_len, max_len=SEQ_LEN, temperature=0.8,
                        rng=np.random.default_rng(args.seed))
    sample = tokenizer.decode(ids)
    print(f"sample:\n{args.prompt}{sample}")
    return {"val_loss_before": before, "val_loss_after": after, "sample": sample, "sample_ids": ids,
            "model": model}


if __name__ == "__main__":
    main()
