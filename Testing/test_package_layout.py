"""The package's layering, checked on the source: which sub-package may import which.

engine is inference only and imports none of the others; training imports engine; data (the
training data made here) imports engine and training; slicer imports engine only, so a Slicer
session never loads the training code; cli sits on top.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Tuple

LIB = Path(__file__).resolve().parents[1] / "MultiTaskSeg" / "MultiTaskSegLib"
ALLOWED = {
    "engine": {"engine"},
    "training": {"engine", "training"},
    "data": {"engine", "training", "data"},
    "slicer": {"engine", "slicer"},
    "cli": {"engine", "training", "data", "cli"},
}


def imported_subpackages(path: Path, lib: Path = LIB) -> Iterator[Tuple[int, str]]:
    """(line, sub-package) of every import of MultiTaskSegLib's sub-packages in ``path``."""
    package = path.relative_to(lib).parts[:-1]  # e.g. ("engine",)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(package[: len(package) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                names = [alias.name for alias in node.names] if not node.module and not base else []
                if target:
                    yield node.lineno, target[0]
                for name in names:  # "from .. import engine"
                    yield node.lineno, name
            elif node.module and node.module.startswith("MultiTaskSegLib."):
                yield node.lineno, node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("MultiTaskSegLib."):
                    yield node.lineno, alias.name.split(".")[1]


def test_every_module_lives_in_a_known_sub_package():
    loose = [p.name for p in LIB.glob("*.py") if p.name not in ("__init__.py", "logic.py")]
    assert loose == [], "modules belong in engine/, training/, data/, slicer/ or cli/"
    assert {p.name for p in LIB.iterdir() if p.is_dir() and not p.name.startswith("__")} == set(ALLOWED)


def test_sub_packages_import_only_what_the_layering_allows():
    violations = []
    for path in sorted(LIB.rglob("*.py")):
        parts = path.relative_to(LIB).parts
        if len(parts) < 2:
            continue
        for line, target in imported_subpackages(path):
            if target in ALLOWED and target not in ALLOWED[parts[0]]:
                violations.append(f"{path.relative_to(LIB)}:{line} imports {target}")
    assert violations == []


def test_the_import_check_sees_relative_and_absolute_imports(tmp_path):
    """The checker itself: an engine module importing training and cli is caught."""
    (tmp_path / "engine").mkdir()
    module = tmp_path / "engine" / "bad.py"
    module.write_text("from ..training import loop\nimport MultiTaskSegLib.cli.program\nfrom .errors import X\n"
                      "from .. import data\n")
    found = sorted(target for _, target in imported_subpackages(module, tmp_path))
    assert found == ["cli", "data", "engine", "training"]


def test_modules_stay_small_enough_to_read():
    long = {str(p.relative_to(LIB)): n for p in LIB.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}, "split a module by concern before it grows past ~400 lines"
