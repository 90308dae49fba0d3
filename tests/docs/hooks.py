"""MkDocs hooks of the documentation site (mkdocs.yml): the build fails (strict mode) on a public name without a
docstring or a public module that no API page documents. tests/test_docs.py runs the same checks."""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("mkdocs.plugins.qorus")

# Public names that have no docstring yet, by full name. It should be empty.
EXCEPTIONS: frozenset[str] = frozenset()


def public_modules() -> list[str]:
    """qorus_jit and every module under it whose dotted path has no part starting with ``_``."""
    import qorus_jit

    found = pkgutil.walk_packages(qorus_jit.__path__, "qorus_jit.")
    return ["qorus_jit"] + sorted(m.name for m in found if not any(p.startswith("_") for p in m.name.split(".")))


def _doc(obj) -> str:
    return (getattr(obj, "__doc__", None) or "").strip()


def _members(cls) -> list[tuple[str, object]]:
    """A class's own public methods and properties (not the inherited ones: those are documented on the base)."""
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            out.append((name, value.fget))
        elif isinstance(value, staticmethod | classmethod):
            out.append((name, value.__func__))
        elif inspect.isfunction(value) or hasattr(value, "py_func"):
            out.append((name, value))
    return out


def public_names(module_name: str) -> list[tuple[str, object]]:
    """``(full name, object)`` of the module and of each public function, class, method and property it defines
    (its ``__all__`` when it has one, else every name not starting with ``_`` whose ``__module__`` is this
    module); for ``qorus_jit``, the names of its ``__all__``."""
    module = importlib.import_module(module_name)
    out = [(module_name, module)]
    if module_name == "qorus_jit":
        names = [n for n in module.__all__ if not n.startswith("__")]
    elif hasattr(module, "__all__"):
        names = list(module.__all__)
    else:
        names = [n for n, v in vars(module).items() if not n.startswith("_")
                 and (inspect.isclass(v) or callable(v)) and getattr(v, "__module__", None) == module_name]
    for name in names:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or callable(obj)):
            continue
        defined_in = getattr(obj, "__module__", module_name)
        if module_name != "qorus_jit" and defined_in != module_name:
            continue  # re-exported by a package: checked where it is defined
        full = f"{defined_in}.{name}" if module_name == "qorus_jit" else f"{module_name}.{name}"
        out.append((full, obj))
        if inspect.isclass(obj):
            out += [(f"{full}.{m}", v) for m, v in _members(obj)]
    return out


def missing_docstrings() -> list[str]:
    """Full names of the public modules, functions, classes, methods and properties without a docstring."""
    seen, missing = set(), []
    for module_name in public_modules():
        for full, obj in public_names(module_name):
            if full not in seen:
                seen.add(full)
                if not _doc(obj):
                    missing.append(full)
    return missing


def documented_modules(api_dir: Path = ROOT / "docs" / "api") -> set[str]:
    """The modules that the API pages render (their ``::: module`` lines)."""
    found = set()
    for page in api_dir.glob("*.md"):
        found |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), re.M))
    return found


def problems() -> list[str]:
    """What fails the build: names without a docstring (beyond EXCEPTIONS), exceptions that now have one, and
    public modules that no API page renders."""
    out = []
    missing = missing_docstrings()
    out += [f"no docstring: {name}" for name in missing if name not in EXCEPTIONS]
    out += [f"listed in EXCEPTIONS but documented now (remove it): {n}" for n in sorted(EXCEPTIONS - set(missing))]
    documented = documented_modules()
    out += [f"no API page renders the module {m} (add '::: {m}' to a page of docs/api/)"
            for m in public_modules() if m != "qorus_jit" and m not in documented]
    return out


def on_pre_build(config, **kwargs) -> None:
    for problem in problems():
        log.warning(problem)


# Pages link to files of the repository outside docs/ (an example script, README.md) with paths like
# ../examples/finetune_lora.py. The site carries a copy of each such file under source/, and the links point there.
SOURCE_LINK = re.compile(r"\]\(((?:\.\./)+)([^)#\s]+)\)")
SOURCE_DIR = "source"


def source_targets(page_src: str, markdown: str, docs_dir: Path) -> dict[str, str]:
    """``{link as written: path of the repository file from the root}`` for the page's links that leave
    docs_dir to an existing file of the repository."""
    out = {}
    for ups, rest in SOURCE_LINK.findall(markdown):
        target = (docs_dir / Path(page_src).parent / (ups + rest)).resolve()
        if target.is_file() and ROOT in target.parents and docs_dir not in target.parents:
            out[ups + rest] = target.relative_to(ROOT).as_posix()
    return out


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    docs_dir = Path(config["docs_dir"]).resolve()
    wanted = set()
    for f in files.documentation_pages():
        wanted |= set(source_targets(f.src_uri, Path(f.abs_src_path).read_text(), docs_dir).values())
    for rel in sorted(wanted):
        files.append(File.generated(config, f"{SOURCE_DIR}/{rel}", abs_src_path=str(ROOT / rel)))
    return files


def on_page_markdown(markdown: str, page, config, **kwargs) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    depth = "../" * page.file.src_uri.count("/")
    for written, rel in source_targets(page.file.src_uri, markdown, docs_dir).items():
        markdown = markdown.replace(f"]({written})", f"]({depth}{SOURCE_DIR}/{rel})")
    return markdown
