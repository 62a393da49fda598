"""Results tied to segmentation node objects across scene changes, and what the panel shows of them.

Real MRML classes (the slicer-core wheel), the network replaced by the fake segmenter of
test_logic.py (in this process): these are about nodes, scenes and sliders, not about the network.
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from test_logic import BALL_CLASS, TWO, FakeBundle, FakeSegmenter, add_volume, segment_names  # noqa: E402

from MultiTaskSegLib.engine.errors import OutputError  # noqa: E402
from MultiTaskSegLib.slicer import panel_support  # noqa: E402
from MultiTaskSegLib.slicer.logic import SegmentationLogic  # noqa: E402
from MultiTaskSegLib.slicer.node_conversion import volume_from_node  # noqa: E402

CLOSED_SURFACE = "Closed surface"


@pytest.fixture(scope="module", autouse=True)
def surface_conversions():
    """Slicer registers these conversions at start-up; the bare wheel does not."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


@pytest.fixture
def fake():
    return FakeSegmenter()


@pytest.fixture
def logic(fake, monkeypatch):
    monkeypatch.setattr(SegmentationLogic, "load_bundle", lambda self, model=None: FakeBundle())
    return SegmentationLogic(segmenter_factory=lambda bundle, device: fake)


def test_close_scene_then_a_new_node_with_the_same_id_has_no_result(logic):
    """vtkMRMLScene::Clear resets the ID counters: a result kept by ID would pass to the new node."""
    scene = slicer.vtkMRMLScene()
    old = logic.segment(add_volume(scene), classes=TWO)
    oldId = old.GetID()
    scene.Clear(0)  # File > Close Scene
    volumeNode = add_volume(scene)
    reused = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert reused.GetID() == oldId
    assert not logic.has_result(reused) and not logic.has_result(old)
    assert panel_support.threshold_rows(logic, reused) == [], "no sliders for the new node"
    with pytest.raises(OutputError, match="run Segment"):
        logic.update_thresholds(reused, {BALL_CLASS: 0.1})
    assert len(logic.results) == 0, "the closed scene's maps are freed"
    assert logic.has_result(logic.segment(volumeNode, classes=TWO)), "the logic works on in the new scene"


def test_removing_the_node_frees_its_result_and_other_nodes_keep_theirs(logic):
    scene = slicer.vtkMRMLScene()
    volumeNode = add_volume(scene)
    first, second = logic.segment(volumeNode, classes=TWO), logic.segment(volumeNode, classes=TWO)
    scene.RemoveNode(first)
    assert len(logic.results) == 1 and logic.has_result(second) and not logic.has_result(first)


def test_a_scene_destroyed_with_results_kept_is_harmless(logic):
    """Scene events arrive while a scene is being destroyed: the store must not touch it then."""
    scene = slicer.vtkMRMLScene()
    node = logic.segment(add_volume(scene), classes=TWO)
    del scene
    assert not logic.has_result(node)
    other = slicer.vtkMRMLScene()
    assert logic.has_result(logic.segment(add_volume(other), classes=TWO))


def test_sliders_show_the_newly_selected_outputs_thresholds(logic):
    scene = slicer.vtkMRMLScene()
    volumeNode = add_volume(scene)
    first, second = logic.segment(volumeNode, classes=TWO), logic.segment(volumeNode, classes=TWO)
    logic.update_thresholds(first, {BALL_CLASS: 0.2})
    logic.update_thresholds(second, {BALL_CLASS: 0.8})
    assert panel_support.threshold_rows(logic, first) == [(BALL_CLASS, "pectoral muscle:", 0.2)]
    assert panel_support.threshold_rows(logic, second) == [(BALL_CLASS, "pectoral muscle:", 0.8)]
    assert panel_support.threshold_rows(logic, None) == []


def test_a_closed_surface_output_is_converted_only_when_allowed(logic, fake):
    scene = slicer.vtkMRMLScene()
    volumeNode = add_volume(scene)
    existing = logic.segment(volumeNode, classes=["white matter"])
    logic.forget(existing)
    assert existing.CreateClosedSurfaceRepresentation()
    existing.GetSegmentation().SetSourceRepresentationName(CLOSED_SURFACE)
    calls = fake.calls
    with pytest.raises(OutputError, match="convert_to_labelmap=True"):
        logic.segment(volumeNode, existing, classes=["pectoral muscle"])
    assert fake.calls == calls, "asked before the network runs"
    assert existing.GetSegmentation().GetSourceRepresentationName() == CLOSED_SURFACE
    logic.segment(volumeNode, existing, classes=["pectoral muscle"], convert_to_labelmap=True)
    assert segment_names(existing) == ["white matter", "pectoral muscle"]


def test_a_run_keeps_the_surfaces_of_the_users_output(logic):
    scene = slicer.vtkMRMLScene()
    volumeNode = add_volume(scene)
    existing = logic.segment(volumeNode, classes=["white matter"])
    assert existing.CreateClosedSurfaceRepresentation()
    logic.segment(volumeNode, existing, classes=["pectoral muscle"])
    assert existing.GetSegmentation().ContainsRepresentation(CLOSED_SURFACE)


def test_standard_terminology_names(logic):
    scene = slicer.vtkMRMLScene()
    node = logic.segment(add_volume(scene), classes=TWO, standard_names=True)
    assert segment_names(node) == ["Cerebral White Matter", "Pectoralis major muscle (right and left)"]
    assert logic.expected_segment_names(None, TWO, standard_names=True) == segment_names(node)


def test_exported_probability_volumes_can_be_shown(logic):
    scene = slicer.vtkMRMLScene()
    node = logic.segment(add_volume(scene), classes=TWO)
    for volume in logic.export_probability_volumes(node):
        display = volume.GetDisplayNode()
        assert display is not None and (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)


def test_the_worker_gets_the_volume_without_a_copy_in_slicer(logic):
    scene = slicer.vtkMRMLScene()
    node = add_volume(scene)
    shared, copied = volume_from_node(node, copy=False), volume_from_node(node)
    assert np.shares_memory(shared.array, slicer.util.arrayFromVolume(node))
    assert not np.shares_memory(copied.array, slicer.util.arrayFromVolume(node))
