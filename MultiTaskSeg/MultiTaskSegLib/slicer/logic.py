"""MRML logic of the Slicer module: a volume node goes in, a segmentation node comes out.

Imports only Slicer's MRML classes, ``vtk`` and numpy (no Qt), so it runs inside Slicer and,
with the ``slicer-core`` wheel, in plain Python tests. Slicer works in RAS; the engine in LPS:
the conversion happens here, in :func:`volume_from_node`, and nowhere else.

Use from Slicer's Python console::

    from MultiTaskSegLib.logic import MultiTaskSegLogic
    logic = MultiTaskSegLogic()
    volumeNode = slicer.util.getNode("MRHead")
    segmentationNode = logic.segment(volumeNode)                 # blocks; default model, all classes
    logic.update_thresholds(segmentationNode, {"Pectoral muscle": 0.7})   # no network re-run
    probabilityNodes = logic.export_probability_volumes(segmentationNode)

The widget runs the two halves of :meth:`MultiTaskSegLogic.segment` separately:
:meth:`~MultiTaskSegLogic.run_network` (no MRML, safe in a worker thread) and
:meth:`~MultiTaskSegLogic.apply_result` (MRML, main thread).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..engine.errors import InputError, OutputError
from ..engine.geometry import Volume, validate_volume
from ..engine.progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress

# Slicer's RAS and ITK's LPS differ by the sign of the first two axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

Thresholds = Dict[Union[int, str], float]
SegmenterFactory = Callable[[Any, str], Any]


def _binary_labelmap_name() -> str:
    return slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()


def _matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _ijk_to_ras_matrix(volumeNode) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return matrix


def volume_from_node(volumeNode) -> Volume:
    """The engine's :class:`Volume` (LPS, arrays (z, y, x)) of a scalar volume node (RAS).

    The voxels are copied, so the worker thread never reads memory that MRML may change.
    """
    if volumeNode is None:
        raise InputError("No input volume given: select a volume (load an image first).")
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetNumberOfPoints() == 0:
        raise InputError(f"Volume '{volumeNode.GetName()}' has no voxels: load the image again.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"Volume '{volumeNode.GetName()}' has {imageData.GetNumberOfScalarComponents()} components "
            "per voxel (colour or vector image): convert it to a scalar volume first "
            "(Vector to Scalar Volume module)."
        )
    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)

    ijkToRas = _matrix_to_array(_ijk_to_ras_matrix(volumeNode))
    axesLps = RAS_TO_LPS @ ijkToRas[:3, :3]  # columns: LPS step of one voxel along i, j, k
    spacing = np.linalg.norm(axesLps, axis=0)
    direction = axesLps / spacing
    origin = RAS_TO_LPS @ ijkToRas[:3, 3]
    if 1 in array.shape:
        raise InputError(
            f"Volume '{volumeNode.GetName()}' is 2D (size z, y, x = {array.shape}): load the whole "
            "3D series (e.g. the DICOM series folder rather than one slice)."
        )
    volume = Volume(array=array, spacing=tuple(spacing), origin=tuple(origin), direction=direction)
    validate_volume(volume, what=f"volume '{volumeNode.GetName()}'")
    return volume


@dataclasses.dataclass
class _CachedResult:
    """What a threshold change needs: the probabilities and where the labels live."""

    maps: Any  # ProbabilityMaps
    labelmap: Any  # vtkOrientedImageData shared by all our segments (label value = class index)
    segment_ids: Dict[int, str]  # class index -> segment ID
    thresholds: Dict[int, float]  # by class index, as last applied
    ijk_to_ras: np.ndarray


def _default_segmenter_factory(bundle, device: str):
    from ..engine.segmenter import Segmenter

    return Segmenter(bundle, device=device)


class MultiTaskSegLogic:
    """Segment volume nodes with the multi-task triplanar CNN and keep the result adjustable.

    ``segmenter_factory(bundle, device)`` builds the object whose ``predict()`` runs the network;
    tests pass a fake one. The logic keeps the probability maps of each segmentation it made, so
    :meth:`update_thresholds` re-labels without running the network again.
    """

    def __init__(self, segmenter_factory: Optional[SegmenterFactory] = None):
        self._segmenter_factory = segmenter_factory or _default_segmenter_factory
        self._bundles: Dict[Any, Any] = {}
        self._segmenters: Dict[Any, Any] = {}
        self._results: Dict[str, _CachedResult] = {}

    # ---- model -------------------------------------------------------------------------

    def load_bundle(self, model=None):
        """The ModelBundle for ``model``: None (the shipped default), a file path, or a bundle."""
        from ..engine.bundle import ModelBundle, load_bundle

        if isinstance(model, ModelBundle):
            return model
        key = os.path.abspath(model) if model else None
        if key not in self._bundles:
            self._bundles[key] = load_bundle(key)
        return self._bundles[key]

    def segmenter(self, model=None, device: str = "auto"):
        """A cached segmenter, so a second run does not load the weights again."""
        bundle = self.load_bundle(model)
        key = (id(bundle), device)
        if key not in self._segmenters:
            self._segmenters[key] = self._segmenter_factory(bundle, device)
        return self._segmenters[key]

    # ---- the two halves of segment() ---------------------------------------------------

    volume_from_node = staticmethod(volume_from_node)

    def run_network(
        self,
        volume: Volume,
        classes: Optional[Sequence[str]] = None,
        model=None,
        device: str = "auto",
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCheck] = None,
    ):
        """Probability maps of ``volume`` on its own grid. Touches no MRML: thread-safe."""
        segmenter = self.segmenter(model, device)
        maps = segmenter.predict(volume, classes=classes, progress=progress, cancel=cancel)
        check_cancel(cancel)  # a cancel during the last step still leaves the scene alone
        return maps

    def apply_result(
        self,
        volumeNode,
        maps,
        segmentationNode=None,
        thresholds: Optional[Thresholds] = None,
        replace_existing: bool = False,
    ):
        """Put the labelmap of ``maps`` into a segmentation node (main thread; MRML).

        One segment per selected class, sharing one labelmap whose label value is the class
        index, so a threshold change is a single array copy. Everything that can fail is
        checked before the scene changes.
        """
        scene = volumeNode.GetScene() if volumeNode is not None else None
        if scene is None:
            raise InputError("The input volume is not in a scene: add it to the scene first.")
        classInfos = {info.index: info for info in maps.classes}
        segmentClasses = list(maps.selected)  # never background: label 0 means "no segment"
        if segmentationNode is not None:
            self._check_name_conflicts(segmentationNode, [classInfos[c].name for c in segmentClasses], replace_existing)
        mergedThresholds = _by_class_index(maps, thresholds)
        labelArray = np.ascontiguousarray(maps.labelmap(mergedThresholds or None), dtype=np.uint8)

        ijkToRas = _ijk_to_ras_matrix(volumeNode)
        sharedLabelmap = self._make_labelmap(labelArray, ijkToRas)

        isNewNode = segmentationNode is None
        if isNewNode:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volumeNode.GetName()} segmentation")
            )
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segmentation = segmentationNode.GetSegmentation()
        if isNewNode or segmentation.GetNumberOfSegments() == 0:
            # An existing node with segments keeps the geometry its segments were drawn on.
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        wasModified = segmentationNode.StartModify()
        try:
            if segmentation.GetNumberOfSegments() == 0 or not segmentation.IsSourceRepresentationImageData():
                self._use_labelmap_as_source(segmentation)
            if replace_existing:
                for index in segmentClasses:
                    self._remove_segments_named(segmentation, classInfos[index].name)
            segmentIds = {}
            for index in segmentClasses:
                segmentIds[index] = self._add_segment(segmentation, classInfos[index], sharedLabelmap)
        finally:
            segmentationNode.EndModify(wasModified)

        self._forget_removed_nodes(scene)
        self._results[segmentationNode.GetID()] = _CachedResult(
            maps=maps,
            labelmap=sharedLabelmap,
            segment_ids=segmentIds,
            thresholds=mergedThresholds,
            ijk_to_ras=_matrix_to_array(ijkToRas),
        )
        return segmentationNode

    def segment(
        self,
        volumeNode,
        segmentationNode=None,
        classes: Optional[Sequence[str]] = None,
        model=None,
        device: str = "auto",
        thresholds: Optional[Thresholds] = None,
        replace_existing: bool = False,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCheck] = None,
    ):
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
            self._check_name_conflicts(segmentationNode, self._expected_names(model, classes), replace_existing)
        volume = volume_from_node(volumeNode)
        maps = self.run_network(volume, classes, model, device, sub_progress(progress, 0.0, 0.95), cancel)
        report(progress, 0.95, "Creating segments")
        segmentationNode = self.apply_result(volumeNode, maps, segmentationNode, thresholds, replace_existing)
        report(progress, 1.0, "Done")
        return segmentationNode

    # ---- after a run -------------------------------------------------------------------

    def has_result(self, segmentationNode) -> bool:
        """True when ``segmentationNode`` was made by this logic and its probabilities are kept."""
        return segmentationNode is not None and segmentationNode.GetID() in self._results

    def probability_maps(self, segmentationNode):
        """The cached ProbabilityMaps behind ``segmentationNode``."""
        return self._result(segmentationNode).maps

    def current_thresholds(self, segmentationNode) -> Dict[int, float]:
        """Threshold per thresholded class index as last applied (defaults filled in)."""
        result = self._result(segmentationNode)
        current = dict(result.maps.default_thresholds)
        current.update(result.thresholds)
        return {index: float(current[index]) for index in result.maps.thresholded_classes() if index in current}

    def update_thresholds(self, segmentationNode, thresholds: Thresholds) -> None:
        """Re-label the segments from the cached probabilities; the network does not run.

        ``thresholds`` maps class index or name to a probability in [0, 1]; classes not given
        keep their last threshold. Segments the user deleted stay deleted.
        """
        result = self._result(segmentationNode)
        result.thresholds.update(_by_class_index(result.maps, thresholds))
        labelArray = result.maps.labelmap(dict(result.thresholds))
        segmentation = segmentationNode.GetSegmentation()
        liveIds = {index: sid for index, sid in result.segment_ids.items() if segmentation.GetSegment(sid) is not None}
        if len(liveIds) < len(result.segment_ids):
            # Labels of deleted segments must not come back as voxels that no segment owns.
            keep = np.zeros(256, dtype=np.uint8)
            keep[list(liveIds)] = list(liveIds)
            labelArray = keep[labelArray]
            result.segment_ids = liveIds
        target = numpy_support.vtk_to_numpy(result.labelmap.GetPointData().GetScalars())
        np.copyto(target, labelArray.reshape(-1), casting="unsafe")
        name = _binary_labelmap_name()
        for sid in liveIds.values():
            segment = segmentation.GetSegment(sid)
            if segment.GetRepresentation(name) is not result.labelmap:
                # The user edited the segment into its own layer; a threshold change overrides it.
                segment.AddRepresentation(name, result.labelmap)
        result.labelmap.Modified()  # the segmentation observes its source labelmaps

    def export_probability_volumes(self, segmentationNode, classes: Optional[Sequence[int]] = None) -> list:
        """One float volume node (probability 0-1) per segmented class, on the input grid."""
        result = self._result(segmentationNode)
        scene = segmentationNode.GetScene()
        names = {info.index: info.name for info in result.maps.classes}
        volumeNodes = []
        for index in classes if classes is not None else list(result.segment_ids):
            nodeName = scene.GenerateUniqueName(f"{segmentationNode.GetName()} {names[index]} probability")
            volumeNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", nodeName)
            volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(result.ijk_to_ras))
            slicer.util.updateVolumeFromArray(volumeNode, np.asarray(result.maps.probability(index), dtype=np.float32))
            volumeNode.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
            volumeNodes.append(volumeNode)
        return volumeNodes

    def forget(self, segmentationNode) -> None:
        """Drop the cached probabilities of ``segmentationNode`` (frees their memory)."""
        if segmentationNode is not None:
            self._results.pop(segmentationNode.GetID(), None)

    # ---- batch -------------------------------------------------------------------------

    def segment_folder(
        self,
        input_dir: str,
        output_dir: str,
        classes: Optional[Sequence[str]] = None,
        model=None,
        device: str = "auto",
        thresholds: Optional[Thresholds] = None,
        overwrite: bool = False,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCheck] = None,
    ) -> List[str]:
        """Segment every image file of ``input_dir`` into ``output_dir``/<name>.seg.nrrd.

        Uses the engine's file I/O (no MRML nodes are made). Returns the files written.

        Example (Slicer's Python console)::

            MultiTaskSegLogic().segment_folder("/data/t1", "/data/t1-seg", device="cuda")
        """
        from ..engine.batch import check_outputs, image_files_in, make_output_folders, plan_jobs, run_jobs
        from ..engine.classes import selected_class_indices
        from ..engine.file_types import SEGMENTATION_SUFFIX

        bundle = self.load_bundle(model)
        selected = selected_class_indices(bundle.classes, classes)
        jobs = plan_jobs(image_files_in(input_dir), os.path.join(output_dir, ""), SEGMENTATION_SUFFIX.lstrip("."))
        # Checked before the first case, so a batch does not stop half-way.
        check_outputs(jobs, overwrite)
        make_output_folders(jobs)
        resolved = {bundle.class_index(key): float(value) for key, value in (thresholds or {}).items()}
        run_jobs(jobs, self.segmenter(model, device), selected, resolved, overwrite, stop_on_error=True,
                 progress=progress, cancel=cancel)
        return [str(job.output) for job in jobs]

    # ---- helpers -----------------------------------------------------------------------

    def _result(self, segmentationNode) -> _CachedResult:
        if not self.has_result(segmentationNode):
            raise OutputError(
                "This segmentation has no probability maps kept in this session: run Segment on it first."
            )
        return self._results[segmentationNode.GetID()]

    def _expected_names(self, model, classes: Optional[Sequence[str]]) -> List[str]:
        from ..engine.classes import selected_class_indices

        bundle = self.load_bundle(model)
        return [bundle.classes[index].name for index in selected_class_indices(bundle.classes, classes)]

    @staticmethod
    def existing_segment_names(segmentationNode, names: Sequence[str]) -> List[str]:
        """Those of ``names`` that are segment names in ``segmentationNode`` already."""
        if segmentationNode is None:
            return []
        segmentation = segmentationNode.GetSegmentation()
        present = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
        return [name for name in names if name in present]

    def _check_name_conflicts(self, segmentationNode, names: Sequence[str], replace_existing: bool) -> None:
        clashes = self.existing_segment_names(segmentationNode, names)
        if clashes and not replace_existing:
            raise OutputError(
                f"Segmentation '{segmentationNode.GetName()}' has segments named {', '.join(clashes)} already: "
                "choose another output segmentation, or allow replacing them (replace_existing=True)."
            )

    @staticmethod
    def _make_labelmap(labelArray: np.ndarray, ijkToRas: vtk.vtkMatrix4x4):
        depth, height, width = labelArray.shape
        image = slicer.vtkOrientedImageData()
        image.SetExtent(0, width - 1, 0, height - 1, 0, depth - 1)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        image.SetImageToWorldMatrix(ijkToRas)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = labelArray.reshape(-1)
        return image

    @staticmethod
    def _use_labelmap_as_source(segmentation) -> None:
        name = _binary_labelmap_name()
        if segmentation.GetNumberOfSegments() > 0:
            segmentation.CreateRepresentation(name)  # keep the user's segments, as labelmaps
        segmentation.SetSourceRepresentationName(name)

    @staticmethod
    def _remove_segments_named(segmentation, name: str) -> None:
        for i in reversed(range(segmentation.GetNumberOfSegments())):
            segment = segmentation.GetNthSegment(i)
            if segment.GetName() == name:
                segmentation.RemoveSegment(segmentation.GetNthSegmentID(i))

    @staticmethod
    def _add_segment(segmentation, info, sharedLabelmap) -> str:
        segment = slicer.vtkSegment()
        segment.SetName(info.name)
        segment.SetColor(*[float(c) for c in info.color])
        segment.SetLabelValue(int(info.index))
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), info.slicer_terminology_string())
        segment.AddRepresentation(_binary_labelmap_name(), sharedLabelmap)
        segmentId = segmentation.GenerateUniqueSegmentID(info.name.replace(" ", "_"))
        segmentation.AddSegment(segment, segmentId)
        return segmentId

    def _forget_removed_nodes(self, scene) -> None:
        for nodeId in list(self._results):
            if scene.GetNodeByID(nodeId) is None:
                del self._results[nodeId]


def _by_class_index(maps, thresholds: Optional[Thresholds]) -> Dict[int, float]:
    """Thresholds keyed by class index, so a name and an index of one class cannot disagree."""
    return {maps.resolve_class(key): float(value) for key, value in (thresholds or {}).items()}

