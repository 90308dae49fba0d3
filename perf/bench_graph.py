"""Overhead of the generic graph: a Llama forward + backward through the layers and the graph, against the
same kernels called in one straight function with preallocated buffers.

    python -m perf.bench_graph [--quick]

Both run the config of the start-up bar (dim 256, 4 layers, 8 heads, hidden 768, vocab 256, batch 8, seq 256)
with the same weights; the straight function is checked to give the same logits and gradients first. The two
are timed in pairs of back-to-back steps, in turn first (``_timing.paired_times``); the overhead is that of the
median of the pairs' ratios.
"""

from __future__ import annotations

import sys

import numpy as np

from qorus_jit.bench._timing import paired_times, record, spread_text
from qorus_jit.kernels import attention as A
from qorus_jit.kernels import rope as R
from qorus_jit.kernels.activations import _swiglu_backward, _swiglu_forward
from qorus_jit.kernels.embedding import _embedding_backward, _embedding_forward
from qorus_jit.kernels.loss import cross_entropy_forward_backward
from qorus_jit.kernels.matmul import _linear_backward, _linear_forward
from qorus_jit.kernels.norm import _rmsnorm_backward, _rmsnorm_forward
from qorus_jit.models import Llama, LlamaConfig

F32 = np.float32
_NO_BASE = np.empty((0, 0), F32)  # the norms' backward adds no residual here (it accumulates into dh)


class Straight:
    """Llama forward + backward as one straight sequence of kernel calls over buffers allocated once."""

    def __init__(self, model: Llama, B: int, T: int):
        c = model.config
        self.c, self.B, self.T = c, B, T
        self.p, self.g = model.parameters(), model.gradients()
        self.cos, self.sin = R.rope_cache(c.max_seq_len, c.head_dim, c.rope_theta)
        N, d, f, H, Hkv, D = B * T, c.dim, c.hidden_dim, c.n_heads, c.n_kv_heads, c.head_dim
        L = c.n_layers

        def z(*shape):
            return np.zeros(shape, F32)

        self.h = [z(N, d) for _ in range(L + 1)]                       # residual stream per layer input
        self.h2 = [z(N, d) for _ in range(L)]
        self.xn, self.xn2 = [z(N, d) for _ in range(L)], [z(N, d) for _ in range(L)]
        self.r1, self.r2 = [z(N) for _ in range(L)], [z(N) for _ in range(L)]
        self.q, self.k, self.v = [z(B, T, H, D) for _ in range(L)], [z(B, T, Hkv, D) for _ in range(L)], \
            [z(B, T, Hkv, D) for _ in range(L)]
        self.att, self.lse = [z(B, T, H, D) for _ in range(L)], [z(B, H, T) for _ in range(L)]
        self.gt, self.up, self.s = ([z(N, f) for _ in range(L)] for _ in range(3))
        self.tmp, self.rn, self.hn, self.logits = z(N, d), z(N), z(N, d), z(N, c.vocab_size)
        self.dlogits, self.dh, self.dh2, self.dtmp = z(N, c.vocab_size), z(N, d), z(N, d), z(N, d)
        self.ds, self.dgt, self.dup = z(N, f), z(N, f), z(N, f)
        self.datt, self.dq, self.dk, self.dv = z(B, T, H, D), z(B, T, H, D), z(B, T, Hkv, D), z(B, T, Hkv, D)
        self.dqr, self.dkr = z(B, T, H, D), z(B, T, Hkv, D)

    def step(self, ids):
        """Forward, cross-entropy against ``ids`` (as in the graph run), backward; returns the loss."""
        c, p, g, B, T = self.c, self.p, self.g, self.B, self.T
        N = B * T
        eps = F32(c.norm_eps)
        _embedding_forward(self.h[0], ids.reshape(-1), p["model.embed_tokens.weight"])
        for i in range(c.n_layers):
            w = f"model.layers.{i}."
            _rmsnorm_forward(self.xn[i], self.r1[i], self.h[i], p[w + "input_layernorm.weight"], eps)
            for t, name in ((self.q[i], "q_proj"), (self.k[i], "k_proj"), (self.v[i], "v_proj")):
                _linear_forward(t.reshape(N, -1), self.xn[i], p[w + f"self_attn.{name}.weight"], None)
            R._rope_forward(self.q[i], self.cos, self.sin, 0, False)
            R._rope_forward(self.k[i], self.cos, self.sin, 0, False)
            A.attention_forward(self.att[i], self.lse[i], self.q[i], self.k[i], self.v[i], True)
            _linear_forward(self.tmp, self.att[i].reshape(N, -1), p[w + "self_attn.o_proj.weight"], None)
            np.add(self.h[i], self.tmp, out=self.h2[i])
            _rmsnorm_forward(self.xn2[i], self.r2[i], self.h2[i], p[w + "post_attention_layernorm.weight"], eps)
            _linear_forward(self.gt[i], self.xn2[i], p[w + "mlp.gate_proj.weight"], None)
            _linear_forward(self.up[i], self.xn2[i], p[w + "mlp.up_proj.weight"], None)
            _swiglu_forward(self.s[i].reshape(-1), self.gt[i].reshape(-1), self.up[i].reshape(-1))
            _linear_forward(self.tmp, self.s[i], p[w + "mlp.down_proj.weight"], None)
            np.add(self.h2[i], self.tmp, out=self.h[i + 1])
        _rmsnorm_forward(self.hn, self.rn, self.h[-1], p["model.norm.weight"], eps)
        _linear_forward(self.logits, self.hn, p["lm_head.weight"], None)
        loss = cross_entropy_forward_backward(self.dlogits, self.logits, ids.reshape(-1))

        for arr in g.values():
            arr.fill(0)
        self.dtmp.fill(0)
        _linear_backward(self.dtmp, g["lm_head.weight"], None, self.dlogits, self.hn, p["lm_head.weight"])
        self.dh.fill(0)
        _rmsnorm_backward(self.dh, g["model.norm.weight"], self.dtmp, self.h[-1], p["model.norm.weight"], self.rn, True,
                          _NO_BASE)
        for i in reversed(range(c.n_layers)):
            w = f"model.layers.{i}."
            # mlp: h_next = h2 + down(swiglu(gate(xn2), up(xn2)))
            self.ds.fill(0)
            _linear_backward(self.ds, g[w + "mlp.down_proj.weight"], None, self.dh, self.s[i],
                             p[w + "mlp.down_proj.weight"])
            self.dgt.fill(0)
            self.dup.fill(0)
            _swiglu_backward(self.dgt.reshape(-1), self.dup.reshape(-1), self.ds.reshape(-1),
                             self.gt[i].reshape(-1), self.up[i].reshape(-1))
            self.dtmp.fill(0)
            _linear_backward(self.dtmp, g[w + "mlp.gate_proj.weight"], None, self.dgt, self.xn2[i],
                             p[w + "mlp.gate_proj.weight"])
            _linear_backward(self.dtmp, g[w + "mlp.up_proj.weight"], None, self.dup, self.xn2[i],
                             p[w + "mlp.up_proj.weight"])
            np.copyto(self.dh2, self.dh)
            _rmsnorm_backward(self.dh2, g[w + "post_attention_layernorm.weight"], self.dtmp, self.h2[i],
                              p[w + "post_attention_layernorm.weight"], self.r2[i], True, _NO_BASE)
            # attention: h2 = h + o(attn(rope(q(xn)), rope(k(xn)), v(xn)))
            self.datt.fill(0)
            _linear_backward(self.datt.reshape(N, -1), g[w + "self_attn.o_proj.weight"], None, self.dh2,
                             self.att[i].reshape(N, -1), p[w + "self_attn.o_proj.weight"])
            for t in (self.dq, self.dk, self.dv, self.dqr, self.dkr):
                t.fill(0)
            A.attention_backward(self.dq, self.dk, self.dv, self.datt, self.q[i], self.k[i], self.v[i], self.att[i],
                                 self.lse[i], True)
            R._rope_backward(self.dqr, self.dq, self.cos, self.sin, 0, False)
            R._rope_backward(self.dkr, self.dk, self.cos, self.sin, 0, False)
            self.dtmp.fill(0)
            for t, name in ((self.dqr, "q_proj"), (self.dkr, "k_proj"), (self.dv, "v_proj")):
                _linear_backward(self.dtmp, g[w + f"self_attn.{name}.weight"], None, t.reshape(N, -1), self.xn[i],
                                 p[w + f"self_attn.{name}.weight"])
            np.copyto(self.dh, self.dh2)
            _rmsnorm_backward(self.dh, g[w + "input_layernorm.weight"], self.dtmp, self.h[i],
                              p[w + "input_layernorm.weight"], self.r1[i], True, _NO_BASE)
        _embedding_backward(g["model.embed_tokens.weight"], self.dh, ids.reshape(-1))
        return loss


def graph_step(model, ids, dlogits):
    V = model.config.vocab_size
    logits = model.forward(ids)
    loss = cross_entropy_forward_backward(dlogits, logits.reshape(-1, V), ids.reshape(-1))
    model.zero_grad()
    model.backward(dlogits.reshape(*ids.shape, V))
    return loss


def run(quick: bool = False) -> list[dict]:
    cfg = LlamaConfig(dim=256, n_layers=4, n_heads=8, hidden_dim=768, vocab_size=256, max_seq_len=256)
    B, T = 8, 256
    model = Llama(cfg, rng=0)
    ids = np.random.default_rng(0).integers(0, 256, (B, T))
    dlogits = np.empty((B * T, cfg.vocab_size), F32)
    straight = Straight(model, B, T)
    loss_graph = graph_step(model, ids, dlogits)
    grads_graph = {k: v.copy() for k, v in model.gradients().items()}
    loss_straight = straight.step(ids)
    assert abs(loss_graph - loss_straight) < 1e-5, (loss_graph, loss_straight)
    for k, v in model.gradients().items():
        np.testing.assert_allclose(v, grads_graph[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # one step of each per pair, back to back, so a busy stretch slows both sides of a pair (the check warmed both)
    t = paired_times(lambda: graph_step(model, ids, dlogits), lambda: straight.step(ids), repeat=3 if quick else 11,
                     warmup=0, min_time=0.0)
    row = record("llama fwd+bwd through graph", f"dim256 L4 H8 B{B} T{T}", t, "straight")
    row["overhead"] = 1 / row["speedup"] - 1  # speedup = straight / graph
    return [row]


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"graph {r['ours_s'] * 1e3:.1f} ms, straight {r['ref_s'] * 1e3:.1f} ms, "
              f"graph overhead {r['overhead'] * 100:+.1f}% (medians; straight / graph per pair {spread_text(r)})")
