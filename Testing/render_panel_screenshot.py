"""Render the MultiTaskSeg panel to Resources/Screenshots/panel.png with a real Qt (PySide6, offscreen).

The panel is built from MultiTaskSeg.ui by QUiLoader, Slicer's and CTK's widgets drawn by the
stand-ins of slicer_qt_standins.py, and filled as after a run on MRHead with the shipped model:
its structures, the threshold sliders of its thresholded classes at the model's thresholds, the
PyTorch found here. It shows the panel's layout and texts, not Slicer's look (no Slicer styles,
no views).

    QT_QPA_PLATFORM=offscreen .venv/bin/python Testing/render_panel_screenshot.py [OUTPUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import slicer_qt_standins as standins  # noqa: E402
from PySide6.QtWidgets import QCheckBox, QComboBox, QFormLayout, QGroupBox, QVBoxLayout, QWidget  # noqa: E402

OUTPUT = ROOT / "Resources" / "Screenshots" / "panel.png"
WIDTH = 420


def fill(panel) -> None:
    import torch

    from MultiTaskSegLib.engine.bundle import default_model_path, read_metadata
    from MultiTaskSegLib.engine.devices import available_devices
    from MultiTaskSegLib.slicer import panel_support
    from MultiTaskSegLib.slicer.runs import ModelDescription

    def child(name):
        return panel.findChild(QWidget, name)

    metadata = read_metadata(default_model_path())
    description = ModelDescription.from_json({"classes": metadata["classes"], "tasks": metadata["tasks"],
                                              "thresholds": {}})
    thresholds = {name: value for name, value in (metadata.get("thresholds") or {}).items()}
    answer = {"torch": torch.__version__, "cuda": torch.version.cuda,
              "devices": [list(device) for device in available_devices()]}

    child("inputVolumeSelector").showText("MRHead")
    child("outputSegmentationSelector").showText("MRHead segmentation")
    child("modelPathLineEdit").lineEdit.setPlaceholderText("(the model shipped with the extension)")
    devices = child("deviceComboBox")
    for label, key in panel_support.device_choices(answer):
        devices.addItem(label, key)
    child("environmentLabel").setText(panel_support.environment_summary(answer))
    for name in ("dependenciesLabel", "installDependenciesButton", "progressBar"):
        child(name).hide()
    child("segmentButton").setEnabled(True)
    child("statusLabel").setText("Done: MRHead segmentation (CPU).")
    child("exportProbabilitiesButton").setEnabled(True)

    structures = child("structuresContainer").layout()
    for title, rows in panel_support.structure_groups(description):
        box = QGroupBox(title)
        layout = QVBoxLayout(box)
        for name, tooltip in rows:
            check = QCheckBox(name)
            check.setChecked(True)
            check.setToolTip(tooltip)
            layout.addWidget(check)
        structures.addWidget(box)
    sliders = child("thresholdsContainer").layout()
    assert isinstance(sliders, QFormLayout)
    for name, value in thresholds.items():
        slider = standins.ctkSliderWidget()
        slider.setValue(value)
        sliders.addRow(f"{name}:", slider)
    for combo in panel.findChildren(QComboBox):
        combo.setMinimumContentsLength(12)


def render(output: Path = OUTPUT) -> Path:
    panel, messages = standins.load_panel()
    if messages:
        print("\n".join(messages), file=sys.stderr)
    fill(panel)
    panel.resize(WIDTH, 100)
    panel.resize(WIDTH, panel.sizeHint().height())
    panel.show()
    standins.application().processEvents()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(output)):
        raise SystemExit(f"could not write {output}")
    return output


if __name__ == "__main__":
    print(render(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT))
