"""The state of a dataset as plain JSON types, and the checks of a state given back to ``load_state_dict``."""

from __future__ import annotations

import numpy as np


def plain(obj):
    """``obj`` with NumPy scalars turned into Python ones (recursively), so that ``json.dumps`` takes it."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    return obj


def state_get(state, key: str, what: str):
    if not isinstance(state, dict):
        raise TypeError(f"state: expected the dict of {what}.state_dict(), got {type(state).__name__}")
    if key not in state:
        raise ValueError(f"state: missing key {key!r} (expected the dict of {what}.state_dict())")
    return state[key]


def state_int(state, key: str, what: str, low: int = 0) -> int:
    v = state_get(state, key, what)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"state[{key!r}]: expected an int >= {low}, got {v!r}")
    return v


def set_rng_state(rng: np.random.Generator, state) -> None:
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"state['rng']: not a valid {type(rng.bit_generator).__name__} state ({e})") from None


class SeededBatchesState:
    """``state_dict``/``load_state_dict`` of a dataset that draws batches from ``self._rng`` and counts them in
    ``self.batches_drawn`` over ``seq_len``-token windows (``n_train``/``n_val`` its sizes): a resumed run
    continues its batches exactly. The state is named by the class (``kind``)."""

    def state_dict(self) -> dict:
        """The random state and the number of batches drawn, as plain JSON types."""
        return {"kind": type(self).__name__, "seed": self.seed, "batches_drawn": self.batches_drawn,
                "rng": plain(self._rng.bit_generator.state), "seq_len": self.seq_len,
                "n_train": self.n_train, "n_val": self.n_val}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (of a dataset over the same data and seq_len): batches continue exactly."""
        what = type(self).__name__
        for key, mine in (("seq_len", self.seq_len), ("n_train", self.n_train), ("n_val", self.n_val)):
            theirs = state_int(state, key, what)
            if theirs != mine:
                raise ValueError(f"state[{key!r}]: the state is of a dataset with {key}={theirs}, this one has {mine}")
        batches = state_int(state, "batches_drawn", what)
        seed = state_int(state, "seed", what)
        set_rng_state(self._rng, state_get(state, "rng", what))
        self.batches_drawn, self.seed = batches, seed
