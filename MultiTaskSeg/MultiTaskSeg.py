"""MultiTaskSeg: one multi-task triplanar CNN segments brain tissues (T1 MRI), the pectoral
muscle (breast MRI) and the coronary arteries (cardiac CTA) in 3D Slicer.

A thin Qt shell over ``MultiTaskSegLib.slicer``: the logic (MRML, no Qt) runs the network in a
worker process it starts, and the panel polls it from a QTimer, so Slicer stays responsive and a
crash of the network cannot take the scene down. Slicer's own process never imports torch: the
module loads without it and the panel offers to install it.
"""

from __future__ import annotations

import logging
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

from MultiTaskSegLib.engine.errors import MultiTaskSegError
from MultiTaskSegLib.engine.labelmap_rule import nearest_level_threshold
from MultiTaskSegLib.slicer import dependencies, panel_support
from MultiTaskSegLib.slicer.logic import SegmentationLogic
from MultiTaskSegLib.slicer.node_conversion import has_non_labelmap_source
from MultiTaskSegLib.slicer.runs import ModelDescription

POLL_INTERVAL_MS = 100
SLIDER_DEBOUNCE_MS = 30
MODEL_PATH_DEBOUNCE_MS = 600  # read the model once typing pauses, not at every keystroke
IDLE_CHECK_MS = 60 * 1000  # how often an idle worker process is looked for (the logic stops it after 10 min)
# Probabilities are stored in steps of 1/255, and trained thresholds sit near 1 (the shipped model's:
# 248/255, 254/255). Two decimals showed 254/255 as 1.00 and applied 1.00 as soon as any slider
# moved; three keep every level apart, and reading a slider snaps back to its level.
SLIDER_DECIMALS = 3
SLIDER_STEP = 1.0 / 255
SAMPLES = {"loadBrainSampleButton": "MRHead", "loadCardiacSampleButton": "CTACardio"}


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
The network runs in a separate process; Segment turns into Cancel meanwhile.
"""
        self.parent.acknowledgementText = """
Implements the multi-task triplanar CNN of P. Moeskops, J.M. Wolterink, B.H.M. van der Velden,
K.G.A. Gilhuijs, T. Leiner, M.A. Viergever, I. Isgum: "Deep learning for multi-task medical image
segmentation in multiple modalities", MICCAI 2016, Lecture Notes in Computer Science vol. 9901,
pp. 478-486 (arXiv:1704.03379).
"""


@parameterNodeWrapper
class MultiTaskSegParameterNode:
    """
    inputVolume - the volume to segment.
    outputSegmentation - None: a new segmentation; else one whose other segments are kept.
    modelPath - a model bundle file; empty: the model shipped with the extension.
    device - "auto", "cpu", "cuda" or "cuda:N".
    replaceExisting - replace segments of the output that have our segments' names.
    useStandardNames - name segments by their terminology meaning instead of the model's names.
    showIn3D - show the segments as surfaces in 3D.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelPath: str = ""
    device: str = "auto"
    replaceExisting: bool = False
    useStandardNames: bool = False
    showIn3D: bool = False


class MultiTaskSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. ``logicFactory(log)`` builds the logic; tests may replace it."""

    logicFactory = None  # callable taking the log callback, returning a MultiTaskSegLogic; None: the real one

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None  # the running segmentation, polled by the timer
        self._runContext: Dict = {}
        self._describeRequest = None  # PyTorch, devices and the model's classes, asked of the worker
        self._environment: Optional[Dict] = None
        self._classCheckBoxes: Dict[str, qt.QCheckBox] = {}
        self._thresholdSliders: Dict[int, object] = {}
        self._slidersNode = None  # the segmentation the sliders belong to

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MultiTaskSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = (self.logicFactory or (lambda log: MultiTaskSegLogic(log=log)))(self._appendLog)

        self._pollTimer = self._timer(POLL_INTERVAL_MS, self._poll, singleShot=False)
        self._sliderTimer = self._timer(SLIDER_DEBOUNCE_MS, self._applySliderThresholds)
        self._modelPathTimer = self._timer(MODEL_PATH_DEBOUNCE_MS, self._describeModel)
        self._idleTimer = self._timer(IDLE_CHECK_MS, self._releaseIdleWorker, singleShot=False)
        self._idleTimer.start()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.reinstallTorchButton.connect("clicked(bool)", self.onReinstallTorch)
        self.ui.exportProbabilitiesButton.connect("clicked(bool)", self.onExportProbabilities)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.showIn3DCheckBox.connect("clicked(bool)", self.onShowIn3DClicked)  # the user's click only
        for buttonName, sampleName in SAMPLES.items():
            getattr(self.ui, buttonName).connect("clicked(bool)", lambda checked, name=sampleName: self.onLoadSample(name))
        # The threshold sliders follow the parameter node (its ModifiedEvent), never the selector's
        # signal: slots run in connection order, and the parameter node may not hold the new node yet.

        self.ui.progressBar.hide()
        self.initializeParameterNode()
        self._refreshDependencies()

    def _timer(self, intervalMs: int, slot, singleShot: bool = True):
        timer = qt.QTimer()
        timer.setInterval(intervalMs)
        timer.setSingleShot(singleShot)
        timer.connect("timeout()", slot)
        return timer

    def _releaseIdleWorker(self) -> None:
        if self._run is None and self._describeRequest is None:
            self.logic.release_idle_worker()

    def cleanup(self) -> None:
        for name in ("_pollTimer", "_idleTimer", "_sliderTimer", "_modelPathTimer"):
            if hasattr(self, name):  # absent when setup() failed half-way
                getattr(self, name).stop()
        if self.logic is not None:
            self.logic.shutdown()  # kills the worker process
        self.removeObservers()

    def onReload(self) -> None:
        """Reload the engine and the logic with the module file, not only the module file."""
        self.cleanup()
        panel_support.forget_package_modules("MultiTaskSegLib")
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:
            self._run.cancel()  # the scene it would write into is going away
            self._run = None
            self._setRunning(False)
            self.ui.statusLabel.text = "Cancelled: the scene was closed."
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
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(panel_support.parameter_widgets(self.ui))
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """The widgets the wrapper does not bind (device, model path) and the sliders follow the node."""
        parameters = self._parameterNode
        if parameters is None:
            return
        if self.ui.modelPathLineEdit.currentPath != parameters.modelPath:
            self.ui.modelPathLineEdit.currentPath = parameters.modelPath
        index = self.ui.deviceComboBox.findData(parameters.device)
        if index >= 0 and index != self.ui.deviceComboBox.currentIndex:
            self.ui.deviceComboBox.currentIndex = index
        if parameters.outputSegmentation is not self._slidersNode:
            self._rebuildThresholdSliders()
        self._updateButtons()

    # ---- PyTorch, devices, model ---------------------------------------------------------

    def _refreshDependencies(self) -> None:
        problems = dependencies.describe_problems()
        self.ui.dependenciesLabel.visible = bool(problems)
        self.ui.installDependenciesButton.visible = bool(problems)
        self.ui.dependenciesLabel.text = problems
        if problems:
            self.ui.environmentCollapsibleButton.collapsed = False
            self.ui.environmentLabel.text = "Install the missing packages to segment."
            self._updateButtons()
            return
        self._describeModel()

    def _describeModel(self) -> None:
        """Ask the worker (started here if needed, which also pays its start-up before the first
        Segment) for PyTorch, the devices and the model's classes; the timer collects the answer."""
        path = self._model()
        if path and not qt.QFileInfo(path).isFile():
            self.ui.structuresHintLabel.text = f"No model file at {path}: choose a .safetensors bundle."
            return
        self.ui.structuresHintLabel.text = "Reading the model..."
        with slicer.util.tryWithErrorDisplay("Could not start the segmentation process.", waitCursor=False):
            self._describeRequest = self.logic.request_description(path)
            self._pollTimer.start()

    def _finishDescribe(self, request) -> None:
        if request.error is not None:  # the worker cannot run: PyTorch missing, broken or too old
            self.ui.environmentCollapsibleButton.collapsed = False
            self.ui.environmentLabel.text = str(request.error)
            self.ui.structuresHintLabel.text = "PyTorch is needed to read the model: see PyTorch and devices."
            self._fillStructures(None)
            return
        self._environment = request.answer
        self.ui.environmentLabel.text = panel_support.environment_summary(request.answer)
        self._fillDevices()
        try:
            description = self.logic.model_description(self._model(), answer=request.answer)
        except MultiTaskSegError as error:  # the model file: corrupt, not a bundle, ...
            self._fillStructures(None)
            self.ui.structuresHintLabel.text = str(error)
            return
        self._fillStructures(description)

    def onInstallDependencies(self) -> None:
        if not slicer.util.confirmOkCancelDisplay(dependencies.describe_missing()):
            return
        with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
            dependencies.install_missing()
        self._refreshDependencies()

    def onReinstallTorch(self) -> None:
        if not slicer.util.confirmOkCancelDisplay(f"Uninstall PyTorch and install {dependencies.torch_build_promise()}?"):
            return
        self.logic.shutdown()  # the worker holds torch's files open (Windows cannot replace them then)
        with slicer.util.tryWithErrorDisplay("Reinstalling PyTorch failed.", waitCursor=True):
            dependencies.install_torch(reinstall=True)
        # A new worker imports the new torch: Slicer's own process never imported it, no restart needed.
        self._refreshDependencies()

    def _fillDevices(self) -> None:
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for label, key in panel_support.device_choices(self._environment):
            combo.addItem(label, key)
        combo.setCurrentIndex(max(combo.findData(self._parameterNode.device if self._parameterNode else "auto"), 0))
        combo.blockSignals(wasBlocked)

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onModelPathChanged(self, path: str) -> None:
        if self._parameterNode and self._parameterNode.modelPath != path:
            self._parameterNode.modelPath = path
        self._modelPathTimer.start()  # restarts while the user types

    def _model(self) -> Optional[str]:
        """The model path chosen, or None for the shipped default."""
        if self._parameterNode is None or not self._parameterNode.modelPath:
            return None
        return self._parameterNode.modelPath

    def _fillStructures(self, description: Optional[ModelDescription]) -> None:
        """One group box per task, one check box per class, from the model's metadata."""
        layout = self.ui.structuresContainer.layout()
        while layout.count():
            layout.takeAt(0).widget().deleteLater()
        self._classCheckBoxes = {}
        if description is not None:
            self.ui.structuresHintLabel.text = "Tick the structures to segment, grouped by task."
            for title, rows in panel_support.structure_groups(description):
                box = qt.QGroupBox(title)
                boxLayout = qt.QVBoxLayout(box)
                for name, toolTip in rows:
                    checkBox = qt.QCheckBox(name)
                    checkBox.checked = True
                    checkBox.toolTip = toolTip
                    checkBox.connect("toggled(bool)", lambda checked: self._updateButtons())
                    boxLayout.addWidget(checkBox)
                    self._classCheckBoxes[name] = checkBox
                layout.addWidget(box)
        self._updateButtons()

    def _selectedClasses(self):
        return [name for name, checkBox in self._classCheckBoxes.items() if checkBox.checked]

    def _updateButtons(self, caller=None, event=None) -> None:
        if self._run is not None:
            return  # while running the button is Cancel, always enabled
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self._selectedClasses())
        self.ui.segmentButton.enabled = ready
        self.ui.segmentButton.toolTip = "Run the network." if ready else "Select an input volume and at least one structure."

    def onLoadSample(self, sampleName: str) -> None:
        with slicer.util.tryWithErrorDisplay(f"Could not load the sample {sampleName}.", waitCursor=True):
            import SampleData

            volumeNode = SampleData.downloadSample(sampleName)
            if self._parameterNode and volumeNode is not None:
                self._parameterNode.inputVolume = volumeNode

    # ---- running -----------------------------------------------------------------------

    def onSegmentButton(self) -> None:
        if self._run is not None:
            self._run.cancel()  # kills the worker at once; the next run starts a new one
            self._run = None
            self._setRunning(False)
            self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
            return
        parameters = self._parameterNode
        classes = self._selectedClasses()
        with slicer.util.tryWithErrorDisplay("Cannot start the segmentation.", waitCursor=True):
            names = self.logic.expected_segment_names(self._model(), classes, parameters.useStandardNames)
            clashes = self.logic.existing_segment_names(parameters.outputSegmentation, names)
            if clashes and not parameters.replaceExisting:
                if not slicer.util.confirmOkCancelDisplay(
                    f"The output segmentation has segments named {', '.join(clashes)}. Replace them?"
                ):
                    return
                parameters.replaceExisting = True
            convert = has_non_labelmap_source(parameters.outputSegmentation)
            if convert and not slicer.util.confirmOkCancelDisplay(
                "The output segmentation stores its segments as surfaces. Adding these segments converts "
                "them to labelmaps. Continue?"
            ):
                return
            self._runContext = {
                "volumeNode": parameters.inputVolume,
                "segmentationNode": parameters.outputSegmentation,
                "replace": parameters.replaceExisting,
                "convert": convert,
                "standardNames": parameters.useStandardNames,
            }
            self._run = self.logic.segmentation_run(parameters.inputVolume, classes, self._model(), parameters.device)
            self._run.start()
            self._setRunning(True)

    def _setRunning(self, running: bool) -> None:
        self.ui.segmentButton.text = "Cancel" if running else "Segment"
        self.ui.segmentButton.enabled = True
        for widget in (self.ui.inputsCollapsibleButton, self.ui.structuresCollapsibleButton,
                       self.ui.outputsCollapsibleButton, self.ui.thresholdsCollapsibleButton,
                       self.ui.environmentCollapsibleButton):
            widget.enabled = not running
        self.ui.progressBar.visible = running
        self.ui.progressBar.value = 0
        if running:
            self.ui.statusLabel.text = "Starting..."
            self._pollTimer.start()
        else:
            self._updateButtons()

    def _poll(self) -> None:
        """Main thread, every POLL_INTERVAL_MS: read the worker's news; MRML changes only here."""
        request = self._describeRequest
        if request is not None:
            request.poll()
            if request.finished:
                self._describeRequest = None
                self._finishDescribe(request)
        run = self._run
        if run is not None:
            for fraction, stage in run.poll():
                self.ui.progressBar.value = int(fraction * 1000)
                self.ui.progressBar.format = f"{stage}  %p%"
                self.ui.statusLabel.text = stage
            if run.finished:
                self._run = None
                self._setRunning(False)
                self._finishRun(run)
        if self._run is None and self._describeRequest is None:
            self._pollTimer.stop()

    def _finishRun(self, run) -> None:
        if run.error is not None:
            self.ui.statusLabel.text = "Failed; the scene is unchanged."
            error = run.error
            message = str(error) if isinstance(error, MultiTaskSegError) else f"Unexpected error: {error}"
            slicer.util.errorDisplay(message, detailedText=getattr(error, "details", "") or None)
            return
        with slicer.util.tryWithErrorDisplay("Could not create the segments.", waitCursor=True):
            context = self._runContext
            segmentationNode = self.logic.apply_result(
                context["volumeNode"], run.maps, context["segmentationNode"], replace_existing=context["replace"],
                convert_to_labelmap=context["convert"], standard_names=context["standardNames"], device=run.device)
            parameters = self._parameterNode or self.logic.getParameterNode()  # the user may have left the module
            parameters.outputSegmentation = segmentationNode
            self._rebuildThresholdSliders()  # same node as before, new result
            slicer.util.setSliceViewerLayers(background=context["volumeNode"], fit=True)
            if parameters.showIn3D:
                self.logic.show_in_3d(segmentationNode, True)  # a run never removes the user's surfaces
            self.ui.statusLabel.text = f"Done: {segmentationNode.GetName()} ({run.device})."

    def _appendLog(self, line: str) -> None:
        if hasattr(self, "ui"):
            self.ui.logTextEdit.appendPlainText(line)
        logging.debug("MultiTaskSeg worker: %s", line)

    def onShowIn3DClicked(self, show: bool) -> None:
        if self._parameterNode is not None:
            self.logic.show_in_3d(self._parameterNode.outputSegmentation, show)

    # ---- thresholds and export ----------------------------------------------------------

    def _clearThresholdSliders(self) -> None:
        layout = self.ui.thresholdsContainer.layout()
        while layout.count():
            item = layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self._thresholdSliders = {}
        self._slidersNode = None

    def _rebuildThresholdSliders(self) -> None:
        self._clearThresholdSliders()
        segmentationNode = self._parameterNode.outputSegmentation if self._parameterNode else None
        self._slidersNode = segmentationNode
        rows = panel_support.threshold_rows(self.logic, segmentationNode)
        self.ui.exportProbabilitiesButton.enabled = self.logic.has_result(segmentationNode)
        import ctk

        for index, label, threshold in rows:
            slider = ctk.ctkSliderWidget()
            slider.decimals = SLIDER_DECIMALS  # before the step and value, which it rounds
            slider.minimum, slider.maximum, slider.singleStep = 0.0, 1.0, SLIDER_STEP
            slider.value = threshold
            slider.toolTip = "Probability above which a voxel belongs to this structure."
            slider.connect("valueChanged(double)", lambda value: self._sliderTimer.start())
            self.ui.thresholdsContainer.layout().addRow(label, slider)
            self._thresholdSliders[index] = slider

    def _applySliderThresholds(self) -> None:
        segmentationNode = self._slidersNode  # the node these sliders were made for
        if not self.logic.has_result(segmentationNode):
            return
        with slicer.util.tryWithErrorDisplay("Could not update the segments.", waitCursor=False):
            thresholds = {index: nearest_level_threshold(slider.value)
                          for index, slider in self._thresholdSliders.items()}
            self.logic.update_thresholds(segmentationNode, thresholds)

    def onExportProbabilities(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not export the probability maps.", waitCursor=True):
            nodes = self.logic.export_probability_volumes(self._slidersNode)
            self.ui.statusLabel.text = f"Exported {len(nodes)} probability volume(s)."


class MultiTaskSegLogic(SegmentationLogic, ScriptedLoadableModuleLogic):
    """The MRML logic (MultiTaskSegLib.slicer.logic) plus Slicer's parameter node handling.

    From Slicer's Python console::

        logic = slicer.util.getModuleLogic("MultiTaskSeg")
        segmentationNode = logic.segment(getNode("T1"), device="auto")
        logic.update_thresholds(segmentationNode, {"pectoral muscle": 0.7})
    """

    def __init__(self, segmenter_factory=None, log=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationLogic.__init__(self, segmenter_factory, log=log)

    def getParameterNode(self):
        return MultiTaskSegParameterNode(super().getParameterNode())


class MultiTaskSegTest(ScriptedLoadableModuleTest):
    """The whole flow on a synthetic volume through the worker process: logic, thresholds, panel,
    Cancel and Close Scene. Skipped, with a message, where PyTorch is not installed (extension
    build machines)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        reason = self._missingDependencies()
        if reason:
            self.delayDisplay(f"MultiTaskSeg self-test skipped: {reason}")
            return
        for test in (self.test_LogicFlow, self.test_WidgetRunCancelAndCloseScene):
            self.setUp()
            test()

    def _missingDependencies(self) -> str:
        problems = dependencies.describe_problems()
        return f"{problems} Install PyTorch to run it." if problems else ""

    def _requireDependencies(self):
        reason = self._missingDependencies()
        if reason:
            self.skipTest(reason)

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
        self._requireDependencies()
        self.delayDisplay("Segmenting a synthetic volume in the worker process")
        volumeNode = self._syntheticVolume()
        logic = MultiTaskSegLogic()
        try:
            model = self._model()
            segmentationNode = logic.segment(volumeNode, model=model, device="cpu")
            description = logic.model_description(model)
            expected = [info.name for info in description.classes if info.index != 0]
            segmentation = segmentationNode.GetSegmentation()
            names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
            self.assertEqual(names, expected)

            self.delayDisplay("Moving the thresholds (no network run)")
            thresholded = list(logic.current_thresholds(segmentationNode))
            self.assertTrue(thresholded, "the model has thresholded classes")
            name = description.classes[thresholded[0]].name
            logic.update_thresholds(segmentationNode, {index: 1.0 for index in thresholded})
            strict = self._voxelCount(segmentationNode, name, volumeNode)
            logic.update_thresholds(segmentationNode, {index: 0.0 for index in thresholded})
            loose = self._voxelCount(segmentationNode, name, volumeNode)
            self.assertGreaterEqual(loose, strict)
            total = sum(self._voxelCount(segmentationNode, description.classes[i].name, volumeNode) for i in thresholded)
            self.assertEqual(total, volumeNode.GetImageData().GetNumberOfPoints())  # threshold 0: every voxel
        finally:
            logic.shutdown()
        self.delayDisplay("Logic flow passed")

    def test_WidgetRunCancelAndCloseScene(self):
        self._requireDependencies()
        self.delayDisplay("Running through the panel")
        volumeNode = self._syntheticVolume()
        slicer.util.selectModule("MultiTaskSeg")  # entered: the panel follows Close Scene as a user sees it
        widget = slicer.util.getModuleWidget("MultiTaskSeg")
        model = self._model()
        if model is not None:  # no shipped model: the panel's logic saves the random bundle for its worker
            widget._parameterNode.modelPath = widget.logic.model_file(model)
            widget._modelPathTimer.stop()  # described right here, not again after the typing pause
        widget._describeModel()
        self._waitFor(lambda: widget._describeRequest is None, "the worker described the model")
        widget._parameterNode.inputVolume = volumeNode
        widget._parameterNode.outputSegmentation = None
        widget._parameterNode.device = "cpu"
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()

        widget.ui.segmentButton.click()
        self.assertEqual(widget.ui.segmentButton.text, "Cancel")
        widget.ui.segmentButton.click()  # cancel: the worker is killed at once
        self.assertIsNone(widget._run)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore, "cancel leaves the scene unchanged")

        widget.ui.segmentButton.click()
        self._waitFor(lambda: widget._run is None, "the run finished")
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

        self.delayDisplay("Close Scene: the result is gone, a new node with the same ID gets no sliders")
        oldId = segmentationNode.GetID()
        slicer.mrmlScene.Clear()
        reused = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        self.assertEqual(reused.GetID(), oldId, "Slicer reuses the ID after Close Scene")
        self.assertFalse(widget.logic.has_result(reused))
        widget._parameterNode.outputSegmentation = reused
        self.assertFalse(widget._thresholdSliders)
        self.delayDisplay("Panel flow passed")

    def _waitFor(self, condition, what: str, timeoutSeconds: float = 180) -> None:
        import time

        deadline = time.time() + timeoutSeconds
        while not condition() and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertTrue(condition(), f"timed out waiting until {what}")
