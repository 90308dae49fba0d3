"""Every public name has a docstring (the exceptions are listed in tests/docs/hooks.py and should be none), every
public module is rendered by an API page, and every name of ``qorus_jit.__all__`` is in the API index. The
documentation build (mkdocs.yml's hook) fails on the same problems."""

import sys
import types
from pathlib import Path

import qorus_jit
from tests.docs import hooks

ROOT = Path(__file__).resolve().parents[2]


def test_every_public_name_has_a_docstring():
    missing = hooks.missing_docstrings()
    assert [name for name in missing if name not in hooks.EXCEPTIONS] == []
    assert sorted(hooks.EXCEPTIONS - set(missing)) == [], "documented now: remove from EXCEPTIONS"


def test_every_public_module_has_an_api_page():
    documented = hooks.documented_modules()
    assert [m for m in hooks.public_modules() if m != "qorus_jit" and m not in documented] == []


def test_every_export_is_in_the_api_index():
    index = (ROOT / "docs" / "api" / "index.md").read_text()
    names = [n for n in qorus_jit.__all__ if not n.startswith("__")]
    assert [n for n in names if f"[`{n}`]" not in index] == []


def test_the_docstring_check_finds_what_is_missing():
    module = types.ModuleType("qorus_docs_probe", "A module with undocumented names.")

    def documented():
        """Has one."""

    def bare():
        pass

    class Thing:
        """Has one."""

        def method(self):
            pass

        @property
        def size(self):
            return 1

        def _private(self):
            pass

    for obj in (documented, bare, Thing):
        obj.__module__ = module.__name__
        setattr(module, obj.__name__, obj)
    sys.modules[module.__name__] = module
    try:
        names = {name: obj for name, obj in hooks.public_names(module.__name__)}
    finally:
        del sys.modules[module.__name__]
    assert sorted(names) == ["qorus_docs_probe", "qorus_docs_probe.Thing", "qorus_docs_probe.Thing.method",
                             "qorus_docs_probe.Thing.size", "qorus_docs_probe.bare", "qorus_docs_probe.documented"]
    assert sorted(n for n, obj in names.items() if not hooks._doc(obj)) == [
        "qorus_docs_probe.Thing.method", "qorus_docs_probe.Thing.size", "qorus_docs_probe.bare"]


def test_docstrings_become_markdown():
    from tests.docs.griffe_markdown import comment_doc, fence_doctests, plain_roles

    text = "Decay.\n\n    >>> s = linear(1.0, 4)\n    >>> [s(k) for k in range(2)]\n    [1.0, 0.75]\n\nAfter."
    assert fence_doctests(text) == ("Decay.\n\n    ```pycon\n    >>> s = linear(1.0, 4)\n    >>> [s(k) for k in "
                                    "range(2)]\n    [1.0, 0.75]\n    ```\n\nAfter.")
    assert fence_doctests("No examples.\n") == "No examples.\n"
    assert fence_doctests(">>> 1 + 1\n2") == "```pycon\n>>> 1 + 1\n2\n```"
    assert plain_roles("See :class:`~qorus_jit.layers.Linear`, :mod:`qorus_jit.train` and :meth:`fit`.") == (
        "See `Linear`, `qorus_jit.train` and `fit`.")
    lines = ["x = 1", "#: The width", "#: of a row.", "WIDTH = 3", "", "# a plain comment", "N = 2"]
    assert (comment_doc(lines, 4), comment_doc(lines, 7), comment_doc(lines, 1)) == ("The width\nof a row.", "", "")
