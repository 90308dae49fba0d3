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
