"""What the panel shows and binds, decided without Qt, so it is tested outside Slicer.

The widget in MultiTaskSeg.py turns these into Qt widgets: which widgets bind which parameter,
the PyTorch and device summary, the device choices, the structure check boxes per task, the
threshold sliders of a segmentation, and forgetting the package's modules on Reload.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

PARAMETER_PROPERTY = "SlicerParameterName"


def parameter_widgets(ui) -> Dict[str, Any]:
    """Parameter name -> widget for every widget of ``ui`` (``slicer.util.childWidgetVariables``)
    that has a ``SlicerParameterName`` property: the mapping for ``connectParametersToGui``, which
    returns its tag on every Slicer version (``connectGui`` returns None on 5.4 to 5.8, so its tag
    could never be disconnected)."""
    mapping = {}
    for widget in vars(ui).values():
        name = widget.property(PARAMETER_PROPERTY) if hasattr(widget, "property") else None
        if name:
            mapping[str(name)] = widget
    return mapping


def environment_summary(answer: Dict[str, Any]) -> str:
    """"PyTorch 2.6.0 (CUDA 12.4); devices: CPU (8 threads), GPU 0: ..." from a describe answer."""
    build = f"CUDA {answer['cuda']}" if answer.get("cuda") else "CPU build"
    devices = ", ".join(description for _, description in answer.get("devices", []))
    return f"PyTorch {answer.get('torch', '?')} ({build}); devices: {devices or 'none found'}."


def device_choices(answer: Optional[Dict[str, Any]]) -> List[Tuple[str, str]]:
    """(label, device) for the device combo box: Automatic first, naming what it will pick."""
    devices = [(str(key), str(description)) for key, description in (answer or {}).get("devices", [])]
    gpu = next((description for key, description in devices if key.startswith("cuda")), None)
    return [(f"Automatic ({gpu or 'CPU: no GPU found'})", "auto")] + [(description, key) for key, description in devices]


def structure_groups(description) -> List[Tuple[str, List[Tuple[str, str]]]]:
    """(group title, [(class name, tooltip)]) per task of a ModelDescription."""
    by_name = {info.name: info for info in description.classes}
    groups = []
    for task in description.tasks:
        rows = [(name, f"Class {by_name[name].index}, decided by {by_name[name].decision}") for name in task.classes]
        groups.append((f"{task.description} ({task.modality})", rows))
    return groups


def threshold_rows(logic, segmentationNode) -> List[Tuple[int, str, float]]:
    """(class index, label, threshold) of each slider for ``segmentationNode``: none when the
    logic keeps no result for that very node (another node, one from a closed scene)."""
    if not logic.has_result(segmentationNode):
        return []
    maps = logic.probability_maps(segmentationNode)
    return [(index, f"{maps.classes[index].name}:", threshold)
            for index, threshold in logic.current_thresholds(segmentationNode).items()]


def forget_package_modules(package: str = "MultiTaskSegLib") -> List[str]:
    """Remove ``package`` and its sub-modules from ``sys.modules``, so Slicer's Reload imports the
    engine and the logic afresh with the module file (else Reload and Test runs stale code)."""
    names = [name for name in sys.modules if name == package or name.startswith(package + ".")]
    for name in names:
        del sys.modules[name]
    return names
