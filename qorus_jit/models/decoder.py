"""The one-call decoder: one new token of one sequence through a whole model in a single kernel call
(``kernels.trusted.llama_decode``), llama2.c-like: the weights gathered as views once, the run state allocated
once per KV cache. :class:`OneCallDecoding` gives an architecture the decoding entry points over it; the
architecture says which of its models it can run (:meth:`OneCallDecoding._find_plan`) and gives its blocks'
arrays (:meth:`OneCallDecoding._decode_blocks`): Llama (RMSNorm, RoPE, SwiGLU) and GPT-2 (LayerNorm, biases,
GELU, learned positions) share the kernel through its ``form``.
"""

from __future__ import annotations

import numpy as np

from qorus_jit.core.numerics import get_num_threads, max_threads
from qorus_jit.kernels import trusted as K
from qorus_jit.kernels.decode import block_table, one_row_float32, phase_counters
from qorus_jit.kernels.quant import active_path
from qorus_jit.layers import DecodeState
from qorus_jit.layers.base import structure_version
from qorus_jit.layers.quantized import quantized_layers


class OneCallDecoding:
    """The decoding entry points of an :class:`~qorus_jit.models.base.Architecture` (listed first among its
    bases) over the one-call decoder, node by node where the plan says None."""

    _decoder: _Decoder | None = None  # the run state of the last DecodeState's caches
    _plan: tuple[int, str | None] | None = None  # (structure_version, _find_plan())

    def forward_decode(self, ids, *, state: DecodeState, last_only: bool = False):
        """:meth:`Graph.forward_decode`. One new token of one sequence goes through the whole model in a
        single kernel call (``kernels.trusted.llama_decode``) where the model's plan allows it (:meth:`_find_plan`);
        anything else runs node by node."""
        ids = self._check_decode(ids, state)
        if ids.shape == (1, 1) and self._decode_plan() is not None:
            return self._decode_token(int(ids[0, 0]), state).reshape(1, 1, -1)
        return super().forward_decode(ids, state=state, last_only=last_only)

    def decode_one(self, tok: int, state: DecodeState) -> np.ndarray:
        """:meth:`Architecture.decode_one`: the one-call decoder of :meth:`forward_decode` where it applies."""
        if self._decode_plan() is None:
            return super().decode_one(tok, state)
        return self._decode_next(tok, state)

    def decode_argmax(self, tok: int, state: DecodeState) -> tuple[int, np.ndarray]:
        """:meth:`Architecture.decode_argmax`: the one-call decoder takes the argmax as it writes the logits."""
        if self._decode_plan() is None:
            return super().decode_argmax(tok, state)
        logits = self._decode_next(tok, state)
        return int(self._decoder.out[1][0]), logits

    def decode_greedy(self, tok: int, state: DecodeState, n: int, stop_tokens=()):
        """:meth:`Architecture.decode_greedy`: the run in one call of the one-call decoder's kernel."""
        if self._decode_plan() is None:
            return super().decode_greedy(tok, state, n, stop_tokens)
        stops = self._check_greedy(tok, state, n, stop_tokens)
        toks = np.empty(n, np.int64)
        ran = self._decode_run(int(tok), state, toks, stops)
        state.pos += ran
        return toks[:ran], self._decoder.out[0]

    def _decode_next(self, tok, state) -> np.ndarray:
        self._check_one(tok, state)
        logits = self._decode_token(int(tok), state)
        state.pos += 1
        return logits

    def _decode_plan(self) -> str | None:
        """The weights the one-call decoder reads ("fp32", "bf16", "q8_0"), or None (node by node): found by
        walking the layers once, again only after a layer was swapped (``structure_version``); None too where
        the blocks need the whole token in one region (:attr:`_by_kv_head_only`) and the threads outnumber the kv
        heads."""
        version = structure_version()
        if self._plan is None or self._plan[0] != version:
            self._plan = (version, self._find_plan())
        if self._by_kv_head_only and not decode_split(self._n_kv_heads())[0]:
            return None
        return self._plan[1]

    # -- what an architecture gives

    #: Whether the blocks run only as the whole token in one region (not block by block: a form other than a
    #: Llama's, ``kernels.decode._llama_decode``).
    _by_kv_head_only: bool = False

    def _find_plan(self) -> str | None:
        """The weights the one-call decoder would read ("fp32", "bf16", "q8_0"), or None where it cannot run
        this model (node by node)."""
        raise NotImplementedError

    def _decode_attentions(self) -> list:
        """The blocks' attention layers, in order (their KV caches are the decoder's)."""
        raise NotImplementedError

    def _decode_blocks(self, caches, weight):
        """``(blocks, embed, norm_w, norm_b, form, wpe)`` for :class:`_Decoder`: each block's arrays in the order
        ``kernels.decode._llama_decode`` takes them (``weight(name)``: the (W, scales) of the linear layer
        ``name`` in the plan's format), the embedding table (None: the quantized head's), the final norm's
        weight and bias, the blocks' ``form`` (``kernels.decode.FORM_*``) and the table of learned positions
        (any 2-D float32 array where the form has none)."""
        raise NotImplementedError

    def _n_kv_heads(self) -> int:
        return getattr(self.config, "n_kv_heads", None) or self.config.n_heads


    def _decode_token(self, tok: int, state: DecodeState) -> np.ndarray:
        """The logits ``(vocab_size,)`` of ``tok`` at ``state.pos`` by the one-call decoder (a run of one)."""
        self._decode_run(tok, state, None, _NO_STOPS)
        return self._decoder.out[0]

    def _decode_run(self, tok: int, state: DecodeState, toks, stops) -> int:
        """A greedy run of up to ``len(toks)`` tokens from ``tok`` at ``state.pos`` by the one-call decoder (made
        once per state; ``toks`` None: one token, into the decoder's own buffer): :meth:`_Decoder.run`. Returns
        how many ran; the caches hold them, ``state.pos`` is the caller's to move."""
        d = self._decoder
        if d is None or d.state is not state or d.plan != self._plan:
            d = self._decoder = _Decoder(self, state, self._plan)
        toks = d.one if toks is None else toks
        pos, n = state.pos, len(toks)
        for cache in d.caches:
            if cache.length != pos:
                raise ValueError(f"state: a cache holds {cache.length} positions, expected state.pos = {pos}")
        if pos + n > d.caches[0].max_seq_len or pos + n > self.config.max_seq_len:
            raise ValueError(f"ids: position {pos + n - 1} is past the cache ({d.caches[0].max_seq_len}) or "
                             f"max_seq_len ({self.config.max_seq_len})")
        ran = d.run(toks, stops, tok, pos)
        for cache in d.caches:
            cache.length = pos + ran
        return ran


def decode_split(n_kv_heads: int) -> tuple[bool, int]:
    """The thread split arguments of the decode kernel (``by_kv_head``, ``n_parts``): the whole token in one
    region, its attention phase by kv head, when there are at least as many kv heads as threads; one participant
    and one slice of the hidden units per thread."""
    threads = get_num_threads()
    return n_kv_heads >= threads, threads


class _Decoder:
    """llama2.c's run state for one sequence: the weights as views of the model's (float32 parameters, or the
    bf16 / q8_0 arrays of its quantized layers), the KV caches of one :class:`DecodeState` (one per block) and
    the activations and scratch of one token, gathered and allocated once; the blocks' arrays go to the kernel
    as a table of addresses (``kernels.decode.block_table``), which the arrays held here keep valid. :meth:`step`
    takes one token through the whole model in one kernel call. ``plan``: the model's (structure_version,
    weights) it was made for."""

    def __init__(self, model: OneCallDecoding, state: DecodeState, plan):
        c, p, b = model.config, model.parameters(), model.buffer
        caches = [state.cache_for(a) for a in model._decode_attentions()]
        self.state, self.caches, self.plan, self.fmt = state, caches, plan, plan[1]
        self.n_kv_heads = model._n_kv_heads()
        hd, kd, H = c.n_heads * c.head_dim, self.n_kv_heads * c.head_dim, c.n_heads
        # the logits, their argmax and the threads' (best[0], best[1 ..]), the hidden state
        self.out = (b("decode_logits", (c.vocab_size,)), b("decode_best", (max_threads() + 1,), np.int64),
                    b("decode_x", (c.dim,)))
        self.one = np.zeros(1, np.int64)  # the token a single step writes (a run of one)
        scratch = (b("decode_h", (c.dim,)), b("decode_q", (hd,)), b("decode_k", (kd,)), b("decode_v", (kd,)),
                   b("decode_att", (hd,)), b("decode_scores", (H, caches[0].max_seq_len)),
                   b("decode_g", (c.hidden_dim,)), b("decode_u", (c.hidden_dim,)))
        parts = b("decode_parts", (max_threads(), c.dim))  # partial sums of column slices
        q = quantized_layers(model)

        def weight(name):  # as kernels.decode's _rows takes it: (W, its scales; none for float32 or bf16)
            if self.fmt == "fp32":
                tied = name == "lm_head" and c.tie_embeddings
                return (p[model.hf_embedding] if tied else p[name + ".weight"]), _NO_SCALES
            layer = q[name]
            if layer.weight_format == "q8_0":
                return layer.qs, layer.d
            return layer.w16.view(np.uint32), _NO_SCALES

        self.blocks, embed, norm_w, norm_b, form, wpe = model._decode_blocks(caches, weight)
        final = (norm_w, np.float32(c.norm_eps))
        first, addresses = block_table(self.blocks)
        eps = (np.full(c.n_layers, c.norm_eps, np.float32), np.float32(1 / np.sqrt(c.head_dim)))
        widest = max(c.dim, hd, c.hidden_dim)
        # the scratch's dtype picks the dot (kernels.decode's _rows): the x86 one of the path the products run
        portable = self.fmt != "fp32" and active_path(self.fmt) == "portable"
        head = weight("lm_head")
        arrays = {id(a): a for a in (*(a for blk in self.blocks for j, a in enumerate(blk) if j not in _STATE),
                                     *head)}
        token_bytes = sum(a.nbytes for a in arrays.values())
        self.one_row = one_row_float32(token_bytes)  # how float32 W is read: this CPU's way for this size
        if self.fmt == "fp32":  # a copy of x, and (xb's value) whether W is read a row at a time
            prep = ((widest, np.float32), (1, np.bool_))
        elif self.fmt == "q8_0":  # int8 activations: the x86 dot; int16: portable
            prep = ((widest, np.int16 if portable else np.int8), (widest // 32, np.float32))
        elif portable:  # x's even and odd elements
            prep = ((widest // 2, np.float32), (widest // 2, np.float32))
        else:  # x as two bf16 numbers, for vdpbf16ps
            prep = ((widest, np.uint16), (widest, np.uint16))
        # xa, xb (the block's input), ya, yb (the feed-forward's slices), the slices' partial sums
        fill = self.one_row if self.fmt == "fp32" else 0
        self.scratch = (*scratch, *(np.full(n, fill, t) for n, t in prep * 2), parts)
        # each thread's residual stream, normed input and prepared activations, each block's results, and the
        # phases' counters (the whole token in one parallel region, kernels.decode._token_part)
        L, T = c.n_layers, max_threads()
        own = (b("decode_xs", (T, c.dim)), b("decode_hs", (T, c.dim)), *(np.full((T, n), fill, t) for n, t in prep),
               b("decode_atts", (L, hd)), b("decode_outs", (L, 2, c.dim)), b("decode_gs", (L, c.hidden_dim)),
               b("decode_partss", (L, T, c.dim)), phase_counters(4 * L + 1))
        table = weight("lm_head") if embed is None else (embed, _NO_SCALES)
        self.args = ((*table, first, addresses), (*eps, *self.scratch, *own), (*final, *head, norm_b, form, wpe))

    def step(self, tok: int, pos: int, split: tuple[bool, int] | None = None) -> np.ndarray:
        """The logits ``(vocab_size,)`` of token ``tok`` at position ``pos`` (a buffer of the model); ``split``:
        the kernel's thread split (:func:`decode_split`'s by default)."""
        self.run(self.one, _NO_STOPS, tok, pos, split)
        return self.out[0]

    def run(self, toks: np.ndarray, stops: np.ndarray, tok: int, pos: int, split=None) -> int:
        """Greedy decoding from ``tok`` at ``pos``: up to ``len(toks)`` tokens, each the argmax of the one before,
        written to ``toks`` (int64); it stops after an id of ``stops`` (int64) or an argmax whose logit is not
        finite. Returns how many ran; the logits in ``out[0]`` are the last one's."""
        head, mid, final = self.args
        split = split or decode_split(self.n_kv_heads)
        return K.llama_decode(*self.out, toks, stops, tok, *head, pos, *mid, *split, *final)


_STATE = (16, 17, 18, 19)  # a block's caches and RoPE tables: not weights
_NO_SCALES = np.zeros((1, 1), np.float32)  # the scales argument of a bf16 (or float32) weight: unused
_NO_STOPS = np.zeros(0, np.int64)
ONE = np.zeros(1, np.float32)  # a block's array its form does not use (a bias, the norm's bias of RMSNorm)
ONE_2D = np.zeros((1, 1), np.float32)  # the same for a matrix (no gate, no RoPE tables, no learned positions)
