"""The Slicer logic with its real worker process (this interpreter; PythonSlicer inside Slicer).

Few tests, each paying a worker start (Python and the torch import, ~2-4 s): one worker serves the
first tests; Cancel and a worker killed from outside each end one. Tiny volumes and random
bundles keep the runs themselves short. Real MRML classes from the slicer-core wheel.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest
from vtk.util import numpy_support

slicer = pytest.importorskip("slicer")

from MultiTaskSegLib.engine.bundle import load_bundle  # noqa: E402
from MultiTaskSegLib.engine.errors import InputError, ModelError  # noqa: E402
from MultiTaskSegLib.engine.segmenter import Segmenter  # noqa: E402
from MultiTaskSegLib.slicer.logic import SegmentationLogic, volume_from_node  # noqa: E402
from MultiTaskSegLib.slicer.worker_client import WorkerError, WorkerProcess  # noqa: E402

SHAPE_ZYX = (20, 28, 24)
OBLIQUE_IJK_TO_RAS = np.array([[-0.9, 0.0, 0.1, 10.0], [0.05, 1.1, 0.2, -5.0], [0.0, -0.1, 1.3, 3.0], [0, 0, 0, 1]])


def add_volume(scene, name="T1"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    rng = np.random.default_rng(0)
    slicer.util.updateVolumeFromArray(node, rng.normal(100, 20, SHAPE_ZYX).astype(np.float32))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(OBLIQUE_IJK_TO_RAS))
    return node


def scene_summary(scene):
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return [(n.GetID(), n.GetName()) for n in nodes]


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return True
    try:  # a zombie still answers kill(0): ask its state
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def wait_until_running(run, timeout: float = 120.0) -> None:
    """Until the worker reports the network's first stage: the run is then inside the engine."""
    deadline = time.time() + timeout
    while time.time() < deadline and not run.finished:
        if any(stage.startswith("Resampling to the canonical") for _, stage in run.poll()):
            return
        time.sleep(0.01)
    raise AssertionError("the run never reached the network")


@pytest.fixture(scope="module")
def logic():
    lines = []
    logic = SegmentationLogic(log=lines.append)
    logic.lines = lines
    yield logic
    logic.shutdown()


def test_a_segmentation_through_the_worker_reports_progress_and_matches_the_engine(logic, small_bundle_file):
    scene = slicer.vtkMRMLScene()
    volumeNode = add_volume(scene)
    stages = []
    segmentationNode = logic.segment(volumeNode, model=small_bundle_file, device="cpu",
                                     progress=lambda fraction, stage: stages.append((fraction, stage)))
    assert stages[-1] == (1.0, "Done") and all(a[0] <= b[0] for a, b in zip(stages, stages[1:]))
    assert {"Loading the model", "Resampling to the canonical grid", "Creating segments"} <= {s for _, s in stages}
    assert any("Resampling to the canonical grid" in line for line in logic.lines), "the log shows the stages"

    maps = logic.probability_maps(segmentationNode)
    expected = Segmenter(load_bundle(small_bundle_file), device="cpu").predict(volume_from_node(volumeNode))
    difference = np.abs(maps.data.astype(int) - expected.data.astype(int))
    assert maps.data.shape == expected.data.shape and difference.max() <= 1  # threads may round differently
    image = segmentationNode.GetSegmentation().GetNthSegment(0).GetRepresentation(
        slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
    shared = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(SHAPE_ZYX)
    np.testing.assert_array_equal(shared, maps.labelmap())

    def no_network(*args, **kwargs):
        raise AssertionError("a threshold change must not reach the worker")

    logic.worker.send, send = no_network, logic.worker.send
    try:
        zero = {index: 0.0 for index in maps.thresholded_classes()}
        logic.update_thresholds(segmentationNode, zero)
    finally:
        logic.worker.send = send
    np.testing.assert_array_equal(shared, maps.labelmap(zero))
    assert sorted(os.listdir(logic.worker.folder)) == ["events.jsonl", "worker-log.txt"], "the run's files are gone"


def test_bad_input_reaches_the_caller_as_its_message_and_the_worker_serves_on(logic, small_bundle_file, tmp_path):
    scene = slicer.vtkMRMLScene()
    volumeNode = add_volume(scene)
    before = scene_summary(scene)
    pid = logic.worker.pid
    with pytest.raises(InputError, match="no class 'nonsense'"):
        logic.segment(volumeNode, model=small_bundle_file, classes=["nonsense"], device="cpu")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ModelError, match="corrupt"):
        logic.segment(volumeNode, model=corrupt, device="cpu")
    answer = logic.request_description(corrupt).wait()  # what the panel shows: PyTorch found, the model not
    assert answer["torch"] and answer["devices"][0][0] == "cpu" and answer["model_error"]["kind"] == "ModelError"
    with pytest.raises(ModelError, match="corrupt"):
        logic.model_description(corrupt, answer=answer)
    assert scene_summary(scene) == before
    assert logic.worker.pid == pid, "an error in a request does not end the worker"
    assert logic.segment(volumeNode, model=small_bundle_file, device="cpu") is not None


def test_cancel_kills_the_worker_and_leaves_no_files_and_the_scene_unchanged(logic, random_bundle_file):
    scene = slicer.vtkMRMLScene()
    volumeNode = add_volume(scene)
    before = scene_summary(scene)
    run = logic.segmentation_run(volumeNode, model=random_bundle_file, device="cpu").start()  # 25 layers: seconds
    wait_until_running(run)
    pid, folder = logic.worker.pid, logic.worker.folder
    run.cancel()
    assert run.cancelled and run.maps is None
    assert process_gone(pid), "the worker is dead when cancel() returns"
    assert not os.path.exists(folder), "its input, output and log files are removed"
    assert scene_summary(scene) == before


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_worker_killed_from_outside_is_a_clear_error_and_the_next_run_starts_a_new_one(logic, random_bundle_file,
                                                                                         small_bundle_file):
    scene = slicer.vtkMRMLScene()
    volumeNode = add_volume(scene)
    before = scene_summary(scene)
    run = logic.segmentation_run(volumeNode, model=random_bundle_file, device="cpu").start()
    wait_until_running(run)
    os.kill(logic.worker.pid, signal.SIGKILL)  # as the out-of-memory killer does
    with pytest.raises(WorkerError, match=r"stopped unexpectedly \(killed by SIGKILL"):
        run.wait()
    assert scene_summary(scene) == before
    assert run.folder is None, "the run's files are removed"
    assert logic.segment(volumeNode, model=small_bundle_file, device="cpu") is not None, "a new worker serves"
    assert not logic.release_idle_worker(3600) and logic.worker.running()
    assert logic.release_idle_worker(0) and not logic.worker.running(), "an idle worker gives its memory back"


@pytest.mark.parametrize("fake_torch, message", [
    ("raise ImportError('libtorch_cpu.so: cannot open shared object file')", "cannot be imported.*libtorch_cpu"),
    ("__version__ = '2.1.0'", r"PyTorch 2\.1\.0 is too old: MultiTaskSeg needs 2\.5 or newer"),
])
def test_a_missing_broken_or_old_torch_is_a_message_saying_what_to_do(tmp_path, monkeypatch, fake_torch, message):
    """The worker's fatal event (no real torch is imported: a fake one shadows it)."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(fake_torch + "\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    worker = WorkerProcess()
    try:
        with pytest.raises(WorkerError, match=message):
            worker.send("describe", model=None).wait()
    finally:
        worker.stop()
