"""The Slicer module's panel and its Python agree, checked without Slicer.

Every ``self.ui.X`` the widget uses must be a widget of the .ui file (else Slicer raises an
AttributeError only when that code path runs), and every ``SlicerParameterName`` must name a
field of the parameter-node class (else ``connectGui`` fails when the module opens). With PySide6
(requirements-dev.txt), a real Qt builds the panel from the .ui file with stand-ins for Slicer's
and CTK's widgets that declare their real signals, slots and properties
(Testing/slicer_qt_standins.py): Qt checks the file's connections and properties, and the
signals the module connects to and the properties it sets are looked up on the widgets Qt made.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

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


def package_python_files():
    return sorted(str(p.relative_to(MODULE_DIR)).replace("\\", "/") for p in (MODULE_DIR / "MultiTaskSegLib").rglob("*.py"))


def test_cmake_ships_every_python_file_and_resource():
    cmake = CMAKE_FILE.read_text(encoding="utf-8")
    scripts = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", cmake, flags=re.DOTALL).group(1).split()
    assert scripts == ["${MODULE_NAME}.py", "${MODULE_LIB_PYTHON_SCRIPTS}"]
    assert "SCRIPTS ${MODULE_PYTHON_SCRIPTS}" in cmake
    # Resources/Models/ is installed by a glob of its model files; its report and curve images are documentation
    resources = [str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*")
                 if p.is_file() and p.suffix in {".png", ".ui"} and "Models" not in p.parts]
    for path in resources:
        assert path in cmake, f"{path} is not listed in MultiTaskSeg/CMakeLists.txt, so a built extension lacks it"


def test_cmakes_glob_finds_every_python_file_of_the_package(tmp_path):
    """The CMakeLists' own glob, run by CMake (script mode, which refuses CONFIGURE_DEPENDS)."""
    import shutil
    import subprocess

    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    text = CMAKE_FILE.read_text(encoding="utf-8")
    glob = re.search(r"file\(GLOB_RECURSE MODULE_LIB_PYTHON_SCRIPTS.*?\)", text, flags=re.DOTALL).group(0)
    script = tmp_path / "glob.cmake"
    script.write_text(f"set(CMAKE_CURRENT_SOURCE_DIR \"{MODULE_DIR.as_posix()}\")\n"
                      + glob.replace("CONFIGURE_DEPENDS", "") + '\nmessage("${MODULE_LIB_PYTHON_SCRIPTS}")\n')
    found = subprocess.run([cmake, "-P", str(script)], cwd=MODULE_DIR, capture_output=True, text=True, check=True).stderr
    assert sorted(found.strip().split(";")) == package_python_files()


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


# ---- a real Qt builds the panel -----------------------------------------------------------------

QT_SIGNATURE = re.compile(r"^\w+\([\w:*&<>, ]*\)$")


@pytest.fixture(scope="module")
def panel():
    pytest.importorskip("PySide6.QtUiTools", reason="PySide6 (requirements-dev.txt) builds the panel with a real Qt")
    import slicer_qt_standins

    widget, messages = slicer_qt_standins.load_panel()
    return widget, messages


def panel_children(panel_widget):
    from PySide6.QtCore import QObject

    return {child.objectName(): child for child in panel_widget.findChildren(QObject) if child.objectName()}


def test_qt_builds_the_panel_without_complaint(panel):
    widget, messages = panel
    # CTK's ctkPathLineEdit::Filters is a Qt flags property, which PySide6 cannot declare: checked below.
    complaints = [m for m in messages if "set-type property filters" not in m]
    assert widget is not None and complaints == []
    children = panel_children(widget)
    for name, element in ui_widgets().items():
        made = children.get(name, widget if name == widget.objectName() else None)
        assert made is not None, f"Qt made no widget '{name}'"
        assert made.metaObject().className() == element.get("class"), f"'{name}' was not made as {element.get('class')}"


def test_every_property_the_ui_sets_is_a_property_of_its_widget(panel):
    """QUiLoader turns an unknown property into a silent dynamic one: look each up on the class."""
    widget, _ = panel
    children = panel_children(widget)
    unknown = []
    for name, element in ui_widgets().items():
        made = children.get(name, widget)
        for prop in element.findall("property"):
            if prop.get("stdset") != "0" and made.metaObject().indexOfProperty(prop.get("name")) < 0:
                unknown.append(f"{name}.{prop.get('name')}")
    assert unknown == []


def test_path_line_edit_filters_name_ctk_flags():
    pytest.importorskip("PySide6.QtUiTools")
    from slicer_qt_standins import ctkPathLineEdit

    element = ui_widgets()["modelPathLineEdit"]
    value = next(p for p in element.findall("property") if p.get("name") == "filters").findtext("set")
    names = [part.split("::", 1) for part in value.split("|")]
    assert all(owner == "ctkPathLineEdit" and flag in ctkPathLineEdit.Filter.__members__ for owner, flag in names)


def connect_calls():
    """(receiver expression, signal signature) of every ``X.connect("signal(...)", slot)`` in the module."""
    for node in ast.walk(module_tree()):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield ast.unparse(node.func.value), node.args[0].value


def receiver_classes(panel_widget):
    """What each receiver expression of the module stands for, as a widget class or instance."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QCheckBox

    import slicer_qt_standins

    children = panel_children(panel_widget)
    known = {f"self.ui.{name}": child for name, child in children.items()}
    known.update({"timer": QTimer, "checkBox": QCheckBox, "slider": slicer_qt_standins.ctkSliderWidget,
                  "getattr(self.ui, buttonName)": [children[name] for name in module_constants()["SAMPLES"]]})
    return known


def has_signal(widget_or_class, signature: str) -> bool:
    from PySide6.QtCore import QMetaMethod, QMetaObject

    meta = widget_or_class.metaObject() if hasattr(widget_or_class, "objectName") and not isinstance(
        widget_or_class, type) else widget_or_class.staticMetaObject
    wanted = bytes(QMetaObject.normalizedSignature(signature)).decode()
    return any(meta.method(i).methodType() == QMetaMethod.MethodType.Signal
               and bytes(meta.method(i).methodSignature()).decode() == wanted for i in range(meta.methodCount()))


def test_every_signal_the_module_connects_to_exists(panel):
    """PythonQt connects by signature string; a wrong one fails only when Slicer runs that line."""
    widget, _ = panel
    known = receiver_classes(widget)
    calls = list(connect_calls())
    assert len(calls) >= 10
    for receiver, signature in calls:
        assert QT_SIGNATURE.match(signature), signature
        assert receiver in known, f"the test does not know what '{receiver}' is: add it to receiver_classes()"
        targets = known[receiver] if isinstance(known[receiver], list) else [known[receiver]]
        for target in targets:
            assert has_signal(target, signature), f"{receiver} has no signal {signature}"


def ui_member_uses():
    """(widget name, member, called) of every ``self.ui.X.member`` in the module."""
    tree = module_tree()
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "ui"
                and ast.unparse(node.value.value) == "self.ui"):
            parent = parents.get(node)
            yield node.value.attr, node.attr, isinstance(parent, ast.Call) and parent.func is node


def test_every_property_and_method_the_module_uses_on_a_ui_widget_exists(panel):
    """PythonQt reads and writes ``self.ui.X.attr`` as X's Qt property and calls X's methods by their
    C++ names: each must exist on the widget Qt made (``connect`` is PythonQt's own)."""
    widget, _ = panel
    children = panel_children(widget)
    uses = set(ui_member_uses())
    assert len(uses) >= 20
    missing = []
    for name, member, called in sorted(uses):
        made = children[name]
        if called:
            if member != "connect" and not hasattr(made, member):
                missing.append(f"{name}.{member}()")
        elif made.metaObject().indexOfProperty(member) < 0:
            missing.append(f"{name}.{member}")
    assert missing == []


def test_parameter_widgets_are_what_connect_parameters_to_gui_needs(panel):
    from MultiTaskSegLib.slicer.panel_support import parameter_widgets

    widget, _ = panel
    ui = type("ui", (), {})()
    for name, child in panel_children(widget).items():
        setattr(ui, name, child)
    mapping = parameter_widgets(ui)
    assert {name: child.objectName() for name, child in mapping.items()} == {
        parameter: widget_name for widget_name, parameter in bound_parameter_names().items()}
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert "connectParametersToGui(panel_support.parameter_widgets(self.ui))" in source
    assert ".connectGui(" not in source, "connectGui returns no tag on Slicer 5.4-5.8: its observers pile up"


def test_threshold_sliders_follow_the_parameter_node_not_the_selector_signal():
    """Slots run in connection order: a slot on the output selector's signal could run before the
    parameter node holds the new node, and show the previous node's sliders."""
    assert not [call for call in connect_calls() if call[0] == "self.ui.outputSegmentationSelector"]
    tree = module_tree()
    modified = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_onParameterNodeModified")
    assert "_rebuildThresholdSliders" in ast.unparse(modified)
    rebuild = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_rebuildThresholdSliders")
    assert "threshold_rows(self.logic, segmentationNode)" in ast.unparse(rebuild)
