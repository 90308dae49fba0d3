"""kernels.trusted is the one way into the kernels from the rest of the package.

Layers, models, losses and optimizers call ``K.name(...)`` (``from qorus_jit.kernels import trusted as K``):
no other package's private ``_x``, and no kernel bound to a name at import time, which the profiler (that
swaps the entries of kernels.trusted) could not time.
"""

import ast
import importlib
import sys
import types
from pathlib import Path

from numba.core.dispatcher import Dispatcher

from qorus_jit.kernels import trusted

PACKAGE = Path(__file__).resolve().parents[1] / "qorus_jit"
KERNELS = "qorus_jit.kernels"


def _is_kernel_module(name: str) -> bool:
    return name == KERNELS or name.startswith(KERNELS + ".")


def _modules_outside_kernels():
    """(module name, parsed source) of every module of the package outside qorus_jit/kernels."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        name = ".".join(parts)
        if not _is_kernel_module(name):
            yield name, path.name == "__init__.py", ast.parse(path.read_text(), str(path))


def _private(name: str) -> bool:
    """``_x`` (a dunder such as ``__all__`` is not private)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of ``from <node.module> import ...`` written in ``module``."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _kernel_imports(module: str, is_package: bool, tree: ast.AST):
    """(line, kernel module, imported name or None, bound name, what the bound name stands for) for each
    import from qorus_jit.kernels; the name is None for ``import qorus_jit.kernels.x [as y]``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node)
            if _is_kernel_module(source):
                for alias in node.names:
                    yield node.lineno, source, alias.name, alias.asname or alias.name, f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _is_kernel_module(alias.name):
                    bound = alias.asname or alias.name.split(".")[0]
                    yield node.lineno, alias.name, None, bound, alias.name if alias.asname else bound


def _dotted(node) -> str | None:
    """``a.b.c`` for an attribute chain on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def _module(name: str) -> types.ModuleType | None:
    """The kernel module called ``name``, or None if ``name`` is not one."""
    if not _is_kernel_module(name):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _attribute_uses(module: str, is_package: bool, tree: ast.AST):
    """(line, kernel module, attribute) for each attribute read off a kernel module bound by an import:
    ``A.attention_forward`` after ``from qorus_jit.kernels import attention as A``."""
    bound = {b: target for *_, b, target in _kernel_imports(module, is_package, tree)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = _dotted(node.value)
            if owner is None or owner.split(".")[0] not in bound:
                continue
            first, _, rest = owner.partition(".")
            owner = bound[first] + ("." + rest if rest else "")
            if _module(owner) is not None:
                yield node.lineno, owner, node.attr


def _private_uses(module: str, is_package: bool, tree: ast.AST) -> list[str]:
    """Private names of qorus_jit.kernels imported by, or read off a kernel module in, ``module``."""
    bad = [f"{module}:{line}: from {source} import {name}"
           for line, source, name, *_ in _kernel_imports(module, is_package, tree) if name and _private(name)]
    bad += [f"{module}:{line}: {owner}.{attr}" for line, owner, attr in _attribute_uses(module, is_package, tree)
            if _private(attr)]
    return bad


def _bypasses(module: str, is_package: bool, tree: ast.AST) -> list[str]:
    """Kernels that ``module`` binds at import time or reads off a kernel module other than kernels.trusted."""
    entries = {id(getattr(trusted, n)) for n in trusted.__all__}

    def is_kernel(obj):
        return isinstance(obj, Dispatcher) or id(obj) in entries

    bad = []
    for line, source, name, *_ in _kernel_imports(module, is_package, tree):
        if name is None or _module(f"{source}.{name}") is not None:
            continue  # a module: what is read off it is checked below
        if source == trusted.__name__ or is_kernel(getattr(_module(source), name, None)):
            bad.append(f"{module}:{line}: from {source} import {name}")
    for line, owner, attr in _attribute_uses(module, is_package, tree):
        if owner != trusted.__name__ and is_kernel(getattr(_module(owner), attr, None)):
            bad.append(f"{module}:{line}: {owner}.{attr}")
    return bad


def test_no_private_kernel_names_outside_kernels():
    """No module outside qorus_jit/kernels imports a ``_name`` from qorus_jit.kernels, or reads one off a
    kernel module (``A._attention_forward``)."""
    bad = [b for mod in _modules_outside_kernels() for b in _private_uses(*mod)]
    assert not bad, "private kernels used outside qorus_jit.kernels (call K.name of kernels.trusted):\n" + \
        "\n".join(bad)


def test_kernels_reached_through_the_trusted_module():
    """Outside qorus_jit/kernels a kernel (a numba dispatcher, or an entry of kernels.trusted) is never bound
    to a name at import time, nor read off another kernel module: the calls go through ``K.name``, the
    entries the profiler swaps."""
    # the benchmarks time the public kernels themselves, as a user calls them, not through the profiler's hook
    engine = [mod for mod in _modules_outside_kernels() if not mod[0].startswith("qorus_jit.bench")]
    bad = [b for mod in engine for b in _bypasses(*mod)]
    assert not bad, "kernels called around kernels.trusted:\n" + "\n".join(bad)


def test_the_scans_catch_each_form():
    tree = ast.parse("from qorus_jit.kernels.matmul import _linear_forward\n"
                     "from qorus_jit.kernels import attention as A, trusted as K\n"
                     "from qorus_jit.kernels.trusted import relu_forward\n"
                     "from ..kernels.norm import _rmsnorm_forward\n"
                     "import qorus_jit.kernels.softmax\n"
                     "from qorus_jit.kernels.attention import attention_work_size\n"
                     "A._attention_forward(); A.attention_forward(); K.linear_forward()\n"
                     "qorus_jit.kernels.softmax._softmax_forward()\n")
    where = ("qorus_jit.layers.x", False, tree)
    assert sorted(_private_uses(*where)) == [
        "qorus_jit.layers.x:1: from qorus_jit.kernels.matmul import _linear_forward",
        "qorus_jit.layers.x:4: from qorus_jit.kernels.norm import _rmsnorm_forward",
        "qorus_jit.layers.x:7: qorus_jit.kernels.attention._attention_forward",
        "qorus_jit.layers.x:8: qorus_jit.kernels.softmax._softmax_forward",
    ]
    assert sorted(_bypasses(*where)) == sorted([
        "qorus_jit.layers.x:1: from qorus_jit.kernels.matmul import _linear_forward",
        "qorus_jit.layers.x:3: from qorus_jit.kernels.trusted import relu_forward",
        "qorus_jit.layers.x:4: from qorus_jit.kernels.norm import _rmsnorm_forward",
        "qorus_jit.layers.x:7: qorus_jit.kernels.attention._attention_forward",
        "qorus_jit.layers.x:7: qorus_jit.kernels.attention.attention_forward",
        "qorus_jit.layers.x:8: qorus_jit.kernels.softmax._softmax_forward",
    ])


def test_entries_are_kernels():
    """Every public name of kernels.trusted is listed in ``__all__`` (what the profiler swaps) and is a numba
    dispatcher or a function of qorus_jit.kernels: the private kernel ``_name`` of its family module (same
    object, so same arguments) or, for the checked group, the family's public ``name`` itself."""
    public = {n for n, v in vars(trusted).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)
              and n != "annotations"}
    assert public == set(trusted.__all__) and len(trusted.__all__) == len(set(trusted.__all__))
    for name in trusted.__all__:
        entry = getattr(trusted, name)
        fn = entry.py_func if isinstance(entry, Dispatcher) else entry
        assert isinstance(entry, Dispatcher | types.FunctionType), name
        assert _is_kernel_module(fn.__module__) and fn.__module__ != trusted.__name__, (name, fn.__module__)
        family = sys.modules[fn.__module__]
        assert entry is getattr(family, "_" + name, None) or entry is getattr(family, name, None), name
