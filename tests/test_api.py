"""The public API: every name a user imports is exported from ``qorus_jit`` and listed once in ``__all__``."""

import importlib
import pkgutil

import qorus_jit


def test_all_names_resolve_and_are_listed_once():
    assert len(qorus_jit.__all__) == len(set(qorus_jit.__all__))
    for name in qorus_jit.__all__:
        assert hasattr(qorus_jit, name), name
    star: dict = {}
    exec("from qorus_jit import *", star)
    assert set(qorus_jit.__all__) <= set(star)


def test_subpackage_exports_of_classes_and_functions_are_public_at_the_top():
    """A class or function a subpackage exports for users (its ``__all__``) is exported from qorus_jit too,
    as the same object: one list names the whole API."""
    top = {id(getattr(qorus_jit, n)) for n in qorus_jit.__all__}
    internal = {"LOSSES", "MMAP_THRESHOLD", "BPE_INSTALL_HINT", "TOKENIZER_FILE"}  # constants, not API objects
    missing = []
    for info in pkgutil.iter_modules(qorus_jit.__path__):
        mod = importlib.import_module(f"qorus_jit.{info.name}")
        for name in getattr(mod, "__all__", ()):
            if name not in internal and id(getattr(mod, name)) not in top:
                missing.append(f"qorus_jit.{info.name}.{name}")
    assert missing == []
