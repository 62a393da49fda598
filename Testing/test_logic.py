"""SegmentationLogic with Slicer's real MRML classes (the slicer-core wheel), no Qt.

Geometry is tested with a fake segmenter whose class 7 is a known physical ball, so the test
does not depend on what a random network predicts; the real pipeline runs once end to end.
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from MultiTaskSegLib.engine.errors import Cancelled, InputError, OutputError  # noqa: E402
from MultiTaskSegLib.slicer.logic import SegmentationLogic, volume_from_node  # noqa: E402
from MultiTaskSegLib.engine.classes import DEFAULT_CLASSES, DEFAULT_TASKS  # noqa: E402
from MultiTaskSegLib.engine.labelmap_rule import ProbabilityMaps, quantize_probabilities  # noqa: E402

BALL_CLASS = 7
BALL_CENTER_LPS = np.array([-3.0, 4.0, 2.0])
BALL_RADIUS = 6.0  # mm, at threshold 0.5 (probability falls linearly to 0 at twice this)
SHAPE_ZYX = (20, 28, 24)


# ---- fakes: the predict() API of the engine's Segmenter, with a known answer --------------


WHITE_MATTER = "white matter"  # an argmax class: everything outside the ball
BALL_NAME = DEFAULT_CLASSES[BALL_CLASS].name
TWO = [WHITE_MATTER, BALL_NAME]


class FakeSegmenter:
    def __init__(self):
        self.calls = 0

    def predict(self, volume, classes=None, progress=None, cancel=None):
        self.calls += 1
        if progress:
            progress(0.5, "Fake network")
        if cancel is not None and cancel():
            raise Cancelled("Cancelled by the user; nothing was written.")
        k, j, i = np.indices(volume.array.shape)
        points = volume.index_to_physical(np.stack([i, j, k], axis=-1))  # LPS, the engine's frame
        distance = np.linalg.norm(points - BALL_CENTER_LPS, axis=-1)
        ball = np.clip(1.0 - distance / (2 * BALL_RADIUS), 0.0, 1.0)
        data = np.zeros((len(DEFAULT_CLASSES),) + volume.array.shape, dtype=np.uint8)
        data[1] = 255  # white matter wins the argmax wherever the ball's threshold is not met
        data[BALL_CLASS] = quantize_probabilities(ball)
        return ProbabilityMaps(data, DEFAULT_CLASSES, selected=classes)


# ---- scene helpers --------------------------------------------------------------------------


def oblique_ijk_to_ras() -> np.ndarray:
    """Rotated about an oblique axis, anisotropic spacing, one flipped axis."""
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    angle = np.deg2rad(35)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([0.9, -1.1, 1.3])
    matrix[:3, 3] = [-10.0, 12.0, -14.0]
    # centre the volume near the ball so the ball lies inside
    centre_ijk = np.array([SHAPE_ZYX[2], SHAPE_ZYX[1], SHAPE_ZYX[0]]) / 2.0
    ball_ras = np.diag([-1, -1, 1]) @ BALL_CENTER_LPS
    matrix[:3, 3] = ball_ras - matrix[:3, :3] @ centre_ijk + np.array([1.0, -0.5, 0.7])
    return matrix


def add_volume(scene, array=None, matrix=None, name="T1"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    if array is None:
        array = np.random.default_rng(0).normal(100, 20, SHAPE_ZYX).astype(np.float32)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(oblique_ijk_to_ras() if matrix is None else matrix))
    return node


def segment_ras_points(segmentationNode, segmentId):
    """RAS centres of the voxels of a segment, read from its binary labelmap in MRML."""
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    image = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
    extent = image.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    labels = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    k, j, i = np.nonzero(labels == segment.GetLabelValue())
    ijk = np.stack([i + extent[0], j + extent[2], k + extent[4], np.ones_like(i)], axis=0)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return (slicer.util.arrayFromVTKMatrix(matrix) @ ijk)[:3].T


def segment_names(segmentationNode):
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def scene_summary(scene):
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    segments = {n.GetID(): segment_names(n) for n in nodes if n.IsA("vtkMRMLSegmentationNode")}
    return scene.GetNumberOfNodes(), segments


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def fake():
    return FakeSegmenter()


@pytest.fixture
def logic(fake, no_model_files):
    return SegmentationLogic(segmenter_factory=lambda bundle, device: fake)


class FakeBundle:
    classes = DEFAULT_CLASSES
    tasks = DEFAULT_TASKS
    default_thresholds = {}


@pytest.fixture
def no_model_files(monkeypatch):
    """The fake segmenter needs no weights: never read a model file in these tests."""
    monkeypatch.setattr(SegmentationLogic, "load_bundle", lambda self, model=None: FakeBundle())


# ---- geometry ----------------------------------------------------------------------------


def test_volume_from_node_converts_ras_to_lps(scene):
    node = add_volume(scene)
    volume = volume_from_node(node)
    ijk_to_ras = oblique_ijk_to_ras()
    for ijk in ([0, 0, 0], [3, 5, 7], [23, 27, 19]):
        ras = ijk_to_ras @ np.array(ijk + [1.0])
        np.testing.assert_allclose(volume.index_to_physical(ijk), [-ras[0], -ras[1], ras[2]], atol=1e-9)
    np.testing.assert_allclose(volume.spacing, [0.9, 1.1, 1.3])
    assert volume.array.shape == SHAPE_ZYX
    np.testing.assert_array_equal(volume.array, slicer.util.arrayFromVolume(node))


def test_segments_land_at_the_right_physical_place(scene, logic):
    volumeNode = add_volume(scene)
    segmentationNode = logic.segment(volumeNode, classes=TWO)
    ball_id = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(BALL_NAME)
    points = segment_ras_points(segmentationNode, ball_id)
    centre_ras = np.diag([-1, -1, 1]) @ BALL_CENTER_LPS
    distances = np.linalg.norm(points - centre_ras, axis=1)
    assert distances.max() <= BALL_RADIUS + 0.1
    expected_voxels = 4 / 3 * np.pi * BALL_RADIUS**3 / (0.9 * 1.1 * 1.3)
    assert abs(len(points) - expected_voxels) < 0.1 * expected_voxels
    np.testing.assert_allclose(points.mean(axis=0), centre_ras, atol=0.5)


def test_segments_are_named_coloured_tagged_with_reference_geometry(scene, logic):
    volumeNode = add_volume(scene)
    segmentationNode = logic.segment(volumeNode)  # all classes of the model
    assert segment_names(segmentationNode) == [c.name for c in DEFAULT_CLASSES[1:]]  # no background
    segment = segmentationNode.GetSegmentation().GetNthSegment(BALL_CLASS - 1)
    assert segment.GetColor() == pytest.approx(DEFAULT_CLASSES[BALL_CLASS].color)
    tag = vtk.mutable("")
    assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
    assert str(tag) == DEFAULT_CLASSES[BALL_CLASS].slicer_terminology_string()
    geometry = segmentationNode.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    assert geometry.endswith("0;23;0;27;0;19;")  # extent of the 24x28x20 input


# ---- threshold updates -------------------------------------------------------------------


def test_threshold_update_relabels_without_running_the_network(scene, logic, fake):
    segmentationNode = logic.segment(add_volume(scene), classes=TWO)
    ball_id = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(BALL_NAME)
    tissue_id = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(WHITE_MATTER)
    before = len(segment_ras_points(segmentationNode, ball_id))
    tissue_before = len(segment_ras_points(segmentationNode, tissue_id))
    events = []
    segmentationNode.GetSegmentation().AddObserver(
        slicer.vtkSegmentation.SourceRepresentationModified, lambda *args: events.append(args)
    )

    logic.update_thresholds(segmentationNode, {BALL_CLASS: 0.75})  # radius halves

    after = segment_ras_points(segmentationNode, ball_id)
    centre_ras = np.diag([-1, -1, 1]) @ BALL_CENTER_LPS
    assert np.linalg.norm(after - centre_ras, axis=1).max() <= BALL_RADIUS / 2 + 0.1
    assert 0 < len(after) < before / 4
    assert len(segment_ras_points(segmentationNode, tissue_id)) == tissue_before + before - len(after)
    assert fake.calls == 1
    assert events, "the segmentation must be told its labelmap changed (views redraw on it)"
    assert logic.current_thresholds(segmentationNode) == {BALL_CLASS: 0.75}

    logic.update_thresholds(segmentationNode, {BALL_NAME: 0.5})  # by name, back
    assert len(segment_ras_points(segmentationNode, ball_id)) == before


def test_threshold_update_keeps_deleted_segments_deleted(scene, logic):
    segmentationNode = logic.segment(add_volume(scene), classes=TWO)
    segmentation = segmentationNode.GetSegmentation()
    segmentation.RemoveSegment(segmentation.GetSegmentIdBySegmentName(WHITE_MATTER))
    logic.update_thresholds(segmentationNode, {BALL_CLASS: 0.6})
    ball = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(BALL_NAME))
    image = ball.GetRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
    labels = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    assert set(np.unique(labels)) == {0, BALL_CLASS}


def test_threshold_update_needs_a_result_of_this_logic(scene, logic):
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(OutputError, match="run Segment"):
        logic.update_thresholds(other, {BALL_CLASS: 0.5})


# ---- existing segmentations ----------------------------------------------------------------


def add_user_segment(segmentationNode, name):
    segment = slicer.vtkSegment()
    segment.SetName(name)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, 3, 0, 3, 0, 3)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().Fill(1)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName(), image)
    segmentationNode.GetSegmentation().AddSegment(segment)


def test_existing_segmentation_keeps_its_other_segments(scene, logic):
    volumeNode = add_volume(scene)
    existing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    add_user_segment(existing, "Tumour")
    result = logic.segment(volumeNode, existing, classes=TWO)
    assert result is existing
    assert segment_names(existing) == ["Tumour", WHITE_MATTER, BALL_NAME]
    logic.update_thresholds(existing, {BALL_CLASS: 0.9})
    tumour = existing.GetSegmentation().GetSegment(existing.GetSegmentation().GetSegmentIdBySegmentName("Tumour"))
    image = tumour.GetRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
    assert vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).sum() == 64


def test_same_name_segment_is_replaced_only_when_asked(scene, logic, fake):
    volumeNode = add_volume(scene)
    existing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    add_user_segment(existing, WHITE_MATTER)
    before = scene_summary(scene)
    with pytest.raises(OutputError, match="replace_existing"):
        logic.segment(volumeNode, existing, classes=TWO)
    assert scene_summary(scene) == before
    assert fake.calls == 0, "the name clash is found before the network runs"
    logic.segment(volumeNode, existing, classes=TWO, replace_existing=True)
    assert segment_names(existing) == [WHITE_MATTER, BALL_NAME]


def test_segmenting_twice_makes_a_second_node(scene, logic):
    volumeNode = add_volume(scene)
    first = logic.segment(volumeNode, classes=TWO)
    second = logic.segment(volumeNode, classes=TWO)
    assert first.GetID() != second.GetID() and first.GetName() != second.GetName()
    assert logic.has_result(first) and logic.has_result(second)


# ---- cancel and bad inputs -----------------------------------------------------------------


def test_cancel_leaves_the_scene_unchanged(scene, logic, fake):
    volumeNode = add_volume(scene)
    existing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    add_user_segment(existing, "Tumour")
    before = scene_summary(scene)
    for target in (None, existing):
        with pytest.raises(Cancelled):
            logic.segment(volumeNode, target, cancel=lambda: True)
    assert scene_summary(scene) == before
    assert fake.calls == 0, "a cancel before the run starts it never"


def test_cancel_during_the_network_leaves_the_scene_unchanged(scene, logic, fake):
    volumeNode = add_volume(scene)
    before = scene_summary(scene)
    stages = []
    answers = iter([False, True])  # not before the run, but inside it
    with pytest.raises(Cancelled):
        logic.segment(volumeNode, progress=lambda f, s: stages.append(s), cancel=lambda: next(answers, True))
    assert scene_summary(scene) == before
    assert fake.calls == 1 and "Fake network" in stages


def test_cancel_after_the_network_still_leaves_the_scene_unchanged(scene, logic):
    volumeNode = add_volume(scene)
    before = scene_summary(scene)
    answers = iter([False, False, True])  # not before or during predict, but right after it
    with pytest.raises(Cancelled):
        logic.segment(volumeNode, cancel=lambda: next(answers, True))
    assert scene_summary(scene) == before


def test_missing_volume_is_a_clear_error(logic):
    with pytest.raises(InputError, match="select a volume"):
        logic.segment(None)


def test_volume_without_voxels_is_a_clear_error(scene, logic):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        logic.segment(node)


def test_2d_volume_is_a_clear_error(scene, logic):
    node = add_volume(scene, array=np.random.default_rng(1).normal(size=(1, 30, 30)).astype(np.float32))
    before = scene_summary(scene)
    with pytest.raises(InputError, match="2D"):
        logic.segment(node)
    assert scene_summary(scene) == before


def test_constant_volume_is_a_clear_error(scene, logic, fake):
    node = add_volume(scene, array=np.full(SHAPE_ZYX, 7.0, dtype=np.float32))
    with pytest.raises(InputError, match="constant"):
        logic.segment(node)
    assert fake.calls == 0


def test_probability_export_gives_volumes_on_the_input_grid(scene, logic):
    volumeNode = add_volume(scene)
    segmentationNode = logic.segment(volumeNode, classes=TWO)
    nodes = logic.export_probability_volumes(segmentationNode)
    assert [n.GetName() for n in nodes] == [f"T1 segmentation {name} probability" for name in TWO]
    ball = slicer.util.arrayFromVolume(nodes[1])
    assert ball.shape == SHAPE_ZYX and ball.dtype == np.float32 and ball.max() <= 1.0
    matrix = vtk.vtkMatrix4x4()
    nodes[1].GetIJKToRASMatrix(matrix)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), oblique_ijk_to_ras(), atol=1e-9)


# ---- the console API ----------------------------------------------------------------------------


def test_the_console_example_of_the_logic_docstring_works(scene, logic):
    """The module docstring's example, as a user types it: class names in sentence case."""
    volumeNode = add_volume(scene)
    segmentationNode = logic.segment(volumeNode, classes=["White matter", "Pectoral muscle"])
    assert segment_names(segmentationNode) == [WHITE_MATTER, BALL_NAME]
    ball = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(BALL_NAME)
    before = len(segment_ras_points(segmentationNode, ball))
    logic.update_thresholds(segmentationNode, {"Pectoral muscle": 0.7})
    assert 0 < len(segment_ras_points(segmentationNode, ball)) < before
    assert logic.current_thresholds(segmentationNode)[BALL_CLASS] == pytest.approx(0.7)


def test_segment_folder_writes_one_seg_nrrd_per_image(tmp_path, logic):
    import SimpleITK as sitk

    from MultiTaskSegLib.engine.geometry import Volume

    inputs = tmp_path / "in"
    inputs.mkdir()
    array = np.random.default_rng(2).normal(100, 20, SHAPE_ZYX).astype(np.float32)
    for name in ("a.nii.gz", "b.nrrd"):
        sitk.WriteImage(Volume(array, (0.9, 1.1, 1.3), BALL_CENTER_LPS - 12).to_sitk(), str(inputs / name))
    written = logic.segment_folder(str(inputs), str(tmp_path / "out"), classes=TWO)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["a.seg.nrrd", "b.seg.nrrd"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(written[0]))
    assert set(np.unique(labels)) == {1, BALL_CLASS}
    with pytest.raises(OutputError, match="overwrite=True"):
        logic.segment_folder(str(inputs), str(tmp_path / "out"))


def test_the_documented_console_import_gives_the_logic():
    from MultiTaskSegLib.logic import MultiTaskSegLogic

    assert MultiTaskSegLogic is SegmentationLogic
