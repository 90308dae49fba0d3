"""Shuffled mini-batches of in-memory arrays (:class:`ArrayDataset`) and :func:`train_test_split`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from qorus_jit.core.check import check_bool, check_int, check_positive, check_real
from qorus_jit.data._state import state_get, state_int

_Y_DTYPES = (np.int32, np.int64, np.float32, np.float64)


def _check_xy(X, y) -> int:
    if not isinstance(X, np.ndarray):
        raise TypeError(f"X: expected a numpy array of shape (N, ...), got {type(X).__name__}")
    if not isinstance(y, np.ndarray):
        raise TypeError(f"y: expected a numpy array of shape (N, ...), got {type(y).__name__}")
    if X.ndim < 1 or X.shape[0] < 1:
        raise ValueError(f"X: expected an array of shape (N, ...) with N >= 1, got shape {X.shape}")
    if X.dtype != np.float32:
        raise TypeError(f"X: expected dtype float32, got {X.dtype} (use X.astype(np.float32))")
    if y.ndim < 1:
        raise ValueError("y: expected an array of shape (N, ...), got a 0-D array")
    if y.dtype.type not in _Y_DTYPES:
        raise TypeError(f"y: expected dtype int32 or int64 (class labels) or float32 or float64 (targets), "
                        f"got {y.dtype}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y: expected {X.shape[0]} rows (as X), got shape {y.shape} against X of shape {X.shape}")
    return int(X.shape[0])


class ArrayDataset:
    """Shuffled mini-batches of ``(X, y)``: ``X (N, ...)`` float32, ``y (N, ...)`` int32/int64 labels or float targets.

    Iterating yields one epoch of ``(x, y)`` batches (C-contiguous copies, ``(batch_size, ...)``; the last
    one smaller unless ``drop_last``): the remaining batches of the current epoch, then the epoch counter
    advances. :meth:`next_batch` gives the next batch, crossing into the next epoch as needed. Epoch ``e``
    is ordered by a permutation drawn from ``np.random.default_rng([seed, e])`` (the identity when
    ``shuffle`` is False), so :meth:`state_dict` (epoch and position) restores the order exactly.

    Example::

        >>> X = np.arange(10, dtype=np.float32).reshape(5, 2)
        >>> ds = ArrayDataset(X, np.arange(5), batch_size=2, seed=0)
        >>> [len(xb) for xb, yb in ds]
        [2, 2, 1]
        >>> ds.epoch, len(ds)
        (1, 3)
    """

    def __init__(self, X, y, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        n = _check_xy(X, y)
        check_positive(batch_size=batch_size)
        check_bool(shuffle=shuffle, drop_last=drop_last)
        check_int(seed=seed)
        if seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed}")
        if drop_last and n < batch_size:
            raise ValueError(f"batch_size: with drop_last=True expected at most the {n} samples, got {batch_size}")
        self.X, self.y = X, y
        self.n = n
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0  # samples of the current epoch already served
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    @property
    def _end(self) -> int:
        """Position at which the current epoch is exhausted."""
        return len(self) * self.batch_size if self.drop_last else self.n

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            else:
                self._order = np.arange(self.n)
        return self._order

    def _roll_over(self) -> None:
        if self.position >= self._end:
            self.epoch += 1
            self.position = 0
            self._order = None

    def _take(self) -> tuple[np.ndarray, np.ndarray]:
        idx = self._epoch_order()[self.position:min(self.position + self.batch_size, self.n)]
        self.position += len(idx)
        return np.ascontiguousarray(self.X[idx]), np.ascontiguousarray(self.y[idx])

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next ``(x, y)`` batch, starting the next epoch (reshuffled) when this one is done."""
        self._roll_over()
        return self._take()

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self._roll_over()
        while self.position < self._end:
            yield self._take()
        self._roll_over()

    def state_dict(self) -> dict:
        """Epoch and position within it, as plain JSON types."""
        return {"kind": "ArrayDataset", "seed": self.seed, "epoch": self.epoch, "position": self.position,
                "n": self.n, "batch_size": self.batch_size, "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (of a dataset over the same arrays and options): batches continue exactly."""
        what = "ArrayDataset"
        for key, mine in (("n", self.n), ("batch_size", self.batch_size)):
            theirs = state_int(state, key, what)
            if theirs != mine:
                raise ValueError(f"state[{key!r}]: the state is of a dataset with {key}={theirs}, this one has {mine}")
        for key, mine in (("shuffle", self.shuffle), ("drop_last", self.drop_last)):
            theirs = state_get(state, key, what)
            if theirs != mine:
                raise ValueError(f"state[{key!r}]: the state is of a dataset with {key}={theirs}, this one has {mine}")
        seed = state_int(state, "seed", what)
        epoch = state_int(state, "epoch", what)
        position = state_int(state, "position", what)
        if position > self.n:
            raise ValueError(f"state['position']: expected at most {self.n}, got {position}")
        self.seed, self.epoch, self.position, self._order = seed, epoch, position, None

    def __repr__(self) -> str:
        return (f"ArrayDataset(n={self.n}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, epoch={self.epoch}, position={self.position})")


def train_test_split(X, y, test_fraction: float = 0.2, seed: int = 0):
    """Split ``(X, y)`` at random into ``(X_train, X_test, y_train, y_test)`` (C-contiguous copies).

    The last ``round(N * test_fraction)`` samples of ``np.random.default_rng(seed).permutation(N)`` form the
    test part; both parts must be non-empty. Deterministic for a given seed; no stratification.
    """
    n = _check_xy(X, y)
    check_real("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    check_int(seed=seed)
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed}")
    n_test = int(round(n * float(test_fraction)))
    if n_test < 1 or n_test > n - 1:
        raise ValueError(f"test_fraction: {test_fraction} of {n} samples gives {n_test} test and {n - n_test} "
                         "train samples; both need at least one")
    perm = np.random.default_rng(seed).permutation(n)
    tr, te = perm[:n - n_test], perm[n - n_test:]
    return (np.ascontiguousarray(X[tr]), np.ascontiguousarray(X[te]),
            np.ascontiguousarray(y[tr]), np.ascontiguousarray(y[te]))
