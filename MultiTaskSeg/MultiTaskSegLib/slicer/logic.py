"""MRML logic of the Slicer module: a volume node goes in, a segmentation node comes out.

The network runs in a worker process that the logic starts and keeps between runs
(:mod:`.worker`); the logic writes the volume for it, reads the uint8 probability maps back,
keeps them per segmentation node object (:mod:`.result_store`) and makes the nodes here, on the
caller's (main) thread. Slicer's process never imports torch. Imports Slicer's MRML classes,
``vtk`` and numpy (no Qt), so it runs inside Slicer and, with the ``slicer-core`` wheel, in plain
Python tests.

Use from Slicer's Python console::

    from MultiTaskSegLib.logic import MultiTaskSegLogic   # this class, by its documented name
    logic = MultiTaskSegLogic()                            # or slicer.util.getModuleLogic("MultiTaskSeg")
    volumeNode = slicer.util.getNode("MRHead")
    segmentationNode = logic.segment(volumeNode)                 # blocks; default model, all classes
    logic.update_thresholds(segmentationNode, {"Pectoral muscle": 0.7})   # no network re-run
    probabilityNodes = logic.export_probability_volumes(segmentationNode)

The widget runs the two halves of :meth:`SegmentationLogic.segment` separately: a
:meth:`~SegmentationLogic.segmentation_run` it polls from a timer, then
:meth:`~SegmentationLogic.apply_result` with the run's maps.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ..engine.errors import InputError, OutputError
from ..engine.progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress
from . import node_conversion as nodes
from .node_conversion import volume_from_node
from .result_store import ResultStore, SegmentationResult
from .runs import InProcessRun, ModelDescription, SegmentationRun, WorkerRun
from .worker_client import Log, Request, WorkerProcess, error_from_event

Thresholds = Dict[Union[int, str], float]
# Keeping the worker between runs saves its start (Python, torch, engine: ~3 s on CPU, more with CUDA)
# and the model loading at each Segment; after this long unused it gives its memory back.
IDLE_WORKER_SECONDS = 600
SegmenterFactory = Callable[[Any, str], Any]

__all__ = ["SegmentationLogic", "volume_from_node"]


class SegmentationLogic:
    """Segment volume nodes with the multi-task triplanar CNN and keep the result adjustable.

    By default the network runs in a worker process (``python``: the interpreter for it; None:
    Slicer's PythonSlicer, or this one outside Slicer). ``segmenter_factory(bundle, device)``
    instead builds an object whose ``predict()`` runs in this process: tests and benchmarks pass
    fakes. ``log`` receives the worker's output lines.
    """

    def __init__(self, segmenter_factory: Optional[SegmenterFactory] = None, python: Optional[str] = None,
                 log: Optional[Log] = None):
        self._segmenter_factory = segmenter_factory
        self.worker = WorkerProcess(python=python, log=log) if segmenter_factory is None else None
        self._segmenters: Dict[Any, Any] = {}
        self._descriptions: Dict[Any, ModelDescription] = {}
        self._saved_bundles: Dict[int, str] = {}
        self._bundle_folder: Optional[str] = None
        self.results = ResultStore()

    def release_idle_worker(self, seconds: float = IDLE_WORKER_SECONDS) -> bool:
        """Stop the worker when it has served nothing for ``seconds`` (the panel calls this now and
        then): an idle worker holds torch, the model and a few hundred MB. True when it was stopped."""
        return self.worker is not None and self.worker.stop_if_idle(seconds)

    def shutdown(self) -> None:
        """Stop the worker process and forget every result (module cleanup, reload)."""
        if self.worker is not None:
            self.worker.stop()
        self.results.clear()
        if self._bundle_folder is not None:
            import shutil

            shutil.rmtree(self._bundle_folder, ignore_errors=True)
            self._bundle_folder, self._saved_bundles = None, {}

    # ---- model -------------------------------------------------------------------------

    def load_bundle(self, model=None):
        """The engine's ModelBundle (imports torch: for in-process use; the worker loads its own)."""
        from ..engine.bundle import load_bundle

        return model if hasattr(model, "classes") and hasattr(model, "save") else load_bundle(model)

    def model_file(self, model) -> Optional[str]:
        """A file the worker can read for ``model``: None (the shipped default), a path, or an
        in-memory bundle saved once to a temporary file (removed by :meth:`shutdown`)."""
        if model is None or model == "":
            return None
        if isinstance(model, (str, os.PathLike)):
            return os.path.abspath(model)
        if id(model) not in self._saved_bundles:  # an in-memory bundle (e.g. the self-test's random one)
            self._bundle_folder = self._bundle_folder or tempfile.mkdtemp(prefix="MultiTaskSeg-models-")
            path = os.path.join(self._bundle_folder, f"bundle-{len(self._saved_bundles)}.safetensors")
            self._saved_bundles[id(model)] = str(model.save(path))
        return self._saved_bundles[id(model)]

    def request_description(self, model=None) -> Request:
        """Ask the worker for torch's version, the devices and the model's classes (non-blocking);
        ``answer`` holds them once the request is finished. Starting the worker here also pays its
        start-up before the first Segment."""
        return self.worker.send("describe", model=self.model_file(model))

    def model_description(self, model=None, answer: Optional[Dict[str, Any]] = None) -> ModelDescription:
        """Classes, tasks and default thresholds of ``model`` (blocks on the worker unless ``answer``)."""
        key = self.model_file(model) if self.worker is not None else id(model)
        stamp = os.stat(key).st_mtime_ns if isinstance(key, str) and os.path.exists(key) else None
        if (key, stamp) not in self._descriptions:
            if self.worker is None:
                description = ModelDescription.from_bundle(self.load_bundle(model))
            else:
                answer = answer or self.request_description(model).wait()
                if "model_error" in answer:
                    raise error_from_event(answer["model_error"])
                description = ModelDescription.from_json(answer["model"])
            self._descriptions[(key, stamp)] = description
        return self._descriptions[(key, stamp)]

    def _in_process_segmenter(self, model, device: str):
        bundle = self.load_bundle(model)
        key = (id(bundle), device)
        if key not in self._segmenters:
            self._segmenters[key] = self._segmenter_factory(bundle, device)
        return self._segmenters[key]

    # ---- the two halves of segment() ---------------------------------------------------

    volume_from_node = staticmethod(volume_from_node)

    def segmentation_run(self, volumeNode, classes: Optional[Sequence[str]] = None, model=None,
                         device: str = "auto") -> SegmentationRun:
        """A run of the network on ``volumeNode``, not started: ``run.start()``, then ``run.poll()``
        until ``run.finished`` (or ``run.wait()``); ``run.cancel()`` stops it at once."""
        volume = volume_from_node(volumeNode, copy=self.worker is None)  # the worker gets a file copy
        if self.worker is None:
            return InProcessRun(self._in_process_segmenter(model, device), volume, classes)
        return WorkerRun(self.worker, volume, classes, self.model_file(model), device,
                         lambda: self.model_description(model))

    def check_output(self, segmentationNode, names: Sequence[str], replace_existing: bool = False,
                     convert_to_labelmap: bool = False) -> None:
        """Raise OutputError when segments would be replaced, or a closed-surface source converted,
        without the caller's consent. Called before the run and again before the nodes change."""
        if segmentationNode is None:
            return
        clashes = self.existing_segment_names(segmentationNode, names)
        if clashes and not replace_existing:
            raise OutputError(
                f"Segmentation '{segmentationNode.GetName()}' has segments named {', '.join(clashes)} already: "
                "choose another output segmentation, or allow replacing them (replace_existing=True).")
        if nodes.has_non_labelmap_source(segmentationNode) and not convert_to_labelmap:
            raise OutputError(
                f"Segmentation '{segmentationNode.GetName()}' stores its segments as surfaces: adding ours "
                "converts them to labelmaps. Choose another output segmentation, or allow the conversion "
                "(convert_to_labelmap=True).")

    def apply_result(self, volumeNode, maps, segmentationNode=None, thresholds: Optional[Thresholds] = None,
                     replace_existing: bool = False, convert_to_labelmap: bool = False,
                     standard_names: bool = False, device: str = ""):
        """Put the labelmap of ``maps`` into a segmentation node (main thread; MRML).

        One segment per selected class, sharing one labelmap whose label value is the class
        index, so a threshold change is a single array copy. Everything that can fail is
        checked before the scene changes.
        """
        scene = volumeNode.GetScene() if volumeNode is not None else None
        if scene is None:
            raise InputError("The input volume is not in a scene (was it removed, or the scene closed, "
                             "during the run?): load it again and segment it again.")
        if segmentationNode is not None and segmentationNode.GetScene() is not scene:
            raise OutputError("The output segmentation was removed during the run: choose another output "
                              "(or 'Create new segmentation') and segment again.")
        classInfos = {info.index: info for info in maps.classes}
        segmentClasses = list(maps.selected)  # never background: label 0 means "no segment"
        names = {index: nodes.segment_name(classInfos[index], standard_names) for index in segmentClasses}
        self.check_output(segmentationNode, list(names.values()), replace_existing, convert_to_labelmap)
        mergedThresholds = _by_class_index(maps, thresholds)
        labelArray = np.ascontiguousarray(maps.labelmap(mergedThresholds or None), dtype=np.uint8)
        if labelArray.shape != tuple(volumeNode.GetImageData().GetDimensions())[::-1]:
            raise InputError(f"Volume '{volumeNode.GetName()}' changed size during the run: segment it again.")

        ijkToRas = nodes.ijk_to_ras_matrix(volumeNode)
        sharedLabelmap = nodes.make_labelmap(labelArray, ijkToRas)
        isNewNode = segmentationNode is None
        if isNewNode:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volumeNode.GetName()} segmentation"))
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segmentation = segmentationNode.GetSegmentation()
        if isNewNode or segmentation.GetNumberOfSegments() == 0:
            # An existing node with segments keeps the geometry its segments were drawn on.
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        wasModified = segmentationNode.StartModify()
        try:
            if segmentation.GetNumberOfSegments() == 0 or not segmentation.IsSourceRepresentationImageData():
                nodes.use_labelmap_as_source(segmentation)
            if replace_existing:
                for name in names.values():
                    nodes.remove_segments_named(segmentation, name)
            segmentIds = {index: nodes.add_segment(segmentation, classInfos[index], sharedLabelmap, names[index])
                          for index in segmentClasses}
        finally:
            segmentationNode.EndModify(wasModified)

        self.results.put(segmentationNode, SegmentationResult(
            maps=maps, labelmap=sharedLabelmap, segment_ids=segmentIds, thresholds=mergedThresholds,
            ijk_to_ras=nodes.matrix_to_array(ijkToRas), device=device))
        return segmentationNode

    def segment(self, volumeNode, segmentationNode=None, classes: Optional[Sequence[str]] = None, model=None,
                device: str = "auto", thresholds: Optional[Thresholds] = None, replace_existing: bool = False,
                progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None,
                convert_to_labelmap: bool = False, standard_names: bool = False):
        """Segment ``volumeNode``; blocks and returns the segmentation node.

        ``segmentationNode=None`` makes a new node; an existing node keeps its other segments,
        and a segment of the same name as one of ours is replaced only with
        ``replace_existing=True``. ``classes`` are class names (None: all of the model).
        On any error or cancel the scene is as before: nodes are made after the network ran.

        Example (Slicer's Python console)::

            logic.segment(getNode("T1"), classes=["White matter", "Cortical grey matter"], device="cpu")
        """
        if segmentationNode is not None:
            # Fail before the (long) network run, not after it.
            self.check_output(segmentationNode, self.expected_segment_names(model, classes, standard_names),
                              replace_existing, convert_to_labelmap)
        report(progress, 0.0, "Starting")
        run = self.segmentation_run(volumeNode, classes, model, device).start()
        maps = run.wait(sub_progress(progress, 0.0, 0.95), cancel)
        check_cancel(cancel)  # a cancel during the last step still leaves the scene alone
        report(progress, 0.95, "Creating segments")
        segmentationNode = self.apply_result(volumeNode, maps, segmentationNode, thresholds, replace_existing,
                                             convert_to_labelmap, standard_names, run.device)
        report(progress, 1.0, "Done")
        return segmentationNode

    # ---- after a run -------------------------------------------------------------------

    def has_result(self, segmentationNode) -> bool:
        """True when this logic made ``segmentationNode``'s segments and keeps their probabilities."""
        return self.results.get(segmentationNode) is not None

    def probability_maps(self, segmentationNode):
        """The kept ProbabilityMaps behind ``segmentationNode``."""
        return self._result(segmentationNode).maps

    def current_thresholds(self, segmentationNode) -> Dict[int, float]:
        """Threshold per thresholded class index as last applied (defaults filled in)."""
        result = self._result(segmentationNode)
        current = dict(result.maps.default_thresholds)
        current.update(result.thresholds)
        return {index: float(current[index]) for index in result.maps.thresholded_classes() if index in current}

    def update_thresholds(self, segmentationNode, thresholds: Thresholds) -> None:
        """Re-label the segments from the kept probabilities; the network does not run.

        ``thresholds`` maps class index or name to a probability in [0, 1]; classes not given
        keep their last threshold. Segments the user deleted stay deleted.
        """
        result = self._result(segmentationNode)
        result.thresholds.update(_by_class_index(result.maps, thresholds))
        labelArray = result.maps.labelmap(dict(result.thresholds))
        result.segment_ids = nodes.relabel_segments(segmentationNode, result.labelmap, result.segment_ids, labelArray)

    def export_probability_volumes(self, segmentationNode, classes: Optional[Sequence[int]] = None) -> list:
        """One float volume node (probability 0-1, displayed 0-1) per segmented class, on the input grid."""
        result = self._result(segmentationNode)
        names = {info.index: info.name for info in result.maps.classes}
        return [nodes.add_probability_volume(segmentationNode.GetScene(),
                                             f"{segmentationNode.GetName()} {names[index]} probability",
                                             result.maps.probability(index), result.ijk_to_ras,
                                             segmentationNode.GetTransformNodeID())
                for index in (classes if classes is not None else list(result.segment_ids))]

    def forget(self, segmentationNode) -> None:
        """Drop the kept probabilities of ``segmentationNode`` (frees their memory)."""
        self.results.drop(segmentationNode)

    @staticmethod
    def show_in_3d(segmentationNode, show: bool) -> None:
        """Surfaces in the 3D view on or off. Only on the user's request: a run never removes the
        surfaces of a segmentation the user chose as output."""
        if segmentationNode is None:
            return
        if show:
            segmentationNode.CreateClosedSurfaceRepresentation()
        else:
            segmentationNode.RemoveClosedSurfaceRepresentation()

    # ---- batch -------------------------------------------------------------------------

    def segment_folder(self, input_dir: str, output_dir: str, classes: Optional[Sequence[str]] = None, model=None,
                       device: str = "auto", thresholds: Optional[Thresholds] = None, overwrite: bool = False,
                       progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None) -> List[str]:
        """Segment every image file of ``input_dir`` into ``output_dir``/<name>.seg.nrrd.

        Uses the engine's file I/O (no MRML nodes are made), in the worker process. Returns the
        files written.

        Example (Slicer's Python console)::

            MultiTaskSegLogic().segment_folder("/data/t1", "/data/t1-seg", device="cuda")
        """
        if self.worker is not None:
            request = self.worker.send("segment_folder", input_dir=os.path.abspath(input_dir),
                                       output_dir=os.path.abspath(output_dir), classes=classes,
                                       model=self.model_file(model), device=device,
                                       thresholds=dict(thresholds or {}), overwrite=overwrite)
            return request.wait(progress, cancel)["written"]
        from ..engine.batch import check_outputs, image_files_in, make_output_folders, plan_jobs, run_jobs
        from ..engine.classes import selected_class_indices
        from ..engine.file_types import SEGMENTATION_SUFFIX

        bundle = self.load_bundle(model)
        selected = selected_class_indices(bundle.classes, classes)
        jobs = plan_jobs(image_files_in(input_dir), os.path.join(output_dir, ""), SEGMENTATION_SUFFIX.lstrip("."))
        check_outputs(jobs, overwrite)  # before the first case, so a batch does not stop half-way
        make_output_folders(jobs)
        resolved = {bundle.class_index(key): float(value) for key, value in (thresholds or {}).items()}
        run_jobs(jobs, self._in_process_segmenter(model, device), selected, resolved, overwrite, stop_on_error=True,
                 progress=progress, cancel=cancel)
        return [str(job.output) for job in jobs]

    # ---- helpers -----------------------------------------------------------------------

    def _result(self, segmentationNode) -> SegmentationResult:
        result = self.results.get(segmentationNode)
        if result is None:
            raise OutputError(
                "This segmentation has no probability maps kept in this session: run Segment on it first.")
        return result

    def expected_segment_names(self, model, classes: Optional[Sequence[str]], standard_names: bool = False) -> List[str]:
        """The names our segments will have (raises InputError for an unknown class)."""
        from ..engine.classes import selected_class_indices

        description = self.model_description(model)
        return [nodes.segment_name(description.classes[index], standard_names)
                for index in selected_class_indices(description.classes, classes)]

    @staticmethod
    def existing_segment_names(segmentationNode, names: Sequence[str]) -> List[str]:
        """Those of ``names`` that are segment names in ``segmentationNode`` already."""
        present = set(nodes.segment_names(segmentationNode))
        return [name for name in names if name in present]


def _by_class_index(maps, thresholds: Optional[Thresholds]) -> Dict[int, float]:
    """Thresholds keyed by class index, so a name and an index of one class cannot disagree."""
    return {maps.resolve_class(key): float(value) for key, value in (thresholds or {}).items()}
