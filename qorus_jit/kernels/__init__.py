"""Kernels: numba-compiled forward/backward pairs, one module per op family.

Every op ``X`` has ``X_forward(out..., inputs..., sizes...)`` and
``X_backward(dinputs..., dout, inputs..., saved..., sizes...)``: outputs first, then inputs, then
sizes. Forward writes caller-provided buffers; backward accumulates (``+=``) into gradient buffers.
The public functions here validate their arguments; the private ``_X_forward`` kernels they call
trust them. ``trusted`` is the namespace through which layers, models, losses and optimizers call the
kernels: the private ones under public names (unchecked), and the few checked wrappers they call.
"""
