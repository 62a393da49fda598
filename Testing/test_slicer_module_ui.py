"""The Slicer module's panel and its Python agree, checked without Qt or Slicer.

Every ``self.ui.X`` the widget uses must be a widget of the .ui file (else Slicer raises an
AttributeError only when that code path runs), and every ``SlicerParameterName`` must name a
field of the parameter-node class (else ``connectGui`` fails when the module opens).
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "MultiTaskSeg"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MultiTaskSeg.ui"
MODULE_FILE = MODULE_DIR / "MultiTaskSeg.py"
CMAKE_FILE = MODULE_DIR / "CMakeLists.txt"


def ui_widgets():
    """name -> element of every widget in the .ui file."""
    root = ElementTree.parse(UI_FILE).getroot()
    return {widget.get("name"): widget for widget in root.iter("widget")}


def bound_parameter_names():
    names = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names[name] = prop.findtext("string")
    return names


def module_tree():
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def parameter_node_fields():
    """Annotated fields of the @parameterNodeWrapper class."""
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {stmt.target.id for stmt in node.body if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in MultiTaskSeg.py")


def ui_attributes_used():
    """X of every ``self.ui.X`` / ``widget.ui.X`` in the module."""
    used = set()
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
            used.add(node.attr)
    return used


def test_every_ui_attribute_used_is_a_widget_of_the_ui_file():
    used = ui_attributes_used()
    assert len(used) >= 10, "the parser found the widget's ui attributes"
    missing = sorted(used - set(ui_widgets()))
    assert not missing, f"MultiTaskSeg.py uses self.ui.{missing} but MultiTaskSeg.ui has no such widget"


def test_every_slicer_parameter_name_is_a_parameter_node_field():
    bound = bound_parameter_names()
    fields = parameter_node_fields()
    assert {"inputVolume", "outputSegmentation"} <= set(bound.values())
    unknown = {widget: name for widget, name in bound.items() if name not in fields}
    assert not unknown, f"SlicerParameterName values with no parameter-node field: {unknown} (fields: {sorted(fields)})"


def test_parameter_node_fields_are_bound_or_set_in_code():
    """A field neither bound in the .ui nor assigned in the widget would never change."""
    source = MODULE_FILE.read_text(encoding="utf-8")
    bound = set(bound_parameter_names().values())
    for field in parameter_node_fields() - bound:
        assert re.search(rf"_parameterNode\.{field}\s*=", source), f"parameter '{field}' is never set"


def test_node_selectors_get_the_scene_from_the_module_widget():
    root = ElementTree.parse(UI_FILE).getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    selectors = {name for name, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors and selectors <= receivers


def test_cmake_lists_every_python_file_and_resource():
    cmake = CMAKE_FILE.read_text(encoding="utf-8")
    python_files = ["MultiTaskSeg.py"] + [
        f"MultiTaskSegLib/{p.name}" for p in sorted((MODULE_DIR / "MultiTaskSegLib").glob("*.py"))
    ]
    # Resources/Models/ is installed by a glob of its model files; its report and curve images are documentation
    resources = [str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*")
                 if p.is_file() and p.suffix in {".png", ".ui"} and "Models" not in p.parts]
    for path in python_files + resources:
        assert path in cmake, f"{path} is not listed in MultiTaskSeg/CMakeLists.txt, so a built extension lacks it"
