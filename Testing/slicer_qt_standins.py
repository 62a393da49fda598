"""Stand-ins for Slicer's and CTK's custom widgets, for loading MultiTaskSeg.ui with a real Qt.

PySide6's QUiLoader builds the panel from the .ui file as Slicer's loader does; Slicer's C++
widgets are replaced by these Python classes, which declare the real classes' signals, slots and
properties (from Slicer's qMRMLNodeComboBox.h, qMRMLWidget.h and CTK's ctkCollapsibleButton.h,
ctkPathLineEdit.h, ctkSliderWidget.h), so Qt itself checks the file's connections, properties and
layouts. They draw themselves plainly enough for a screenshot of the panel.

Used by Testing/test_slicer_module_ui.py and Testing/render_panel_screenshot.py; needs PySide6
(requirements-dev.txt) and QT_QPA_PLATFORM=offscreen where there is no display.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import List, Tuple

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Property, QFlag, QRect, Qt, Signal, Slot, qInstallMessageHandler  # noqa: E402
from PySide6.QtGui import QPainter, QPalette  # noqa: E402
from PySide6.QtWidgets import (QAbstractButton, QApplication, QComboBox, QDoubleSpinBox, QHBoxLayout,  # noqa: E402
                               QLineEdit, QSlider, QStyle, QStyleOptionButton, QToolButton, QWidget)
from PySide6.QtUiTools import QUiLoader  # noqa: E402

UI_FILE = Path(__file__).resolve().parents[1] / "MultiTaskSeg" / "Resources" / "UI" / "MultiTaskSeg.ui"


def _value(name: str, default, kind="QVariant"):
    """A read-write Qt property kept in the widget's ``_values``."""

    def get(self):
        return self._values.get(name, default)

    def set(self, value):
        self._values[name] = value

    return Property(kind, get, set)


class qMRMLWidget(QWidget):
    mrmlSceneChanged = Signal("vtkMRMLScene*")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._values = {}

    @Slot("vtkMRMLScene*")
    def setMRMLScene(self, scene):
        pass


class qMRMLNodeComboBox(QWidget):
    currentNodeChanged = Signal(("vtkMRMLNode*",), (bool,))  # two overloads, as in C++
    currentNodeIDChanged = Signal(str)
    nodeActivated = Signal("vtkMRMLNode*")
    nodeAdded = Signal("vtkMRMLNode*")
    nodeAddedByUser = Signal("vtkMRMLNode*")
    nodeAboutToBeRemoved = Signal("vtkMRMLNode*")
    currentNodeRenamed = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._values = {}
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.comboBox = QComboBox(self)
        layout.addWidget(self.comboBox)

    nodeTypes = _value("nodeTypes", [], "QStringList")
    showHidden = _value("showHidden", False, bool)
    showChildNodeTypes = _value("showChildNodeTypes", True, bool)
    hideChildNodeTypes = _value("hideChildNodeTypes", [], "QStringList")
    baseName = _value("baseName", "", str)
    noneEnabled = _value("noneEnabled", False, bool)
    addEnabled = _value("addEnabled", True, bool)
    removeEnabled = _value("removeEnabled", True, bool)
    editEnabled = _value("editEnabled", False, bool)
    renameEnabled = _value("renameEnabled", False, bool)
    selectNodeUponCreation = _value("selectNodeUponCreation", True, bool)
    noneDisplay = _value("noneDisplay", "None", str)
    interactionNodeSingletonTag = _value("interactionNodeSingletonTag", "", str)

    @Slot("vtkMRMLScene*")
    def setMRMLScene(self, scene):
        pass

    @Slot("vtkMRMLNode*")
    def setCurrentNode(self, node):
        pass

    @Slot(str)
    def setCurrentNodeID(self, nodeId):
        pass

    def showText(self, text: str) -> None:
        """What the screenshot shows as the selected node."""
        self.comboBox.clear()
        self.comboBox.addItem(text)


class ctkCollapsibleButton(QAbstractButton):
    contentsCollapsed = Signal(bool)
    HEADER = 24

    def __init__(self, parent=None):
        super().__init__(parent)
        self._values = {}
        self.setCheckable(True)

    def _get_collapsed(self):
        return self._values.get("collapsed", False)

    def _set_collapsed(self, collapsed):
        self._values["collapsed"] = bool(collapsed)
        for child in self.findChildren(QWidget, options=Qt.FindDirectChildrenOnly):
            child.setVisible(not collapsed)
        if collapsed:
            self.setFixedHeight(self.HEADER)
        else:
            self.setMinimumHeight(0)
            self.setMaximumHeight(16777215)
        self.contentsCollapsed.emit(bool(collapsed))

    collapsed = Property(bool, _get_collapsed, _set_collapsed)
    collapsedHeight = _value("collapsedHeight", 14, int)
    flat = _value("flat", False, bool)
    contentsLineWidth = _value("contentsLineWidth", 1, int)
    contentsMidLineWidth = _value("contentsMidLineWidth", 0, int)

    def finish_loading(self) -> None:
        """What CTK does as children arrive: contents below the header, hidden while collapsed."""
        if self.layout() is not None:
            margins = self.layout().contentsMargins()
            self.layout().setContentsMargins(margins.left(), self.HEADER + 6, margins.right(), margins.bottom())
        self._set_collapsed(self.collapsed)

    def sizeHint(self):
        hint = super().sizeHint()
        if self.layout() is not None and not self.collapsed:
            hint.setHeight(self.layout().sizeHint().height())
        else:
            hint.setHeight(self.HEADER)
        return hint

    def minimumSizeHint(self):
        return self.sizeHint() if self.collapsed else super().minimumSizeHint()

    def paintEvent(self, event):
        painter = QPainter(self)
        option = QStyleOptionButton()
        option.initFrom(self)
        option.rect = QRect(0, 0, self.width(), self.HEADER)
        option.text = ("\u25b8 " if self.collapsed else "\u25be ") + self.text()
        self.style().drawControl(QStyle.CE_PushButton, option, painter, self)
        if not self.collapsed:
            painter.setPen(self.palette().color(QPalette.Mid))
            painter.drawRect(0, self.HEADER, self.width() - 1, self.height() - self.HEADER - 1)


class ctkPathLineEdit(QWidget):
    """``filters`` is a Qt flags property (ctkPathLineEdit::Filters) in CTK; PySide6 cannot declare
    one, so the test checks the .ui's flag names against :attr:`Filter` itself."""

    @QFlag
    class Filter(enum.IntFlag):  # CTK's values
        Dirs = 0x001
        Files = 0x002
        Drives = 0x004
        NoSymLinks = 0x008
        AllEntries = 0x007
        TypeMask = 0x00F
        Readable = 0x010
        Writable = 0x020
        Executable = 0x040
        PermissionMask = 0x070
        Modified = 0x080
        Hidden = 0x100
        System = 0x200
        AccessMask = 0x3F0
        AllDirs = 0x400
        CaseSensitive = 0x800
        NoDotAndDotDot = 0x1000
        NoDot = 0x2000
        NoDotDot = 0x4000

    validInputChanged = Signal(bool)
    currentPathChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._values = {}
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.lineEdit = QLineEdit(self)
        button = QToolButton(self)
        button.setText("...")
        layout.addWidget(self.lineEdit)
        layout.addWidget(button)

    label = _value("label", "", str)
    filters = _value("filters", 0x1017, int)
    currentPath = _value("currentPath", "", str)
    settingKey = _value("settingKey", "", str)
    showBrowseButton = _value("showBrowseButton", True, bool)
    showHistoryButton = _value("showHistoryButton", True, bool)
    minimumContentsLength = _value("minimumContentsLength", 0, int)
    nameFilters = _value("nameFilters", [], "QStringList")

    @Slot(str)
    def setCurrentPath(self, path):
        self._values["currentPath"] = path
        self.lineEdit.setText(path)
        self.currentPathChanged.emit(path)

    @Slot()
    def browse(self):
        pass


class ctkSliderWidget(QWidget):
    valueChanged = Signal(float)
    valueIsChanging = Signal(float)
    decimalsChanged = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._values = {}
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.slider = QSlider(Qt.Horizontal, self)
        self.slider.setRange(0, 255)
        self.spinBox = QDoubleSpinBox(self)
        self.spinBox.setRange(0.0, 1.0)
        self.spinBox.setDecimals(3)
        layout.addWidget(self.slider)
        layout.addWidget(self.spinBox)

    decimals = _value("decimals", 2, int)
    singleStep = _value("singleStep", 1.0, float)
    pageStep = _value("pageStep", 10.0, float)
    minimum = _value("minimum", 0.0, float)
    maximum = _value("maximum", 99.0, float)
    prefix = _value("prefix", "", str)
    suffix = _value("suffix", "", str)
    tickInterval = _value("tickInterval", 0.0, float)
    tracking = _value("tracking", True, bool)
    spinBoxVisible = _value("spinBoxVisible", True, bool)
    popupSlider = _value("popupSlider", False, bool)
    invertedAppearance = _value("invertedAppearance", False, bool)
    invertedControls = _value("invertedControls", False, bool)

    def _get_value(self):
        return self._values.get("value", 0.0)

    @Slot(float)
    def setValue(self, value):
        self._values["value"] = float(value)
        self.slider.setValue(round(float(value) * 255))
        self.spinBox.setValue(float(value))
        self.valueChanged.emit(float(value))

    value = Property(float, _get_value, setValue)

    @Slot()
    def reset(self):
        self.setValue(0.0)


STANDINS = (qMRMLWidget, qMRMLNodeComboBox, ctkCollapsibleButton, ctkPathLineEdit, ctkSliderWidget)


def application() -> QApplication:
    return QApplication.instance() or QApplication([])


def load_panel(ui_file: Path = UI_FILE) -> Tuple[QWidget, List[str]]:
    """The panel built from ``ui_file`` by QUiLoader, and Qt's warnings while building it."""
    application()
    messages: List[str] = []
    previous = qInstallMessageHandler(lambda kind, context, text: messages.append(text))
    try:
        loader = QUiLoader()
        for widget_class in STANDINS:
            loader.registerCustomWidget(widget_class)
        panel = loader.load(str(ui_file))
        if panel is None:
            messages.append(f"QUiLoader could not load {ui_file}: {loader.errorString()}")
        else:
            for button in panel.findChildren(ctkCollapsibleButton):
                button.finish_loading()
    finally:
        qInstallMessageHandler(previous)
    return panel, messages
