"""MRML nodes to the engine's data and back: volumes, labelmaps, segments, probability volumes.

Imports Slicer's MRML classes, ``vtk`` and numpy (no Qt, no torch), so it runs inside Slicer and,
with the ``slicer-core`` wheel, in plain Python tests. Slicer works in RAS; the engine in LPS: the
conversion happens here, in :func:`volume_geometry`, and nowhere else.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..engine.errors import InputError
from ..engine.geometry import Volume, validate_volume

# Slicer's RAS and ITK's LPS differ by the sign of the first two axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def binary_labelmap_name() -> str:
    return slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras_matrix(volumeNode) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return matrix


def volume_geometry(volumeNode) -> Tuple[Tuple[float, float, float], Tuple[float, float, float], np.ndarray]:
    """(spacing, origin, direction) of a volume node in the engine's LPS frame."""
    ijkToRas = matrix_to_array(ijk_to_ras_matrix(volumeNode))
    axesLps = RAS_TO_LPS @ ijkToRas[:3, :3]  # columns: LPS step of one voxel along i, j, k
    spacing = np.linalg.norm(axesLps, axis=0)
    direction = axesLps / spacing
    origin = RAS_TO_LPS @ ijkToRas[:3, 3]
    return tuple(float(s) for s in spacing), tuple(float(o) for o in origin), direction


def volume_from_node(volumeNode, copy: bool = True) -> Volume:
    """The engine's :class:`Volume` (LPS, arrays (z, y, x)) of a scalar volume node (RAS).

    ``copy=False`` shares the node's voxels (read them before MRML changes them); the default
    copies, so the result stays valid whatever happens to the node.
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
    array = slicer.util.arrayFromVolume(volumeNode)
    if copy:
        array = np.array(array, copy=True)
    if 1 in array.shape:
        raise InputError(
            f"Volume '{volumeNode.GetName()}' is 2D (size z, y, x = {array.shape}): load the whole "
            "3D series (e.g. the DICOM series folder rather than one slice)."
        )
    spacing, origin, direction = volume_geometry(volumeNode)
    volume = Volume(array=array, spacing=spacing, origin=origin, direction=direction)
    validate_volume(volume, what=f"volume '{volumeNode.GetName()}'")
    return volume


def make_labelmap(labelArray: np.ndarray, ijkToRas: vtk.vtkMatrix4x4):
    """A vtkOrientedImageData holding ``labelArray`` (uint8, z, y, x) on the volume's grid."""
    depth, height, width = labelArray.shape
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, width - 1, 0, height - 1, 0, depth - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.SetImageToWorldMatrix(ijkToRas)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = labelArray.reshape(-1)
    return image


def write_labels(image, labelArray: np.ndarray) -> None:
    """Overwrite the voxels of a labelmap made by :func:`make_labelmap` (same shape)."""
    target = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    np.copyto(target, labelArray.reshape(-1), casting="unsafe")


# ---- segments -------------------------------------------------------------------------------


def segment_names(segmentationNode) -> List[str]:
    if segmentationNode is None:
        return []
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def has_non_labelmap_source(segmentationNode) -> bool:
    """True when ``segmentationNode`` has segments whose source is not a labelmap (e.g. closed
    surfaces): adding ours needs their source converted to labelmaps, which the user must allow."""
    if segmentationNode is None:
        return False
    segmentation = segmentationNode.GetSegmentation()
    return segmentation.GetNumberOfSegments() > 0 and not segmentation.IsSourceRepresentationImageData()


def use_labelmap_as_source(segmentation) -> None:
    name = binary_labelmap_name()
    if segmentation.GetNumberOfSegments() > 0:
        segmentation.CreateRepresentation(name)  # keep the user's segments, as labelmaps
    segmentation.SetSourceRepresentationName(name)


def remove_segments_named(segmentation, name: str) -> None:
    for i in reversed(range(segmentation.GetNumberOfSegments())):
        if segmentation.GetNthSegment(i).GetName() == name:
            segmentation.RemoveSegment(segmentation.GetNthSegmentID(i))


def _code_meaning(code: Optional[Sequence[str]]) -> str:
    return str(code[2]) if code and len(code) > 2 else ""


def segment_name(info, standard_names: bool = False) -> str:
    """The segment name of a class: the model's name, or with ``standard_names`` the meaning of its
    terminology type code (e.g. "Cerebral White Matter"), its modifier in brackets."""
    if not standard_names or not info.terminology:
        return info.name
    name = _code_meaning(info.terminology.get("type")) or info.name
    modifier = _code_meaning(info.terminology.get("modifier"))
    return f"{name} ({modifier.lower()})" if modifier else name


def add_segment(segmentation, info, sharedLabelmap, name: str) -> str:
    """Add one segment of class ``info`` sharing ``sharedLabelmap`` (label value = class index)."""
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetColor(*[float(c) for c in info.color])
    segment.SetLabelValue(int(info.index))
    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), info.slicer_terminology_string())
    segment.AddRepresentation(binary_labelmap_name(), sharedLabelmap)
    segmentId = segmentation.GenerateUniqueSegmentID(name.replace(" ", "_"))
    segmentation.AddSegment(segment, segmentId)
    return segmentId


def relabel_segments(segmentationNode, labelmap, segmentIds: Dict[int, str], labelArray: np.ndarray) -> Dict[int, str]:
    """Write ``labelArray`` into the shared ``labelmap`` of our segments; returns the live ones.

    Labels of segments the user deleted become background, so no voxel is owned by no segment; a
    segment the user edited into its own layer gets the shared labelmap back (a threshold change
    overrides the edit).
    """
    segmentation = segmentationNode.GetSegmentation()
    liveIds = {index: sid for index, sid in segmentIds.items() if segmentation.GetSegment(sid) is not None}
    if len(liveIds) < len(segmentIds):
        keep = np.zeros(256, dtype=np.uint8)
        keep[list(liveIds)] = list(liveIds)
        labelArray = keep[labelArray]
    write_labels(labelmap, labelArray)
    name = binary_labelmap_name()
    for sid in liveIds.values():
        segment = segmentation.GetSegment(sid)
        if segment.GetRepresentation(name) is not labelmap:
            segment.AddRepresentation(name, labelmap)
    labelmap.Modified()  # the segmentation observes its source labelmaps: views redraw
    return liveIds


def add_probability_volume(scene, name: str, probabilities: np.ndarray, ijkToRas: np.ndarray,
                           transformNodeId: Optional[str]):
    """A float volume node (0-1) with a display node (else slice views cannot show it)."""
    volumeNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
    slicer.util.updateVolumeFromArray(volumeNode, np.asarray(probabilities, dtype=np.float32))
    volumeNode.CreateDefaultDisplayNodes()
    displayNode = volumeNode.GetDisplayNode()
    if displayNode is not None:
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevelMinMax(0.0, 1.0)
    volumeNode.SetAndObserveTransformNodeID(transformNodeId)
    return volumeNode
