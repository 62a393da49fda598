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


def module_constants():
    """The module file's UPPER_CASE constants, evaluated without importing it (it needs Slicer)."""
    constants = {}
    for node in module_tree().body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id.isupper():
            constants[node.targets[0].id] = eval(compile(ast.Expression(node.value), "<constant>", "eval"), {})
    return constants


def test_threshold_sliders_show_the_shipped_models_thresholds_without_changing_them():
    """A slider keeps its value rounded to its decimals; what the module applies when it reads the
    slider back must select the same stored levels (v / 255 >= t) as the bundle's threshold, or
    moving any slider would change the others (two decimals turned 254/255 into 1.00)."""
    from MultiTaskSegLib.engine.bundle import load_bundle
    from MultiTaskSegLib.engine.labelmap_rule import nearest_level_threshold, threshold_to_level

    constants = module_constants()
    thresholds = load_bundle().default_thresholds
    assert thresholds, "the shipped model has thresholded classes"
    assert 255 * constants["SLIDER_STEP"] == 1.0  # one step: one stored probability level
    for level in range(256):  # every position of the slider, as the bundle's thresholds are too
        shown = round(level * constants["SLIDER_STEP"], constants["SLIDER_DECIMALS"])
        assert threshold_to_level(nearest_level_threshold(shown)) == level, (level, shown)
    for t in thresholds.values():
        shown = round(t, constants["SLIDER_DECIMALS"])
        assert threshold_to_level(nearest_level_threshold(shown)) == threshold_to_level(t), (t, shown)
    assert "nearest_level_threshold(slider.value)" in MODULE_FILE.read_text(encoding="utf-8")
