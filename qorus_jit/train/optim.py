"""Optimizers over the fused kernels of ``qorus_jit.kernels.optim``: SGD, Adam and AdamW.

An optimizer updates the parameters of a model in place from its gradients. ``model`` is any object with
``parameters()`` and ``gradients()`` returning ordered ``{name: np.ndarray}`` dicts with the same keys
(every qorus :class:`~qorus_jit.layers.Layer` and :class:`~qorus_jit.layers.Graph`): each parameter is a
C-contiguous, writeable float32 (or float64) array of any shape, its gradient an array of the same shape
and dtype. Each step follows the ``torch.optim`` optimizer of the same name (single-tensor path).

A training step::

    optimizer.lr = schedule(optimizer.step_count)   # qorus_jit.train.schedule, optional
    model.zero_grad()                                # or optimizer.zero_grad()
    ... forward, loss, model.backward(dlogits) ...
    optimizer.clip_grad_norm(1.0)                    # optional
    optimizer.step()

Weight decay goes by parameter groups. By default (``no_decay=None``) it is not applied to the parameters
their layers mark so (``Layer.no_decay()``: the weights of norms, biases and embeddings; :func:`decay_groups`),
a common convention for transformers. Pass ``no_decay=()`` to decay every parameter, as ``torch.optim`` does
with one parameter group, or a collection of names / a callable ``name -> bool`` to choose.

``state_dict()`` returns the state as ``({name: np.ndarray}, meta)`` with a JSON-serializable ``meta``,
ready for safetensors and JSON (no pickle); ``load_state_dict`` restores it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping

import numpy as np

from qorus_jit.core import alloc as _alloc
from qorus_jit.core.check import check_real
from qorus_jit.core.numerics import FLOAT_DTYPES
from qorus_jit.kernels import trusted as K
from qorus_jit.layers.base import Layer, decays_by_default

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "decay_groups"]

#: Meta format version written by :meth:`Optimizer.state_dict`.
STATE_VERSION = 1


# -- parameter groups -----------------------------------------------------------------------------------


def _params_of(model) -> dict[str, np.ndarray]:
    fn = getattr(model, "parameters", None)
    if not callable(fn) or not callable(getattr(model, "gradients", None)):
        raise TypeError(f"model: expected an object with parameters() and gradients() methods "
                        f"(a qorus Layer or Graph), got {type(model).__name__}")
    params = fn()
    if not isinstance(params, Mapping):
        raise TypeError(f"model: parameters() must return a dict of name -> array, got {type(params).__name__}")
    return dict(params)


def _trainable_grads(model) -> dict[str, np.ndarray]:
    """``gradients()`` of the parameters the optimizer updates: for a qorus ``Layer`` those not frozen
    (:meth:`Layer.trainable`), which get no update and no optimizer state; for other models all."""
    grads = model.gradients()
    if isinstance(model, Layer):
        keep = set(model.trainable())
        return {n: g for n, g in grads.items() if n in keep}
    return grads


def decay_groups(model) -> tuple[list[str], list[str]]:
    """Split the parameter names of ``model`` into ``(decayed, not decayed)``, each in ``parameters()`` order.

    Not decayed: the parameters a qorus ``Layer`` marks so (:meth:`Layer.no_decay`): those its layers
    register with ``decay=False`` (norm weights, biases, the embeddings: token, BERT word, token-type and
    position embeddings, GPT-2's ``wpe``) and, unmarked, those with fewer than 2 axes. A tied LM head owns no
    parameter, so a tied weight is listed once, by its embedding. A model that is not a qorus ``Layer`` is
    split by the number of axes only.

    >>> from qorus_jit.models import MLP
    >>> decay_groups(MLP([4, 8, 2], rng=0))
    (['fc0.weight', 'fc1.weight'], ['fc0.bias', 'fc1.bias'])
    """
    params = _params_of(model)
    if isinstance(model, Layer):
        marked = set(model.no_decay())
    else:
        marked = {name for name, p in params.items() if not decays_by_default(p)}
    decayed, not_decayed = [], []
    for name in params:
        (not_decayed if name in marked else decayed).append(name)
    return decayed, not_decayed


def _no_decay_set(params: dict[str, np.ndarray], model, no_decay) -> frozenset[str]:
    """The names that take no weight decay, from the ``no_decay`` argument."""
    if no_decay is None:
        return frozenset(decay_groups(model)[1])
    if callable(no_decay):
        return frozenset(name for name in params if no_decay(name))
    if isinstance(no_decay, (str, bytes)) or not isinstance(no_decay, Collection):
        raise TypeError(f"no_decay: expected None, a collection of parameter names or a callable name -> bool, "
                        f"got {type(no_decay).__name__}")
    names = frozenset(no_decay)
    unknown = sorted(n for n in names if n not in params)
    if unknown:
        raise ValueError(f"no_decay: unknown parameter names {unknown[:5]}")
    return names


# -- validation -----------------------------------------------------------------------------------------


def _check_lr(lr) -> float:
    return check_real("lr", lr, low=0.0)


def _check_array(what: str, arr, shape=None, dtype=None) -> None:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array, got {type(arr).__name__}")
    if arr.dtype.type not in FLOAT_DTYPES:
        raise TypeError(f"{what}: expected dtype float32 or float64, got {arr.dtype}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{what}: expected shape {shape} (its parameter's), got {arr.shape}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{what}: expected dtype {dtype} (its parameter's), got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous array")


def _check_model(model, params: dict[str, np.ndarray]) -> None:
    if not params:
        raise ValueError(f"model: parameters() returned no parameters ({type(model).__name__})")
    seen: dict[int, str] = {}
    for name, p in params.items():
        _check_array(f"model parameter {name}", p)
        if not p.flags.writeable:
            raise ValueError(f"model parameter {name}: expected a writeable array (updated in place)")
        ptr = p.__array_interface__["data"][0]
        if p.size and ptr in seen:
            raise ValueError(f"model parameter {name}: shares memory with {seen[ptr]} (list a tied weight once)")
        seen[ptr] = name


# -- the optimizers ---------------------------------------------------------------------------------------


class Optimizer:
    """Base class: the lr, weight-decay groups, step count, gradient clipping and state (de)serialization.

    Subclasses define ``kind``, ``_buffers`` (the state buffer names), ``_parse_hyper(dict)`` (validation),
    ``_hyper()`` and ``_set_hyper(dict)`` (hyperparameters for ``repr`` and ``state_dict``) and
    ``_update(name, param, grad, weight_decay)`` (one update of one parameter, in place).

    A training loop (here an MLP classifier on random data):

    >>> import numpy as np
    >>> from qorus_jit.kernels.loss import cross_entropy_forward_backward
    >>> from qorus_jit.models import MLP
    >>> from qorus_jit.train.schedule import warmup_cosine
    >>> model = MLP([4, 8, 3], rng=0)
    >>> opt, schedule = AdamW(model, lr=1e-2), warmup_cosine(1e-2, warmup_steps=2, total_steps=10)
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    >>> dlogits = np.empty((16, 3), np.float32)
    >>> for _ in range(10):
    ...     opt.lr = schedule(opt.step_count)
    ...     loss = cross_entropy_forward_backward(dlogits, model.forward(x), y)
    ...     opt.zero_grad()
    ...     _ = model.backward(dlogits)
    ...     norm = opt.clip_grad_norm(1.0)
    ...     opt.step()
    >>> opt.step_count
    10
    """

    kind: str = ""
    _buffers: tuple[str, ...] = ()

    def __init__(self, model, lr: float, weight_decay: float, no_decay):
        params = _params_of(model)
        _check_model(model, params)
        self.model = model
        self.lr = lr
        self.weight_decay = check_real("weight_decay", weight_decay, low=0.0)
        self._no_decay = _no_decay_set(params, model, no_decay)
        self.step_count = 0
        self._steps: dict[str, int] = {}  # updates applied to each parameter (Adam's bias correction)
        self._state: dict[str, dict[str, np.ndarray]] = {}  # name -> {buffer: array}, allocated on first use
        self._checked: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # validated (param, grad) pairs

    # -- hyperparameters ------------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        """The learning rate of the next :meth:`step` (a schedule sets it before each step)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _check_lr(value)

    @property
    def decayed(self) -> list[str]:
        """Names of the parameters that take weight decay, in ``parameters()`` order."""
        return [n for n in _params_of(self.model) if n not in self._no_decay]

    @property
    def not_decayed(self) -> list[str]:
        """Names of the parameters that take no weight decay, in ``parameters()`` order."""
        return [n for n in _params_of(self.model) if n in self._no_decay]

    def _hyper(self) -> dict:
        raise NotImplementedError

    def _set_hyper(self, hyper: dict) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in self._hyper().items())
        return f"{type(self).__name__}(lr={self.lr!r}, {hyper}, no_decay={len(self._no_decay)} parameters)"

    # -- steps ----------------------------------------------------------------------------------------

    def _pairs(self):
        """(name, param, grad) for every trainable parameter whose gradient ``gradients()`` lists."""
        params, grads = self.model.parameters(), _trainable_grads(self.model)
        out = []
        for name, g in grads.items():
            p = params.get(name)
            if p is None:
                raise ValueError(f"model: gradient {name} has no parameter of that name")
            seen = self._checked.get(name)
            if seen is None or seen[0] is not p or seen[1] is not g:
                _check_array(f"model parameter {name}", p)
                if not p.flags.writeable:
                    raise ValueError(f"model parameter {name}: expected a writeable array (updated in place)")
                _check_array(f"gradient {name}", g, p.shape, p.dtype)
                if np.may_share_memory(p, g):
                    raise ValueError(f"gradient {name}: shares memory with its parameter")
                self._checked[name] = (p, g)
            out.append((name, p, g))
        return out

    def _buffer(self, name: str, param: np.ndarray, buf: str) -> np.ndarray:
        """State buffer ``buf`` of parameter ``name``, allocated (zeroed) once on first use."""
        state = self._state.setdefault(name, {})
        arr = state.get(buf)
        if arr is None:
            arr = state[buf] = _alloc.zeros_like(param)
        elif arr.shape != param.shape or arr.dtype != param.dtype:
            raise ValueError(f"model parameter {name}: its shape or dtype changed to {param.shape} {param.dtype} "
                             f"(optimizer state {buf}: {arr.shape} {arr.dtype})")
        return arr

    def step(self) -> None:
        """Apply one update with the current :attr:`lr` to every trainable parameter whose gradient
        ``gradients()`` lists (parameter: any shape, float32 or float64, updated in place; gradient: the same shape and
        dtype, only read). Gradients are validated before any parameter changes."""
        for name, p, g in self._pairs():
            decay = 0.0 if name in self._no_decay else self.weight_decay
            self._steps[name] = self._steps.get(name, 0) + 1
            self._update(name, p, g, decay)
        self.step_count += 1

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray, weight_decay: float) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Zero every gradient (the model's ``zero_grad()``, or filling ``gradients()`` with 0)."""
        fn = getattr(self.model, "zero_grad", None)
        if callable(fn):
            fn()
        else:
            for g in self.model.gradients().values():
                g.fill(0)

    def grad_norm(self) -> float:
        """Global L2 norm of the gradients of the trainable parameters, accumulated in float64."""
        return K.grad_norm(list(_trainable_grads(self.model).values()))

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale all gradients in place so that their global L2 norm is at most ``max_norm``, as
        ``torch.nn.utils.clip_grad_norm_`` (factor ``max_norm / (norm + 1e-6)`` when below 1).

        Returns the norm before clipping; a NaN or inf norm is returned as is and leaves the gradients
        untouched (skip the step then).
        """
        return K.clip_grad_norm(list(_trainable_grads(self.model).values()), max_norm)

    # -- state ----------------------------------------------------------------------------------------

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """The optimizer state as ``(tensors, meta)``.

        ``tensors``: ``{"<parameter name>.<buffer>": copy of the buffer}`` (buffers such as ``exp_avg``,
        ``exp_avg_sq``, ``momentum_buffer``; same shape and dtype as the parameter). ``meta``: a
        JSON-serializable dict with ``kind``, ``version``, ``lr``, ``step_count``, ``hyperparameters``,
        ``no_decay`` (the names), ``steps`` (updates applied per parameter) and ``buffers`` (which buffers
        exist, per parameter).
        """
        tensors, buffers = {}, {}
        for name, state in self._state.items():
            buffers[name] = sorted(state)
            for buf, arr in state.items():
                tensors[f"{name}.{buf}"] = arr.copy()
        meta = {
            "kind": self.kind,
            "version": STATE_VERSION,
            "lr": self.lr,
            "step_count": self.step_count,
            "hyperparameters": self._hyper(),
            "no_decay": [n for n in _params_of(self.model) if n in self._no_decay],
            "steps": dict(self._steps),
            "buffers": buffers,
        }
        return tensors, meta

    def load_state_dict(self, tensors: Mapping[str, np.ndarray], meta: Mapping) -> None:
        """Restore a state made by :meth:`state_dict` (of the same optimizer kind, for the same parameter
        names and shapes): buffers, lr, hyperparameters, weight-decay groups and step counts, exactly.

        Everything is validated before anything changes; errors (ValueError) name the tensor or meta key.
        """
        if not isinstance(meta, Mapping):
            raise TypeError(f"meta: expected a dict, got {type(meta).__name__}")
        if not isinstance(tensors, Mapping):
            raise TypeError(f"tensors: expected a dict of name -> array, got {type(tensors).__name__}")
        for key in ("kind", "version", "lr", "step_count", "hyperparameters", "no_decay", "steps", "buffers"):
            if key not in meta:
                raise ValueError(f"meta: missing key {key!r}")
        if meta["kind"] != self.kind:
            raise ValueError(f"meta: kind: expected {self.kind!r} (this optimizer), got {meta['kind']!r}")
        if meta["version"] != STATE_VERSION:
            raise ValueError(f"meta: version: expected {STATE_VERSION}, got {meta['version']!r}")
        params = _params_of(self.model)

        def count(what, v):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"meta: {what}: expected an int >= 0, got {v!r}")
            return int(v)

        lr = _check_lr(meta["lr"])
        step_count = count("step_count", meta["step_count"])
        no_decay = meta["no_decay"]
        if isinstance(no_decay, str) or not isinstance(no_decay, Collection):
            raise ValueError(f"meta: no_decay: expected a list of parameter names, got {no_decay!r}")
        for n in no_decay:
            if n not in params:
                raise ValueError(f"meta: no_decay: {n} is not a parameter of the model")
        for key in ("hyperparameters", "steps", "buffers"):
            if not isinstance(meta[key], Mapping):
                raise ValueError(f"meta: {key}: expected a dict, got {type(meta[key]).__name__}")
        steps = {}
        for n, v in meta["steps"].items():
            if n not in params:
                raise ValueError(f"meta: steps: {n} is not a parameter of the model")
            steps[n] = count(f"steps[{n}]", v)
        expected = {}
        for n, bufs in meta["buffers"].items():
            if n not in params:
                raise ValueError(f"meta: buffers: {n} is not a parameter of the model")
            if isinstance(bufs, str) or not isinstance(bufs, Collection):
                raise ValueError(f"meta: buffers: {n}: expected a list of buffer names, got {bufs!r}")
            for b in bufs:
                if b not in self._buffers:
                    raise ValueError(f"meta: buffers: {n}.{b}: {self.kind} keeps no buffer {b!r} "
                                     f"(expected one of {list(self._buffers)})")
                expected[f"{n}.{b}"] = (n, b)
        missing = [k for k in expected if k not in tensors]
        if missing:
            raise ValueError(f"tensors: missing {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                  if len(missing) > 1 else ""))
        extra = [k for k in tensors if k not in expected]
        if extra:
            raise ValueError(f"tensors: unexpected {extra[0]}" + (f" (and {len(extra) - 1} more)"
                                                                   if len(extra) > 1 else ""))
        for key, (n, _) in expected.items():
            arr = tensors[key]
            if not isinstance(arr, np.ndarray):
                raise ValueError(f"tensors: {key}: expected a numpy array, got {type(arr).__name__}")
            if arr.shape != params[n].shape:
                raise ValueError(f"tensors: {key}: expected shape {params[n].shape} (of parameter {n}), "
                                 f"got {arr.shape}")
            if arr.dtype != params[n].dtype:
                raise ValueError(f"tensors: {key}: expected dtype {params[n].dtype} (of parameter {n}), "
                                 f"got {arr.dtype}")
        self._check_state(steps, {n: set(b) for n, b in meta["buffers"].items()})
        hyper = self._parse_hyper(dict(meta["hyperparameters"]))

        # validated: apply
        self._set_hyper(hyper)
        self.lr, self.step_count = lr, step_count
        self._no_decay = frozenset(no_decay)
        self._steps = steps
        self._state = {}
        for key, (n, b) in expected.items():
            self._state.setdefault(n, {})[b] = np.array(tensors[key], order="C", copy=True)

    def _parse_hyper(self, hyper: dict) -> dict:
        raise NotImplementedError

    def _check_state(self, steps: dict[str, int], buffers: dict[str, set[str]]) -> None:
        """Subclass hook: the buffers a restored state lists are consistent with its step counts."""


def _meta_hyper(hyper: dict, keys: tuple[str, ...]) -> dict:
    missing = [k for k in keys if k not in hyper]
    extra = [k for k in hyper if k not in keys]
    if missing or extra:
        raise ValueError(f"meta: hyperparameters: expected keys {list(keys)}, missing {missing}, unexpected {extra}")
    return hyper


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Per parameter ``p`` with gradient ``g`` (both of the parameter's shape and dtype):
    ``g += weight_decay * p`` (L2, only for decayed parameters); with ``momentum``, ``buf = g`` on the first
    step and ``buf = momentum * buf + (1 - dampening) * g`` after, and the step is ``g + momentum * buf`` with
    ``nesterov`` (which needs ``momentum > 0`` and ``dampening == 0``), else ``buf``; ``p -= lr * step``.
    Keeps one ``momentum_buffer`` per parameter when ``momentum != 0``.

    >>> import numpy as np
    >>> from qorus_jit.models import MLP
    >>> model = MLP([4, 8, 2], rng=0)
    >>> opt = SGD(model, lr=0.1, momentum=0.9)
    >>> for g in model.gradients().values():
    ...     g.fill(1.0)
    >>> before = model.parameters()["fc0.weight"].copy()
    >>> opt.step()
    >>> bool(np.allclose(model.parameters()["fc0.weight"], before - 0.1))
    True
    """

    kind = "sgd"
    _buffers = ("momentum_buffer",)

    def __init__(self, model, lr: float, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, *, no_decay: Collection[str] | Callable[[str], bool] | None = None):
        super().__init__(model, lr, weight_decay, no_decay)
        self._set_hyper(self._parse_hyper({"momentum": momentum, "dampening": dampening,
                                           "weight_decay": self.weight_decay, "nesterov": nesterov}))

    def _parse_hyper(self, hyper: dict) -> dict:
        hyper = _meta_hyper(hyper, ("momentum", "dampening", "weight_decay", "nesterov"))
        momentum = check_real("momentum", hyper["momentum"], low=0.0)
        dampening = check_real("dampening", hyper["dampening"])
        weight_decay = check_real("weight_decay", hyper["weight_decay"], low=0.0)
        nesterov = hyper["nesterov"]
        if not isinstance(nesterov, (bool, np.bool_)):
            raise ValueError(f"nesterov: expected a bool, got {nesterov!r}")
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError(f"nesterov: expected momentum > 0 and dampening == 0 with nesterov=True, "
                             f"got momentum={momentum}, dampening={dampening}")
        return {"momentum": momentum, "dampening": dampening, "weight_decay": weight_decay, "nesterov": bool(nesterov)}

    def _set_hyper(self, hyper: dict) -> None:
        self.momentum, self.dampening = hyper["momentum"], hyper["dampening"]
        self.weight_decay, self.nesterov = hyper["weight_decay"], hyper["nesterov"]

    def _hyper(self) -> dict:
        return {"momentum": self.momentum, "dampening": self.dampening, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}

    def _update(self, name, param, grad, weight_decay):
        t = param.dtype.type
        if self.momentum == 0:
            buf, first = param, False  # the kernel does not touch buf without momentum
        else:
            state = self._state.get(name)
            first = state is None or "momentum_buffer" not in state
            buf = self._buffer(name, param, "momentum_buffer")
        K.sgd_update(param.reshape(-1), buf.reshape(-1), grad.reshape(-1), t(self.lr), t(self.momentum),
                     t(1 - self.dampening), t(weight_decay), bool(self.nesterov), bool(first))


class _AdamBase(Optimizer):
    """Adam and AdamW: ``exp_avg`` and ``exp_avg_sq`` per parameter, bias-corrected per parameter step."""

    _buffers = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, model, lr, betas, eps, weight_decay, no_decay):
        super().__init__(model, lr, weight_decay, no_decay)
        self._set_hyper(self._parse_hyper({"betas": betas, "eps": eps, "weight_decay": self.weight_decay}))

    def _parse_hyper(self, hyper: dict) -> dict:
        hyper = _meta_hyper(hyper, ("betas", "eps", "weight_decay"))
        betas = hyper["betas"]
        if isinstance(betas, (str, bytes)) or not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        b1 = check_real("betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
        b2 = check_real("betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
        eps = check_real("eps", hyper["eps"], low=0.0, low_open=True)
        weight_decay = check_real("weight_decay", hyper["weight_decay"], low=0.0)
        return {"betas": [b1, b2], "eps": eps, "weight_decay": weight_decay}

    def _set_hyper(self, hyper: dict) -> None:
        self.betas = (hyper["betas"][0], hyper["betas"][1])
        self.eps, self.weight_decay = hyper["eps"], hyper["weight_decay"]

    def _hyper(self) -> dict:
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def _check_state(self, steps, buffers):
        for n, bufs in buffers.items():
            if bufs != set(self._buffers):
                raise ValueError(f"meta: buffers: {n}: expected both {list(self._buffers)}, got {sorted(bufs)}")
            if steps.get(n, 0) < 1:
                raise ValueError(f"meta: steps: {n} has buffers but no step count >= 1")
        for n, k in steps.items():
            if k > 0 and n not in buffers:
                raise ValueError(f"meta: buffers: {n} has taken {k} steps but lists no buffers")

    def _update(self, name, param, grad, weight_decay):
        m = self._buffer(name, param, "exp_avg")
        v = self._buffer(name, param, "exp_avg_sq")
        step = self._steps[name]
        b1, b2 = self.betas
        bc1 = 1 - b1 ** float(step)
        bc2 = 1 - b2 ** float(step)
        lr = self.lr
        decay, l2 = (1 - lr * weight_decay, 0.0) if self._decoupled else (1.0, weight_decay)
        t = param.dtype.type
        K.adam_update(param.reshape(-1), m.reshape(-1), v.reshape(-1), grad.reshape(-1), t(decay), t(l2),
                      t(1 - b1), t(b2), t(1 - b2), t(self.eps), t(lr / bc1), t(math.sqrt(bc2)))


class Adam(_AdamBase):
    """Adam with L2 weight decay (added to the gradient), as ``torch.optim.Adam``.

    Per parameter ``p`` with gradient ``g``: ``g += weight_decay * p`` (decayed parameters only);
    ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g^2``;
    ``p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)`` with ``t`` the parameter's step.
    Keeps ``exp_avg`` (m) and ``exp_avg_sq`` (v) per parameter, of its shape and dtype.

    >>> from qorus_jit.models import MLP
    >>> model = MLP([4, 8, 2], rng=0)
    >>> opt = Adam(model, lr=1e-3)
    >>> for g in model.gradients().values():
    ...     g.fill(0.5)
    >>> opt.step()
    >>> opt.step_count
    1
    """

    kind = "adam"

    def __init__(self, model, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, no_decay: Collection[str] | Callable[[str], bool] | None = None):
        super().__init__(model, lr, betas, eps, weight_decay, no_decay)


class AdamW(_AdamBase):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: ``p *= 1 - lr * weight_decay`` (decayed
    parameters only), then the Adam step without L2 (see :class:`Adam`).

    By default norms, biases and embeddings take no decay (:func:`decay_groups`); ``no_decay=()`` decays all.

    >>> from qorus_jit.models import MLP
    >>> model = MLP([4, 8, 2], rng=0)
    >>> opt = AdamW(model, lr=1e-3, weight_decay=0.1)
    >>> opt.not_decayed
    ['fc0.bias', 'fc1.bias']
    >>> tensors, meta = opt.state_dict()
    >>> meta["kind"], meta["step_count"], len(tensors)
    ('adamw', 0, 0)
    """

    kind = "adamw"
    _decoupled = True

    def __init__(self, model, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, no_decay: Collection[str] | Callable[[str], bool] | None = None):
        super().__init__(model, lr, betas, eps, weight_decay, no_decay)
