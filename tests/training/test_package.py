"""qorus_jit.train exports the names a training script imports, each the object of its defining module, and
the modules of the package never import from the package's __init__ (which would make import cycles)."""

import ast
import importlib
from pathlib import Path

import qorus_jit.train

DEFINED_IN = {
    "losses": ("CrossEntropyLoss", "MSELoss", "LOSSES", "make_loss"),
    "optim": ("SGD", "Adam", "AdamW", "Optimizer", "decay_groups"),
    "schedule": ("constant", "step_decay", "cosine", "linear", "warmup", "warmup_cosine", "make_schedule"),
    "trainer": ("Trainer", "TrainingError"),
    "run": ("TrainConfig", "ConfigError", "Run", "start_run", "resume_run"),
    "profiler": ("profile", "Profile"),
}


def test_exports_are_the_defining_modules_objects():
    expected = {name for names in DEFINED_IN.values() for name in names}
    assert set(qorus_jit.train.__all__) == expected
    for module, names in DEFINED_IN.items():
        mod = importlib.import_module(f"qorus_jit.train.{module}")
        for name in names:
            assert getattr(qorus_jit.train, name) is getattr(mod, name), name


def test_modules_import_from_the_defining_modules():
    folder = Path(qorus_jit.train.__file__).parent
    for file in sorted(folder.glob("*.py")):
        if file.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "qorus_jit.train", f"{file.name}: from qorus_jit.train import ..."
            elif isinstance(node, ast.Import):
                assert all(a.name != "qorus_jit.train" for a in node.names), f"{file.name}: import qorus_jit.train"
