"""What ships as the Slicer extension: Python that Slicer 5.6 to 5.12 can run, and catalog entries.

Slicer 5.6 and 5.8 ship Python 3.9, Slicer 5.10 and newer 3.12: every file of the module must
compile under both. Slicer 5.8 and newer read the extension's JSON catalog entry (Slicer's schema
``Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json``), 5.6 the ``.s4ext``; both must agree
with the top CMakeLists.txt, and their screenshot and icon URLs must name files of this repository.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "MultiTaskSeg"
CATALOG_ENTRY = ROOT / "MultiTaskSeg.json"
S4EXT = ROOT / "MultiTaskSeg.s4ext"
TOP_CMAKE = ROOT / "CMakeLists.txt"
RAW_URL = re.compile(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/([^\s\"]+)")

# Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json: its properties and their types
# (additionalProperties is false there).
SCHEMA_V1_0_1 = {
    "required": {"$schema", "category", "scm_url"},
    "types": {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
              "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int},
}


def shipped_python_files():
    return [MODULE_DIR / "MultiTaskSeg.py"] + sorted((MODULE_DIR / "MultiTaskSegLib").rglob("*.py"))


def annotation_unions(tree):
    """``X | Y`` inside annotations: fine under ``from __future__ import annotations`` only (3.9)."""
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations = [a.annotation for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs]
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        for annotation in annotations:
            if annotation is not None and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                                              for n in ast.walk(annotation)):
                yield node.lineno


def newer_than_3_9(source: str, tree) -> list:
    """Constructs the 3.9 grammar check of ``ast.parse`` lets through."""
    found = []
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(alias.name == "annotations" for alias in n.names) for n in tree.body)
    if not future:
        found += [f"line {line}: X | Y annotation without 'from __future__ import annotations'"
                  for line in annotation_unions(tree)]
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            header = (ast.get_source_segment(source, node) or "").split("\n")
            text = " ".join(header)
            match = re.match(r"^with\s*\((.*?)\)\s*:", text)
            if match and " as " in match.group(1):
                found.append(f"line {node.lineno}: parenthesized context managers (3.10)")
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            keywords = {k.arg for k in node.keywords}
            if name == "zip" and "strict" in keywords:
                found.append(f"line {node.lineno}: zip(strict=) (3.10)")
            if name == "dataclass" and keywords & {"slots", "kw_only", "match_args"}:
                found.append(f"line {node.lineno}: dataclass({', '.join(keywords)}) (3.10)")
    return found


@pytest.mark.parametrize("version", [(3, 9), (3, 12)])
def test_every_shipped_python_file_compiles_for_slicers_pythons(version):
    problems = []
    for path in shipped_python_files():
        source = path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(source, str(path), feature_version=version)
        except SyntaxError as error:
            problems.append(f"{path.relative_to(ROOT)}: {error}")
            continue
        if version == (3, 9):
            problems += [f"{path.relative_to(ROOT)} {problem}" for problem in newer_than_3_9(source, tree)]
        with warnings.catch_warnings():  # invalid escapes: a DeprecationWarning now, a SyntaxWarning in 3.12
            warnings.simplefilter("error")
            try:
                compile(source, str(path), "exec")
            except (SyntaxError, DeprecationWarning, SyntaxWarning) as error:
                problems.append(f"{path.relative_to(ROOT)}: {error}")
    assert problems == []


def test_the_39_check_sees_what_the_grammar_check_lets_through():
    source = ("def f(a: int | None): pass\nwith (open('a') as f, open('b') as g): pass\n"
              "list(zip([], [], strict=True))\n")
    assert len(newer_than_3_9(source, ast.parse(source))) == 3


def test_catalog_entry_follows_slicers_schema_and_agrees_with_the_s4ext_and_cmake():
    entry = json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))
    assert entry["$schema"].endswith("/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert SCHEMA_V1_0_1["required"] <= set(entry)
    assert set(entry) <= set(SCHEMA_V1_0_1["types"]), "the schema allows no other properties"
    for key, value in entry.items():
        assert isinstance(value, SCHEMA_V1_0_1["types"][key]), key
    assert entry.get("scm_type", "git") in ("git", "local") and 1 <= entry.get("tier", 1) <= 5
    assert all(isinstance(name, str) for name in entry.get("build_dependencies", []))

    s4ext = dict(line.split(" ", 1) for line in S4EXT.read_text(encoding="utf-8").splitlines()
                 if line.strip() and not line.startswith("#"))
    cmake = TOP_CMAKE.read_text(encoding="utf-8")
    assert entry["scm_url"] == s4ext["scmurl"] and entry["scm_revision"] == s4ext["scmrevision"]
    assert entry["category"] == s4ext["category"] and f'set(EXTENSION_CATEGORY "{entry["category"]}")' in cmake
    assert entry["build_dependencies"] == s4ext["depends"].split() == \
        re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', cmake).group(1).split()


def test_icon_and_screenshot_urls_name_files_of_this_repository():
    urls = RAW_URL.findall(TOP_CMAKE.read_text(encoding="utf-8")) + RAW_URL.findall(S4EXT.read_text(encoding="utf-8"))
    assert {"Resources/Icons/MultiTaskSeg.png", "Resources/Screenshots/panel.png"} <= set(urls)
    missing = [path for path in urls if not (ROOT / path).is_file()]
    assert missing == []


def test_the_panel_screenshot_is_rendered_by_a_real_qt(tmp_path):
    """Testing/render_panel_screenshot.py makes Resources/Screenshots/panel.png: it must keep working."""
    pytest.importorskip("PySide6.QtUiTools", reason="PySide6 (requirements-dev.txt) renders the panel")
    import render_panel_screenshot
    from PySide6.QtGui import QImage

    image = QImage(str(render_panel_screenshot.render(tmp_path / "panel.png")))
    assert image.width() == render_panel_screenshot.WIDTH and image.height() > 400
