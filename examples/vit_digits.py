"""Classify handwritten digits with a small vision transformer (ViT): a new architecture built from the layers.

Shows how to build a model the package does not ship: the public layers wired into a ``Graph`` beside
small ``Layer`` subclasses written here, each with its forward and a hand-written backward:

- ``Patchify``: each 8x8 image (a row of 64 pixels) cut into square patches, one token per patch: 4
  tokens of 4x4 pixels by default (``--patch 2``: 16 tokens of 2x2, slower to train and a little less
  accurate, 95-98% after 1000 steps); no parameters;
- ``ClassToken``: a learned [CLS] vector put in front of every sequence (one parameter);
- ``TakeToken`` or ``MeanPool`` (``--pool mean``): the sequence to one vector, the [CLS] token's or the
  mean of the tokens.

Between them, from ``qorus_jit.layers``: a ``Linear`` patch projection, learned position embeddings
(``PositionEmbedding``), two non-causal pre-norm ``TransformerBlock`` layers (LayerNorm, GELU MLP, no
RoPE), a final ``LayerNorm`` and a ``Linear`` head to the 10 classes: 69k parameters, trained with
``AdamW``, a warmup-cosine schedule and ``Trainer`` on scikit-learn's bundled digits (1797 images,
nothing to download) with the 20% held out of ``mlp_digits.py``. The defaults (500 steps of 64 images)
reach about 98-99% test accuracy in about 10 seconds on one thread (``--threads``: the kernels' and
BLAS's).

Run it::

    python examples/vit_digits.py
    python examples/vit_digits.py --steps 1000 --seed 1 --patch 2 --pool mean
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

import qorus_jit
from qorus_jit import (
    AdamW,
    ArrayDataset,
    Graph,
    Layer,
    LayerNorm,
    Linear,
    PositionEmbedding,
    Trainer,
    TransformerBlock,
    train_test_split,
    warmup_cosine,
)

IMAGE = 8  # the digits are 8x8 pixels


# ----------------------------------------------------------------------------------- the custom layers


class Patchify(Layer):
    """``x (B, image * image) -> (B, n_patches, patch * patch)``: square images, given as rows of pixels, cut
    into ``patch`` x ``patch`` tiles, row-major over the tiles and within each tile. A pure rearrangement,
    so backward puts each gradient back where its pixel came from."""

    def __init__(self, image: int, patch: int):
        super().__init__()
        if image % patch:
            raise ValueError(f"patch: expected a divisor of image = {image}, got {patch}")
        self.image, self.patch, self.grid = image, patch, image // patch

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.image * self.image:
            raise ValueError(f"x: expected shape (B, {self.image * self.image}), got {x.shape}")
        B, g, p = x.shape[0], self.grid, self.patch
        y = self.buffer("y", (B, g * g, p * p))
        # pixel (row i*p + a, column j*p + c) -> token i*g + j, feature a*p + c
        np.copyto(y.reshape(B, g, g, p, p), x.reshape(B, g, p, g, p).transpose(0, 1, 3, 2, 4))
        return y

    def backward(self, dy):
        B, g, p = dy.shape[0], self.grid, self.patch
        dx = self.buffer("dx", (B, self.image * self.image))
        np.copyto(dx.reshape(B, g, p, g, p), dy.reshape(B, g, g, p, p).transpose(0, 1, 3, 2, 4))
        return dx

    def extra_repr(self) -> str:
        return f"image={self.image}, patch={self.patch}"


class ClassToken(Layer):
    """``x (B, T, dim) -> (B, 1 + T, dim)``: a learned vector ``cls`` put in front of every sequence."""

    def __init__(self, dim: int, rng=None):
        super().__init__()
        self.dim = dim
        self.cls = self.add_parameter("cls", np.random.default_rng(rng).normal(0.0, 0.02, dim), decay=False)

    def forward(self, x):
        if x.ndim != 3 or x.shape[2] != self.dim:
            raise ValueError(f"x: expected shape (B, T, {self.dim}), got {x.shape}")
        B, T, _ = x.shape
        y = self.buffer("y", (B, T + 1, self.dim))
        y[:, 0] = self.cls
        y[:, 1:] = x
        return y

    def backward(self, dy):
        self.grad("cls")[...] += dy[:, 0].sum(axis=0)  # the same vector in every sequence: gradients add up
        dx = self.buffer("dx", (dy.shape[0], dy.shape[1] - 1, self.dim))
        np.copyto(dx, dy[:, 1:])
        return dx

    def extra_repr(self) -> str:
        return f"{self.dim}"


class TakeToken(Layer):
    """``x (B, T, dim) -> (B, dim)``: the token at ``index`` (0: the [CLS] token); the others get no gradient."""

    def __init__(self, index: int = 0):
        super().__init__()
        self.index = index
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        y = self.buffer("y", (x.shape[0], x.shape[2]))
        np.copyto(y, x[:, self.index])
        return y

    def backward(self, dy):
        if self._shape is None:
            raise RuntimeError("TakeToken.backward called before forward")
        dx = self.buffer("dx", self._shape, zero=True)
        dx[:, self.index] = dy
        return dx

    def extra_repr(self) -> str:
        return f"index={self.index}"


class MeanPool(Layer):
    """``x (B, T, dim) -> (B, dim)``: the mean over the tokens; each token gets ``dy / T``."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        y = self.buffer("y", (x.shape[0], x.shape[2]))
        np.mean(x, axis=1, out=y)
        return y

    def backward(self, dy):
        if self._shape is None:
            raise RuntimeError("MeanPool.backward called before forward")
        dx = self.buffer("dx", self._shape)
        np.multiply(dy[:, None, :], np.float32(1 / self._shape[1]), out=dx)  # dy broadcast over the tokens
        return dx


# ------------------------------------------------------------------------------------------ the model


def load_data():
    """``(X_train, X_test, y_train, y_test)``: rows of 64 pixels scaled from 0..16 to [0, 1]; a fixed 20% held
    out (the split of ``mlp_digits.py``)."""
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)  # (1797, 64)
    y = digits.target.astype(np.int64)           # (1797,) labels 0..9
    return train_test_split(X, y, test_fraction=0.2, seed=0)


def build_model(patch: int = 4, dim: int = 64, n_layers: int = 2, n_heads: int = 4, hidden_dim: int = 128,
                pool: str = "cls", n_classes: int = 10, rng=None) -> Graph:
    """``pixels (B, 64) -> logits (B, n_classes)``: N = (8 / patch)^2 patch tokens of ``dim`` features, plus
    a [CLS] token in front if ``pool`` is ``"cls"`` (else ``"mean"``: the mean of the tokens is classified)."""
    if pool not in ("cls", "mean"):
        raise ValueError(f"pool: expected 'cls' or 'mean', got {pool!r}")
    rng = np.random.default_rng(rng)
    n_tokens = (IMAGE // patch) ** 2 + (pool == "cls")
    g = Graph(inputs=["pixels"], output="logits")
    g.add("patchify", Patchify(IMAGE, patch), "pixels", "patches")            # (B, N, patch * patch)
    g.add("patch_embed", Linear(patch * patch, dim, rng=rng), "patches", "e")  # (B, N, dim)
    tokens = "e"
    if pool == "cls":
        tokens = "t"
        g.add("cls_token", ClassToken(dim, rng=rng), "e", tokens)              # (B, 1 + N, dim)
    pos = g.add("pos_embed", PositionEmbedding(n_tokens, dim), tokens, "h0")
    pos.weight[...] = rng.normal(0.0, 0.02, pos.weight.shape)  # N(0, 1) by default: far louder than the patches
    for i in range(n_layers):
        g.add(f"blocks.{i}", TransformerBlock(dim, n_heads, hidden_dim, norm="layer", prenorm=True, mlp="gelu",
                                              mlp_bias=True, causal=False, rope=None, max_seq_len=n_tokens,
                                              attn_bias=True, out_bias=True, rng=rng), f"h{i}", f"h{i + 1}")
    g.add("norm", LayerNorm(dim), f"h{n_layers}", "hn")
    g.add("pool", TakeToken(0) if pool == "cls" else MeanPool(), "hn", "pooled")  # (B, dim)
    g.add("head", Linear(dim, n_classes, rng=rng), "pooled", "logits")
    return g


def train(X_train, y_train, steps: int = 500, seed: int = 0, patch: int = 4, pool: str = "cls") -> Graph:
    """A ViT (:func:`build_model`) trained on mini-batches of 64; ``seed`` draws the weights and the batch order."""
    model = build_model(patch=patch, pool=pool, rng=seed)
    lr = 2e-3
    optimizer = AdamW(model, lr=lr, weight_decay=0.05)
    batches = ArrayDataset(X_train, y_train, batch_size=64, seed=seed)
    trainer = Trainer(model, optimizer, batches, steps=steps, loss="cross_entropy", clip=1.0,
                      schedule=warmup_cosine(lr, warmup_steps=steps // 20, total_steps=steps))
    trainer.fit()
    return model


def accuracy(model, X, y) -> float:
    """Share of the rows of ``X`` whose highest logit is the label in ``y``."""
    return float(np.mean(model.forward(X).argmax(axis=1) == y))


def main(argv=None) -> float:
    """Train and evaluate; returns the test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order")
    parser.add_argument("--patch", type=int, choices=(2, 4), default=4, help="patch side in pixels (default: 4)")
    parser.add_argument("--pool", choices=("cls", "mean"), default="cls", help="[CLS] token or mean of the tokens")
    parser.add_argument("--threads", type=int, default=1, help="threads of the kernels and of BLAS (default: 1)")
    args = parser.parse_args(argv)
    qorus_jit.set_num_threads(args.threads)  # the model is tiny: more threads mostly wait on each other

    X_train, X_test, y_train, y_test = load_data()
    t0 = time.perf_counter()
    model = train(X_train, y_train, steps=args.steps, seed=args.seed, patch=args.patch, pool=args.pool)
    seconds = time.perf_counter() - t0
    acc = accuracy(model, X_test, y_test)
    print(f"{model.num_parameters():,} parameters, {args.steps} steps in {seconds:.1f} s")
    print(f"test accuracy: {acc:.2%} on {len(y_test)} held-out digits")
    return acc


if __name__ == "__main__":
    main()
