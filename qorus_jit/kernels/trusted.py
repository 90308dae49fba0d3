"""The kernels that layers, models, losses and optimizers call: one namespace, ``K.name(...)``.

    from qorus_jit.kernels import trusted as K
    K.linear_forward(y, x, weight, bias)

Most entries are the fast kernels behind the checked wrappers of ``qorus_jit.kernels.<family>``, under the
wrapper's name without the leading underscore and with the private kernel's arguments. They check nothing:
the caller guarantees what the wrapper would validate (shapes, dtypes, C-contiguity, writeable and disjoint
outputs, index ranges). Call the family module's function instead (``kernels.matmul.linear_forward``) when
the arguments come from a user. The last group holds checked wrappers themselves, for calls that pass on
values a user gave (key masks, cache positions, target ids, gradient lists).

Call them through the module attribute (``K.name``), not a name bound at import time: the profiler
(``qorus_jit.train.profiler``) times kernels by swapping the entries of this namespace while it runs.
Compiled code must not reference this module (it would see the profiler's wrappers).
"""

from __future__ import annotations

from qorus_jit.kernels.activations import _gelu_backward as gelu_backward
from qorus_jit.kernels.activations import _gelu_forward as gelu_forward
from qorus_jit.kernels.activations import _gelu_tanh_backward as gelu_tanh_backward
from qorus_jit.kernels.activations import _gelu_tanh_forward as gelu_tanh_forward
from qorus_jit.kernels.activations import _relu_backward as relu_backward
from qorus_jit.kernels.activations import _relu_forward as relu_forward
from qorus_jit.kernels.activations import _silu_backward as silu_backward
from qorus_jit.kernels.activations import _silu_forward as silu_forward
from qorus_jit.kernels.activations import _swiglu_backward_into as swiglu_backward_into
from qorus_jit.kernels.activations import _swiglu_forward as swiglu_forward
from qorus_jit.kernels.activations import _swish_backward as swish_backward
from qorus_jit.kernels.activations import _swish_forward as swish_forward
from qorus_jit.kernels.attention import attention_backward, attention_decode, attention_forward, kv_cache_write
from qorus_jit.kernels.decode import _llama_decode as llama_decode
from qorus_jit.kernels.decode import _matvec as matvec
from qorus_jit.kernels.elementwise import _add_forward as add_forward
from qorus_jit.kernels.embedding import _embedding_backward as embedding_backward
from qorus_jit.kernels.embedding import _embedding_forward as embedding_forward
from qorus_jit.kernels.loss import _cross_entropy_forward_backward as cross_entropy_forward_backward
from qorus_jit.kernels.loss import _mse_backward as mse_backward
from qorus_jit.kernels.loss import _mse_forward as mse_forward
from qorus_jit.kernels.loss import cross_entropy_forward
from qorus_jit.kernels.matmul import _bias_grad as bias_grad
from qorus_jit.kernels.matmul import _gemm_blas as gemm_blas
from qorus_jit.kernels.matmul import _linear_backward_into as linear_backward_into
from qorus_jit.kernels.matmul import _linear_forward as linear_forward
from qorus_jit.kernels.norm import _layernorm_backward as layernorm_backward
from qorus_jit.kernels.norm import _layernorm_forward as layernorm_forward
from qorus_jit.kernels.norm import _rmsnorm_backward as rmsnorm_backward
from qorus_jit.kernels.norm import _rmsnorm_forward as rmsnorm_forward
from qorus_jit.kernels.optim import _adam_update as adam_update
from qorus_jit.kernels.optim import _sgd_update as sgd_update
from qorus_jit.kernels.optim import clip_grad_norm, grad_norm
from qorus_jit.kernels.quant import _linear_bf16 as linear_bf16
from qorus_jit.kernels.quant import _linear_q8_0 as linear_q8_0
from qorus_jit.kernels.quant import _matvec_bf16 as matvec_bf16
from qorus_jit.kernels.quant import _matvec_q8_0 as matvec_q8_0
from qorus_jit.kernels.rope import rope_forward
from qorus_jit.kernels.sampling import _cut_top_k as cut_top_k
from qorus_jit.kernels.sampling import _cut_top_p as cut_top_p
from qorus_jit.kernels.sampling import _draw as draw
from qorus_jit.kernels.sampling import _probabilities as probabilities
from qorus_jit.kernels.sampling import _scale_logits as scale_logits
from qorus_jit.kernels.softmax import _softmax_backward as softmax_backward
from qorus_jit.kernels.softmax import _softmax_forward as softmax_forward

__all__ = [
    # unchecked: the caller guarantees shapes, dtypes and contiguity (the wrappers in kernels/<family>.py check them)
    # matmul, decode: 2-D row-major operands; matvec and llama_decode take one token of one sequence
    "linear_forward", "linear_backward_into", "matvec", "llama_decode",
    # gemm_blas(c, a, b, beta): c = a @ b + beta * c (2-D views BLAS takes); bias_grad(db, dy): db += dy.sum(0)
    "gemm_blas", "bias_grad",
    # quant: bf16 (w16 uint16) and q8_0 (qs int8, d float32) weights (O, I), I a multiple of 32; float32 x, out
    "matvec_bf16", "matvec_q8_0", "linear_bf16", "linear_q8_0",
    # elementwise and activations: 1-D views of equal length (``flat_views``)
    "add_forward", "relu_forward", "relu_backward", "silu_forward", "silu_backward", "gelu_forward", "gelu_backward",
    "gelu_tanh_forward", "gelu_tanh_backward", "swish_forward", "swish_backward", "swiglu_forward",
    "swiglu_backward_into",
    # softmax, norm: rows of the last axis; embedding: ids in range
    "softmax_forward", "softmax_backward", "layernorm_forward", "layernorm_backward", "rmsnorm_forward",
    "rmsnorm_backward", "embedding_forward", "embedding_backward",
    # loss, optim: flat arrays of one float dtype, targets in range
    "cross_entropy_forward_backward", "mse_forward", "mse_backward", "sgd_update", "adam_update",
    # sampling: float64 x, p (V,) (scale_logits also takes float32 logits), 0 < k < V, 0 < top_p < 1, 0 <= u < 1
    "scale_logits", "probabilities", "cut_top_k", "cut_top_p", "draw",
    # checked: the public wrappers themselves, for arguments that come from a user
    "attention_forward", "attention_backward", "attention_decode", "kv_cache_write", "rope_forward",
    "cross_entropy_forward", "grad_norm", "clip_grad_norm",
]
