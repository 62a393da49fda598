"""MultiTaskSeg: one multi-task triplanar CNN segments brain tissues (T1 MRI), the pectoral
muscle (breast MRI) and the coronary arteries (cardiac CTA) in 3D Slicer.

Thin Slicer layer: the work is done by ``MultiTaskSegLib`` (engine and MRML logic, no Qt). The
engine needs torch, so it is imported only where used: the module loads without torch and the
panel offers to install it.
"""

from __future__ import annotations

import queue
import threading
import traceback
from typing import Dict, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MultiTaskSegLib.slicer import dependencies
from MultiTaskSegLib.engine.errors import Cancelled, MultiTaskSegError
from MultiTaskSegLib.slicer.logic import MultiTaskSegLogic as EngineLogic
from MultiTaskSegLib.engine.labelmap_rule import nearest_level_threshold

POLL_INTERVAL_MS = 100
SLIDER_DEBOUNCE_MS = 30
# Probabilities are stored in steps of 1/255, and trained thresholds sit near 1 (the shipped model's:
# 248/255, 254/255). Two decimals showed 254/255 as 1.00 and applied 1.00 as soon as any slider
# moved; three keep every level apart, and reading a slider snaps back to its level.
SLIDER_DECIMALS = 3
SLIDER_STEP = 1.0 / 255


#
# MultiTaskSeg
#


class MultiTaskSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MultiTaskSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MultiTaskSeg developers"]
        self.parent.helpText = """
Segments, with one convolutional network trained on three tasks, whichever of them the volume
shows: six brain tissues in T1-weighted brain MRI, the pectoral muscle in breast MRI, and the
coronary arteries in cardiac CT angiography. Pick the input volume and the structures, click
Segment, then move the threshold sliders: the segments follow without running the network again.
The network runs in the background; Segment turns into Cancel meanwhile.
"""
        self.parent.acknowledgementText = """
Implements the multi-task triplanar CNN of P. Moeskops, J.M. Wolterink, B.H.M. van der Velden,
K.G.A. Gilhuijs, T. Leiner, M.A. Viergever, I. Isgum: "Deep learning for multi-task medical image
segmentation in multiple modalities", MICCAI 2016, Lecture Notes in Computer Science vol. 9901,
pp. 478-486 (arXiv:1704.03379).
"""


#
# MultiTaskSegParameterNode
#


@parameterNodeWrapper
class MultiTaskSegParameterNode:
    """
    inputVolume - the volume to segment.
    outputSegmentation - None: a new segmentation; else one whose other segments are kept.
    modelPath - a model bundle file; empty: the model shipped with the extension.
    device - "auto", "cpu" or "cuda".
    replaceExisting - replace segments of the output that have our segments' names.
    showIn3D - show the segments as surfaces in 3D.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelPath: str = ""
    device: str = "auto"
    replaceExisting: bool = False
    showIn3D: bool = False


#
# MultiTaskSegWidget
#


class _NetworkWorker:
    """Runs ``logic.run_network`` in a Python thread; reports through a queue, never touches MRML."""

    def __init__(self, logic, volume, classes, model, device):
        self.messages: "queue.Queue[tuple]" = queue.Queue()
        self._cancelRequested = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(logic, volume, classes, model, device), name="MultiTaskSeg network", daemon=True
        )

    def start(self):
        self._thread.start()

    def cancel(self):
        self._cancelRequested.set()

    def _run(self, logic, volume, classes, model, device):
        try:
            maps = logic.run_network(
                volume,
                classes=classes,
                model=model,
                device=device,
                progress=lambda fraction, stage: self.messages.put(("progress", fraction, stage)),
                cancel=self._cancelRequested.is_set,
            )
            self.messages.put(("done", maps))
        except Cancelled:
            self.messages.put(("cancelled",))
        except Exception as error:  # reported to the user on the main thread
            self.messages.put(("error", error, traceback.format_exc()))


class MultiTaskSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. ``logicFactory`` builds the logic; tests may replace it with a fake."""

    logicFactory = None  # callable returning a MultiTaskSegLogic; None: the real one

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._worker: Optional[_NetworkWorker] = None
        self._runContext: Dict = {}
        self._classCheckBoxes: Dict[str, qt.QCheckBox] = {}
        self._thresholdSliders: Dict[int, object] = {}
        self._shownSegmentation = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MultiTaskSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = (self.logicFactory or MultiTaskSegLogic)()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._pollWorker)
        self._sliderTimer = qt.QTimer()
        self._sliderTimer.setSingleShot(True)
        self._sliderTimer.setInterval(SLIDER_DEBOUNCE_MS)
        self._sliderTimer.connect("timeout()", self._applySliderThresholds)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.exportProbabilitiesButton.connect("clicked(bool)", self.onExportProbabilities)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.showIn3DCheckBox.connect("toggled(bool)", self.onShowIn3DToggled)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._rebuildThresholdSliders)

        self.ui.progressBar.hide()
        self.initializeParameterNode()
        self._refreshDependencies()

    def cleanup(self) -> None:
        self._stopWorker()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self._stopWorker()
        self.setParameterNode(None)
        self._clearThresholdSliders()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ---- parameter node ----------------------------------------------------------------

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[MultiTaskSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelPath
            self._updateButtons()

    # ---- model, structures, devices ----------------------------------------------------

    def _refreshDependencies(self) -> None:
        missing = dependencies.missing_packages()
        self.ui.dependenciesLabel.visible = bool(missing)
        self.ui.installDependenciesButton.visible = bool(missing)
        if missing:
            self.ui.dependenciesLabel.text = f"Missing Python packages: {', '.join(missing)}."
            return
        self._fillDevices()
        self._fillStructures()

    def onInstallDependencies(self) -> None:
        if not slicer.util.confirmOkCancelDisplay(dependencies.describe_missing()):
            return
        with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
            dependencies.install_missing()
        self._refreshDependencies()

    def _fillDevices(self) -> None:
        from MultiTaskSegLib.engine.devices import available_devices

        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        found = available_devices()
        gpu = next((description for key, description in found if key == "cuda"), None)
        combo.addItem(f"Automatic ({gpu or 'CPU: no GPU found'})", "auto")
        for key, description in found:
            combo.addItem(description, key)
        index = combo.findData(self._parameterNode.device if self._parameterNode else "auto")
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(wasBlocked)

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onModelPathChanged(self, path: str) -> None:
        if self._parameterNode:
            self._parameterNode.modelPath = path
        if not dependencies.missing_packages():  # reading a model needs torch
            self._fillStructures()

    def _model(self):
        """The model path chosen, or None for the shipped default."""
        if self._parameterNode is None or not self._parameterNode.modelPath:
            return None
        return self._parameterNode.modelPath

    def _fillStructures(self) -> None:
        """One group box per task, one check box per class, from the model's metadata."""
        layout = self.ui.structuresContainer.layout()
        while layout.count():
            layout.takeAt(0).widget().deleteLater()
        self._classCheckBoxes = {}
        try:
            bundle = self.logic.load_bundle(self._model())
        except MultiTaskSegError as error:
            self.ui.structuresHintLabel.text = str(error)
            self._updateButtons()
            return
        self.ui.structuresHintLabel.text = "Tick the structures to segment, grouped by task."
        classesByName = {info.name: info for info in bundle.classes}
        for task in bundle.tasks:
            box = qt.QGroupBox(f"{task.description} ({task.modality})")
            boxLayout = qt.QVBoxLayout(box)
            for name in task.classes:
                checkBox = qt.QCheckBox(name)
                checkBox.checked = True
                checkBox.toolTip = f"Class {classesByName[name].index}, decided by {classesByName[name].decision}"
                checkBox.connect("toggled(bool)", lambda checked: self._updateButtons())
                boxLayout.addWidget(checkBox)
                self._classCheckBoxes[name] = checkBox
            layout.addWidget(box)
        self._updateButtons()

    def _selectedClasses(self):
        return [name for name, checkBox in self._classCheckBoxes.items() if checkBox.checked]

    def _updateButtons(self, caller=None, event=None) -> None:
        if self._worker is not None:
            return  # while running the button is Cancel, always enabled
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self._selectedClasses())
        self.ui.segmentButton.enabled = ready
        self.ui.segmentButton.toolTip = "Run the network." if ready else "Select an input volume and at least one structure."

    # ---- running -----------------------------------------------------------------------

    def onSegmentButton(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self.ui.statusLabel.text = "Cancelling..."
            return
        parameters = self._parameterNode
        classes = self._selectedClasses()
        with slicer.util.tryWithErrorDisplay("Cannot start the segmentation.", waitCursor=True):
            volume = self.logic.volume_from_node(parameters.inputVolume)
            clashes = self.logic.existing_segment_names(parameters.outputSegmentation, classes)
            if clashes and not parameters.replaceExisting:
                if not slicer.util.confirmOkCancelDisplay(
                    f"The output segmentation has segments named {', '.join(clashes)}. Replace them?"
                ):
                    return
                parameters.replaceExisting = True
            self._runContext = {
                "volumeNode": parameters.inputVolume,
                "segmentationNode": parameters.outputSegmentation,
                "replace": parameters.replaceExisting,
            }
            self._worker = _NetworkWorker(self.logic, volume, classes, self._model(), parameters.device)
            self._worker.start()
            self._setRunning(True)

    def _setRunning(self, running: bool) -> None:
        self.ui.segmentButton.text = "Cancel" if running else "Segment"
        self.ui.segmentButton.enabled = True
        for widget in (self.ui.inputsCollapsibleButton, self.ui.structuresCollapsibleButton, self.ui.outputsCollapsibleButton):
            widget.enabled = not running
        self.ui.progressBar.visible = running
        self.ui.progressBar.value = 0
        if running:
            self.ui.statusLabel.text = "Starting..."
            self._pollTimer.start()
        else:
            self._pollTimer.stop()
            self._updateButtons()

    def _pollWorker(self) -> None:
        """Main thread: take the worker's messages; MRML is changed only here."""
        while self._worker is not None:
            try:
                message = self._worker.messages.get_nowait()
            except queue.Empty:
                return
            kind = message[0]
            if kind == "progress":
                self.ui.progressBar.value = int(message[1] * 1000)
                self.ui.progressBar.format = f"{message[2]}  %p%"
                self.ui.statusLabel.text = message[2]
            else:
                self._worker = None
                self._setRunning(False)
                self._finishRun(kind, message[1:])

    def _finishRun(self, kind: str, payload) -> None:
        if kind == "cancelled":
            self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
        elif kind == "error":
            error, details = payload
            self.ui.statusLabel.text = "Failed."
            message = str(error) if isinstance(error, MultiTaskSegError) else f"Unexpected error: {error}"
            slicer.util.errorDisplay(message, detailedText=details)
        else:
            with slicer.util.tryWithErrorDisplay("Could not create the segments.", waitCursor=True):
                context = self._runContext
                segmentationNode = self.logic.apply_result(
                    context["volumeNode"], payload[0], context["segmentationNode"], replace_existing=context["replace"]
                )
                self._parameterNode.outputSegmentation = segmentationNode
                self._showSegmentation(segmentationNode)
                self.ui.statusLabel.text = f"Done: {segmentationNode.GetName()}."
        self._rebuildThresholdSliders()

    def _stopWorker(self) -> None:
        if self._worker is not None:
            self._worker.cancel()  # the daemon thread ends at its next cancel check
            self._worker = None
        if hasattr(self, "_pollTimer"):
            self._pollTimer.stop()

    def _showSegmentation(self, segmentationNode) -> None:
        volumeNode = self._runContext.get("volumeNode")
        if volumeNode is not None:
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        self.onShowIn3DToggled(self._parameterNode.showIn3D, segmentationNode)

    def onShowIn3DToggled(self, show: bool, segmentationNode=None) -> None:
        segmentationNode = segmentationNode or (self._parameterNode and self._parameterNode.outputSegmentation)
        if segmentationNode is None:
            return
        if show:
            segmentationNode.CreateClosedSurfaceRepresentation()
        else:
            segmentationNode.RemoveClosedSurfaceRepresentation()

    # ---- thresholds and export ----------------------------------------------------------

    def _clearThresholdSliders(self) -> None:
        layout = self.ui.thresholdsContainer.layout()
        while layout.count():
            item = layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self._thresholdSliders = {}

    def _rebuildThresholdSliders(self, *unused) -> None:
        self._clearThresholdSliders()
        segmentationNode = self._parameterNode.outputSegmentation if self._parameterNode else None
        hasResult = self.logic.has_result(segmentationNode)
        self.ui.exportProbabilitiesButton.enabled = hasResult
        if not hasResult:
            return
        import ctk

        maps = self.logic.probability_maps(segmentationNode)
        for index, threshold in self.logic.current_thresholds(segmentationNode).items():
            slider = ctk.ctkSliderWidget()
            slider.decimals = SLIDER_DECIMALS  # before the step and value, which it rounds
            slider.minimum, slider.maximum, slider.singleStep = 0.0, 1.0, SLIDER_STEP
            slider.value = threshold
            slider.toolTip = "Probability above which a voxel belongs to this structure."
            slider.connect("valueChanged(double)", lambda value: self._sliderTimer.start())
            self.ui.thresholdsContainer.layout().addRow(f"{maps.classes[index].name}:", slider)
            self._thresholdSliders[index] = slider

    def _applySliderThresholds(self) -> None:
        segmentationNode = self._parameterNode.outputSegmentation
        with slicer.util.tryWithErrorDisplay("Could not update the segments.", waitCursor=False):
            thresholds = {index: nearest_level_threshold(slider.value)
                          for index, slider in self._thresholdSliders.items()}
            self.logic.update_thresholds(segmentationNode, thresholds)

    def onExportProbabilities(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not export the probability maps.", waitCursor=True):
            nodes = self.logic.export_probability_volumes(self._parameterNode.outputSegmentation)
            self.ui.statusLabel.text = f"Exported {len(nodes)} probability volume(s)."


#
# MultiTaskSegLogic
#


class MultiTaskSegLogic(EngineLogic, ScriptedLoadableModuleLogic):
    """The engine's MRML logic (MultiTaskSegLib.slicer.logic) plus Slicer's parameter node handling.

    From Slicer's Python console::

        logic = slicer.util.getModuleLogic("MultiTaskSeg")
        segmentationNode = logic.segment(getNode("T1"), device="auto")
        logic.update_thresholds(segmentationNode, {"pectoral muscle": 0.7})
    """

    def __init__(self, segmenter_factory=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        EngineLogic.__init__(self, segmenter_factory)

    def getParameterNode(self):
        return MultiTaskSegParameterNode(super().getParameterNode())


#
# MultiTaskSegTest
#


class MultiTaskSegTest(ScriptedLoadableModuleTest):
    """Whole flow on a synthetic volume: logic, threshold update, and the widget's background run."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LogicFlow()
        self.setUp()
        self.test_WidgetBackgroundRun()

    def _syntheticVolume(self):
        import numpy as np

        rng = np.random.default_rng(0)
        z, y, x = np.mgrid[:32, :36, :40]
        ball = ((z - 16) ** 2 + (y - 18) ** 2 + (x - 20) ** 2) < 100
        array = (rng.normal(100.0, 10.0, ball.shape) + 300.0 * ball).astype(np.float32)
        obliqueIjkToRas = np.array([[-0.9, 0, 0, 10], [0, 1.1, 0.2, -5], [0, -0.1, 1.0, 3], [0, 0, 0, 1]])
        return slicer.util.addVolumeFromArray(array, ijkToRAS=obliqueIjkToRas, name="MultiTaskSegTestVolume")

    def _model(self):
        from MultiTaskSegLib.engine.bundle import default_model_path, make_random_bundle

        return None if default_model_path().exists() else make_random_bundle(seed=0)

    def _voxelCount(self, segmentationNode, name, volumeNode):
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name)
        return int((slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0).sum())

    def test_LogicFlow(self):
        self.delayDisplay("Segmenting a synthetic volume")
        volumeNode = self._syntheticVolume()
        logic = MultiTaskSegLogic()
        model = self._model()
        segmentationNode = logic.segment(volumeNode, model=model, device="cpu")
        bundle = logic.load_bundle(model)
        expected = [info.name for info in bundle.classes if info.index != 0]
        segmentation = segmentationNode.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, expected)

        self.delayDisplay("Moving the thresholds")
        thresholded = list(logic.current_thresholds(segmentationNode))
        self.assertTrue(thresholded, "the model has thresholded classes")
        name = bundle.classes[thresholded[0]].name
        logic.update_thresholds(segmentationNode, {index: 1.0 for index in thresholded})
        strict = self._voxelCount(segmentationNode, name, volumeNode)
        logic.update_thresholds(segmentationNode, {index: 0.0 for index in thresholded})
        loose = self._voxelCount(segmentationNode, name, volumeNode)
        self.assertGreaterEqual(loose, strict)
        total = sum(self._voxelCount(segmentationNode, bundle.classes[i].name, volumeNode) for i in thresholded)
        self.assertEqual(total, volumeNode.GetImageData().GetNumberOfPoints())  # threshold 0: every voxel
        self.delayDisplay("Logic flow passed")

    def test_WidgetBackgroundRun(self):
        self.delayDisplay("Running through the panel, in the background")
        volumeNode = self._syntheticVolume()
        widget = slicer.util.getModuleWidget("MultiTaskSeg")
        model = self._model()
        if model is not None:  # no shipped model: hand the random bundle to the panel's logic
            widget.logic.load_bundle = lambda path=None: model
            widget._fillStructures()
        widget._parameterNode.inputVolume = volumeNode
        widget._parameterNode.outputSegmentation = None
        widget._parameterNode.device = "cpu"
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()

        widget.ui.segmentButton.click()
        self.assertEqual(widget.ui.segmentButton.text, "Cancel")
        widget.ui.segmentButton.click()  # cancel
        self._waitForWorker(widget)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore, "cancel leaves the scene unchanged")

        widget.ui.segmentButton.click()
        self._waitForWorker(widget)
        segmentationNode = widget._parameterNode.outputSegmentation
        self.assertIsNotNone(segmentationNode)
        self.assertTrue(widget._thresholdSliders, "one slider per thresholded class")
        thresholds = widget.logic.current_thresholds(segmentationNode)
        for index, slider in widget._thresholdSliders.items():  # shown as applied, to the stored 1/255
            self.assertAlmostEqual(slider.value, thresholds[index], delta=0.5 / 255)
        index, slider = next(iter(widget._thresholdSliders.items()))
        slider.value = 0.0
        widget._applySliderThresholds()
        self.assertEqual(widget.logic.current_thresholds(segmentationNode)[index], 0.0)
        self.delayDisplay("Widget flow passed")

    def _waitForWorker(self, widget, timeoutSeconds=120):
        import time

        deadline = time.time() + timeoutSeconds
        while widget._worker is not None and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertIsNone(widget._worker, "the background run finished")
