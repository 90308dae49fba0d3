"""The layer protocol: forward, backward (and its variants), forward_decode, parameters, gradients, zero_grad,
and the capabilities a layer declares.

Layers are plain Python classes over the cached numba kernels (a jitclass cannot be cached and would
recompile in every process: docs/design.md). A layer holds its parameters, their gradients, what
backward needs from forward, and its output and input-gradient buffers, allocated on the first call for
a shape and reused while the shape stays the same. So:

- ``forward(x)`` returns a buffer the layer owns: the next ``forward`` overwrites it (copy it to keep it).
- ``backward(dy)`` must follow the ``forward`` whose output it differentiates; it **accumulates** (``+=``)
  into the parameter gradients (``zero_grad()`` clears them) and returns the gradient of the input, also a
  buffer the layer owns (``None`` for inputs that take no gradient, such as token ids).
- ``parameters()`` and ``gradients()`` are ordered ``{dotted name: array}`` dicts with the same keys,
  names following the Hugging Face naming of the architecture (``model.layers.0.self_attn.q_proj.weight``).
  Each parameter carries its weight-decay mark (``add_parameter(..., decay=)``); ``no_decay()`` lists the
  names marked not to decay, which the optimizers use by default.
- A parameter is trainable unless frozen (``set_trainable(False)``, e.g. a LoRA base weight): the optimizers
  update, clip and keep state for only the names ``trainable()`` lists, and backward computes no gradient
  for it (``requires_grad(name)`` is False: a Linear computes only ``dx``, an embedding skips its scatter):
  a frozen gradient is never written, ``zero_grad()`` skips it, and it stays zero. Gradient buffers are
  mapped lazily (:func:`lazy_zeros`), so a frozen one takes no resident memory.
- ``train(mode=True)`` / ``eval()`` switch the training mode of a layer and its children (``training``,
  False by default, as for generation and evaluation): only in training mode does a layer drop (LoRA's
  ``dropout``). ``seed_dropout(*key)`` seeds the masks of the forward passes that follow: a layer draws
  them from ``numpy.random.default_rng((*key, index, n))``, ``index`` its place in a depth-first walk of
  the layers and ``n`` the count of its forwards since, so a trainer that seeds each micro-batch with
  ``(seed, step, micro)`` gets masks a resumed run repeats exactly, with no RNG state to checkpoint
  (never seeded, the masks come from fresh OS entropy).

Capabilities are class attributes (or properties) that callers read instead of probing for methods:
``backward_variants`` (which optional arguments ``backward`` takes), ``rowwise`` and ``incremental``.
"""

from __future__ import annotations

import math
import mmap

import numpy as np

from qorus_jit.core import alloc as _alloc
from qorus_jit.core.check import check_bool, check_disjoint, check_nonnegative
from qorus_jit.core.numerics import DTYPE

#: The optional arguments of :meth:`Layer.backward`, each a variant that a layer may support.
BACKWARD_VARIANTS = ("out", "accumulate", "residual")


#: Arrays of at least this many bytes are mapped lazily by :func:`lazy_zeros` (smaller ones: ``alloc.zeros``).
LAZY_BYTES = 1 << 16


def lazy_zeros(shape, dtype=DTYPE) -> np.ndarray:
    """Zeros that take memory only where written: for a large array a private anonymous memory map, whose pages
    become resident only when written, so the gradient of a frozen parameter (never written) and a parameter of
    an ``rng=UNFILLED`` build replaced before it is loaded take no memory; page-aligned, with
    :data:`alloc.PAD <qorus_jit.core.alloc.PAD>` bytes spare after it as :mod:`~qorus_jit.core.alloc`'s arrays.
    (``alloc.zeros`` fills, which makes every page resident.)"""
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < LAZY_BYTES:
        return _alloc.zeros(shape, dtype)
    # private: reading an untouched page maps the shared zero page (a shared map would make it resident)
    buf = mmap.mmap(-1, nbytes + _alloc.PAD, flags=mmap.MAP_PRIVATE)
    return np.frombuffer(buf, dtype, count=math.prod(shape)).reshape(shape)  # the array keeps the map alive


def decays_by_default(value) -> bool:
    """The weight-decay convention for a parameter its layer does not mark: matrices (2 or more axes) decay;
    vectors and scalars (biases, norm weights, scales) do not."""
    return np.ndim(value) >= 2


class Layer:
    """Base class of every layer. Subclasses register parameters and children in ``__init__``."""

    #: True for a layer that maps each position (row of the last axis) on its own, from its one input: what it
    #: gives for the last position does not depend on the others (see :meth:`Graph.forward_decode`).
    rowwise = False

    #: The optional arguments of :meth:`backward` this layer takes, a subset of :data:`BACKWARD_VARIANTS`.
    backward_variants: frozenset[str] = frozenset()

    @property
    def incremental(self) -> bool:
        """True when the layer can decode incrementally: :meth:`forward_decode` over consecutive chunks of
        positions gives what :meth:`forward` gives over the whole sequence. Row-wise layers can; a layer that
        mixes positions can when it keeps what it needs in the decode state (causal attention's KV cache);
        bidirectional attention cannot. A model generates text only if it is incremental."""
        return self.rowwise

    def __init__(self):
        self._params: dict[str, np.ndarray] = {}
        self._grads: dict[str, np.ndarray] = {}
        self._no_decay: set[str] = set()
        self._frozen: set[str] = set()  # own parameters the optimizers leave alone (set_trainable)
        self._children: dict[str, Layer] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self.training = False  # train() / eval(): dropout applies only in training mode
        self._dropout_key: tuple[int, ...] | None = None  # seed_dropout: (*key, index in the walk of the layers)
        self._forwards = 0  # forwards since seed_dropout, the last element of a dropout mask's seed

    # -- construction -------------------------------------------------------------------------------

    def add_parameter(self, name: str, value, decay: bool | None = None) -> np.ndarray:
        """Register a parameter (stored as a C-contiguous float32 copy) and its zeroed gradient (:func:`lazy_zeros`).

        ``decay``: whether weight decay applies to it (see :meth:`no_decay`); ``None`` follows
        :func:`decays_by_default` (matrices decay, vectors do not). Embeddings pass ``False``."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"name: expected a non-empty str, got {name!r}")
        if decay is not None and not isinstance(decay, bool):
            raise TypeError(f"decay: expected True, False or None, got {decay!r}")
        value = _real_array(f"value of {name}", value)
        unfilled = value.size and not any(value.strides) and value.flat[0] == 0  # a broadcast zero (rng=UNFILLED)
        if value.size * 4 < LAZY_BYTES:  # norms, biases: on the heap (one written would make a huge page resident)
            arr = _alloc.copy(value, DTYPE)
        else:
            arr = _alloc.weights(value.shape, DTYPE)  # zeros whose pages are taken only when written
            if not unfilled:
                arr[...] = value
        self._params[name] = arr
        self._grads[name] = lazy_zeros(arr.shape)
        if decay if decay is not None else decays_by_default(arr):
            self._no_decay.discard(name)
        else:
            self._no_decay.add(name)
        return arr

    def add_child(self, name: str, layer: Layer) -> Layer:
        """Register a sub-layer; its parameters appear under ``name.`` (or unprefixed if ``name`` is "")."""
        if not isinstance(layer, Layer):
            raise TypeError(f"{name}: expected a Layer, got {type(layer).__name__}")
        self._children[name] = layer
        return layer

    def grad(self, name: str) -> np.ndarray:
        """The gradient of this layer's own parameter ``name``, which ``backward`` accumulates into."""
        g = self._grads.get(name)
        if g is None:
            raise KeyError(f"name: {type(self).__name__} has no parameter {name!r} (its own: {sorted(self._grads)})")
        return g

    def requires_grad(self, name: str) -> bool:
        """Whether backward computes the gradient of this layer's own parameter ``name``: False once frozen
        (:meth:`set_trainable`), and then the gradient is never written and stays zero."""
        self.grad(name)  # a KeyError naming the layer's parameters
        return name not in self._frozen

    def children(self) -> dict[str, Layer]:
        """The sub-layers registered with :meth:`add_child`, by name, in order."""
        return dict(self._children)

    def buffer(self, name: str, shape: tuple[int, ...], dtype=DTYPE, zero: bool = False) -> np.ndarray:
        """A work buffer of ``shape`` owned by the layer, allocated once per shape and reused."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = _alloc.empty(shape, dtype)
            self._buffers[name] = buf
        if zero:
            buf.fill(0)
        return buf

    # -- the protocol -------------------------------------------------------------------------------

    def forward(self, x):
        """Compute the output for ``x`` and save what backward needs."""
        raise NotImplementedError

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """Accumulate parameter gradients for the last forward and return the input gradient.

        The optional arguments are variants that let a block sum its branches' gradients without zero fills
        or extra passes; a layer takes those named in :attr:`backward_variants` and refuses the others with
        a TypeError naming the argument (:meth:`check_variants`). A layer that takes none may define
        ``backward(self, dy)``.

        - ``out``: write the input gradient into this array (float32, C-contiguous, the input's shape, sharing
          no memory with what backward reads) and return it, instead of a buffer of the layer.
        - ``accumulate``: add the input gradient to what ``out`` holds (needs ``out``).
        - ``residual``: an array of the input's shape added to the input gradient in the same pass: the
          gradient of a residual connection around the layer.
        """
        raise NotImplementedError

    def check_variants(self, out=None, accumulate: bool = False, residual=None) -> None:
        """Check the optional arguments given to :meth:`backward`: a TypeError for a variant the layer does not
        declare in :attr:`backward_variants`, a ValueError for ``accumulate`` without ``out``."""
        check_bool(accumulate=accumulate)
        given = {"out": out is not None, "accumulate": bool(accumulate), "residual": residual is not None}
        for name, used in given.items():
            if used and name not in self.backward_variants:
                takes = ", ".join(f"{v}=" for v in BACKWARD_VARIANTS if v in self.backward_variants) or "none"
                raise TypeError(f"{name}: {type(self).__name__}.backward does not take {name}= (its variants: "
                                f"{takes})")
        if accumulate and out is None:
            raise ValueError("accumulate: needs out, the array to add the input gradient to")

    def forward_decode(self, *inputs, state):
        """Forward for incremental decoding over ``state`` (a :class:`~qorus_jit.layers.DecodeState`): the
        positions from ``state.pos`` on; no backward follows. A layer that keeps decode state (an attention
        layer's KV cache, learned positions) overrides it; the others run their plain :meth:`forward`."""
        return self.forward(*inputs)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def parameters(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Ordered ``{dotted name: parameter}`` of this layer and its children."""
        out = {prefix + k: v for k, v in self._params.items()}
        for name, child in self._children.items():
            out.update(child.parameters(f"{prefix}{name}." if name else prefix))
        return out

    def gradients(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Ordered ``{dotted name: gradient}``, the same keys as :meth:`parameters`."""
        out = {prefix + k: v for k, v in self._grads.items()}
        for name, child in self._children.items():
            out.update(child.gradients(f"{prefix}{name}." if name else prefix))
        return out

    def no_decay(self, prefix: str = "") -> list[str]:
        """The names of the parameters marked to take no weight decay (``add_parameter(..., decay=)``), in
        :meth:`parameters` order: by default biases, norm weights and embeddings."""
        out = [prefix + k for k in self._params if k in self._no_decay]
        for name, child in self._children.items():
            out.extend(child.no_decay(f"{prefix}{name}." if name else prefix))
        return out

    def set_trainable(self, trainable: bool, names=None) -> None:
        """Mark every parameter of this layer and its children trainable or frozen (see :meth:`trainable`), or
        with ``names`` (a name or a list of this layer's own parameters, e.g. ``"weight"``) only those. A
        frozen gradient is cleared (if it holds anything) and from then on neither written nor zeroed."""
        check_bool(trainable=trainable)
        if names is not None:
            names = [names] if isinstance(names, str) else names
            if not isinstance(names, (list, tuple)) or not all(n in self._params for n in names):
                raise ValueError(f"names: expected some of {type(self).__name__}'s own parameters "
                                 f"{sorted(self._params)}, got {names!r}")
        chosen = set(self._params) if names is None else set(names)
        newly = set() if trainable else chosen - self._frozen
        self._frozen = self._frozen - chosen if trainable else self._frozen | chosen
        for name in newly:
            g = self._grads[name]
            if g.any():  # reading a lazily mapped gradient's pages keeps them out of resident memory; filling would not
                g.fill(0)
        if names is None:
            for child in self._children.values():
                child.set_trainable(trainable)

    def trainable(self, prefix: str = "") -> list[str]:
        """The names of the parameters not frozen, in :meth:`parameters` order: those the optimizers update."""
        out = [prefix + k for k in self._params if k not in self._frozen]
        for name, child in self._children.items():
            out.extend(child.trainable(f"{prefix}{name}." if name else prefix))
        return out

    def zero_grad(self) -> None:
        """Set every gradient to zero; frozen ones are zero already and left untouched (not made resident)."""
        for name, g in self._grads.items():
            if name not in self._frozen:
                g.fill(0)
        for child in self._children.values():
            child.zero_grad()

    def train(self, mode: bool = True) -> Layer:
        """Set the training mode (``training``) of this layer and its children, as ``torch.nn.Module.train``:
        True for training steps (dropout applies), False (the default) for evaluation and generation.
        Returns the layer."""
        check_bool(mode=mode)
        self.training = bool(mode)
        for child in self._children.values():
            child.train(mode)
        return self

    def eval(self) -> Layer:
        """``train(False)``: evaluation mode, no dropout. Returns the layer."""
        return self.train(False)

    def seed_dropout(self, *key: int) -> None:
        """Seed the dropout masks of the forwards that follow, for this layer and its children: the ``n``-th
        forward (from 0) of the layer at ``index`` in a depth-first walk (this layer 0) draws its mask from
        ``numpy.random.default_rng((*key, index, n))``. ``key``: non-negative ints, e.g. a trainer's
        ``(seed, step, micro_batch)``; the same key and inputs give the same masks."""
        if not key:
            raise ValueError("key: expected at least one non-negative int, got none")
        check_nonnegative(**{f"key[{i}]": k for i, k in enumerate(key)})
        key = tuple(int(k) for k in key)
        for index, layer in enumerate(self._walk()):
            layer._dropout_key, layer._forwards = (*key, index), 0

    def dropout_rng(self) -> np.random.Generator:
        """The generator of this forward's dropout mask (see :meth:`seed_dropout`; never seeded: fresh entropy
        from the OS, as torch without a seed); counts the forward."""
        if self._dropout_key is None:
            return np.random.default_rng()
        rng = np.random.default_rng((*self._dropout_key, self._forwards))
        self._forwards += 1
        return rng

    def _walk(self):
        """This layer and every layer under it, depth first, in order (each once)."""
        seen, stack = set(), [self]
        while stack:
            layer = stack.pop()
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            yield layer
            stack.extend(reversed(list(layer._children.values())))

    def num_parameters(self) -> int:
        """Total number of parameter elements."""
        return sum(p.size for p in self.parameters().values())

    def load_parameters(self, params: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the parameters of the same names (shapes must match; float32 on copy). ``strict``:
        the names must be exactly those of :meth:`parameters`; otherwise names the layer lacks are skipped."""
        if not isinstance(params, dict):
            raise TypeError(f"params: expected a dict of name -> array, got {type(params).__name__}")
        check_bool(strict=strict)
        bad = [k for k in params if not isinstance(k, str)]
        if bad:
            raise TypeError(f"params: expected str names, got the key {bad[0]!r}")
        own = self.parameters()
        if strict:
            missing, extra = own.keys() - params.keys(), params.keys() - own.keys()
            if missing or extra:
                raise ValueError(f"params: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
        for name, value in params.items():
            if name not in own:
                continue
            value = _real_array(name, value)
            if value.shape != own[name].shape:
                raise ValueError(f"{name}: expected shape {own[name].shape}, got {value.shape}")
            own[name][...] = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        """The constructor arguments shown by ``repr``."""
        return ""


def named_layers(model: Layer, prefix: str = ""):
    """(parent, child name, dotted name, layer) for every layer under ``model``, depth first in order."""
    for name, child in model.children().items():
        dotted = f"{prefix}{name}" if name else prefix.rstrip(".")
        yield model, name, dotted, child
        yield from named_layers(child, f"{dotted}." if dotted else "")


_replacements = 0  # layers replaced so far in this process: what structure_version() reports


def structure_version() -> int:
    """A count that grows whenever :func:`replace_child` swaps a layer (LoRA, quantizing, merging), so a model
    can keep what it found by walking its layers (its decoding plan) until a swap happens anywhere."""
    return _replacements


def replace_child(parent: Layer, name: str, old: Layer, new: Layer) -> None:
    """Put ``new`` in the place of ``parent``'s child ``name`` (``old``): the same position, so
    ``parameters()`` keeps its order, the attributes that held ``old``, and a graph's node."""
    global _replacements
    _replacements += 1
    parent._children[name] = new
    for attr, value in vars(parent).items():
        if value is old:
            setattr(parent, attr, new)
    nodes = getattr(parent, "nodes", None)  # a Graph: (name, layer, inputs, output) per node
    if isinstance(nodes, list):
        parent.nodes = [(n, new if layer is old else layer, ins, out) for n, layer, ins, out in nodes]


def check_names(arg: str, names) -> dict[str, str]:
    """A renaming of a layer's children (``names=``): None or a dict of child name -> new name, both strs
    (a new name "" puts the child's parameters unprefixed). Returns it as a dict."""
    if names is None:
        return {}
    if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        raise TypeError(f"{arg}: expected a dict of child name -> new name (str), got {names!r}")
    return names


def _real_array(name: str, value) -> np.ndarray:
    """``value`` as an array of real numbers (ints or floats: what a float32 parameter can hold)."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:  # ragged nested lists
        raise TypeError(f"{name}: expected an array of real numbers, got {type(value).__name__} ({e})") from None
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name}: expected an array of real numbers, got dtype {arr.dtype} ({type(value).__name__})")
    return arr


def check_input(name: str, x, last: int | None = None, min_ndim: int = 1) -> None:
    """A layer input: a C-contiguous float32 array (native byte order; not a masked array, whose mask the
    kernels would ignore) with at least ``min_ndim`` axes and last axis ``last``."""
    if not isinstance(x, np.ndarray) or isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name}: expected a numpy array, got {type(x).__name__}")
    if x.dtype != DTYPE:
        raise TypeError(f"{name}: expected dtype float32, got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} axes, got shape {x.shape}")
    if last is not None and x.shape[-1] != last:
        raise ValueError(f"{name}: expected last axis {last}, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (use np.ascontiguousarray)")


def input_grad_buffer(layer: Layer, out, shape: tuple[int, ...], **reads) -> np.ndarray:
    """Where ``layer.backward`` writes its input gradient: ``out`` when given (checked: float32, C-contiguous,
    ``shape``, writeable, sharing no memory with the arrays the backward ``reads``, by name), else the layer's
    own ``"dx"`` buffer."""
    if out is None:
        return layer.buffer("dx", shape)
    check_input("out", out)
    if out.shape != tuple(shape):
        raise ValueError(f"out: expected shape {tuple(shape)}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out: expected a writeable array")
    check_disjoint({"out": out}, reads)
    return out
