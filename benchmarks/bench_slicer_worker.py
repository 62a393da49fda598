"""The Slicer logic's worker process: its start cost, a segmentation through it beside the CLI's, Cancel.

Runs outside Slicer with the slicer-core wheel (a real vtkMRMLScene and nodes) and a real worker
process started with this interpreter (inside Slicer it is PythonSlicer; the start cost differs by
the launcher's few tens of milliseconds). Measured on one volume (the 1 mm MNI152 brain, a crop of it
with --smoke, or its central axial slices with --slices):

* start cost of a fresh worker: Python up, torch imported, engine imported, the model's metadata read;
* end to end through ``SegmentationLogic.segment`` with a fresh worker (start + model load + network
  + volume and maps through files + nodes) and with the worker kept from that run;
* ``multitaskseg segment`` on the same volume as a NIfTI file (a fresh process, as a user runs it);
* Cancel: from ``run.cancel()`` to the worker dead and its files removed, mid-network;
* the idle worker's resident memory after a run (what keeping it alive costs).

    .venv/bin/python benchmarks/bench_slicer_worker.py [--rounds 2] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import SHIPPED_MODEL, add_common_arguments, machine_state, write_result  # noqa: E402


def brain(smoke: bool, slices: int = 0):
    """The MNI152 1 mm brain; ``slices``: only that many central axial slices (a shared, loaded CPU
    takes minutes for the whole brain); a smoke run: a small crop."""
    from MultiTaskSegLib.data.brain_templates import mni152_brain_case

    volume = mni152_brain_case()[0]
    if smoke:
        return volume.with_array(np.ascontiguousarray(volume.array[60:76, 80:104, 70:94]))
    if slices:
        first = (volume.array.shape[0] - slices) // 2
        cropped = volume.with_array(np.ascontiguousarray(volume.array[first:first + slices]))
        origin = volume.index_to_physical([0, 0, first])  # keep the slab where it was
        return type(volume)(cropped.array, volume.spacing, tuple(origin), volume.direction)
    return volume


def volume_node(scene, volume):
    """A scalar volume node holding ``volume`` (LPS -> RAS)."""
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "brain")
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array, dtype=np.float32))
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(volume.direction) @ np.diag(volume.spacing)
    matrix[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(volume.origin)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    return node


def resident_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return round(int(line.split()[1]) / 1024, 1)
    except (OSError, StopIteration):
        return float("nan")


def start_cost(model: str) -> dict:
    """A fresh worker: seconds from Popen to each stage, and to the model's metadata read."""
    from MultiTaskSegLib.slicer.worker_client import WorkerProcess

    worker = WorkerProcess()
    worker.start()
    begun = worker.started_at
    request = worker.send("describe", model=model)
    request.wait()
    answered = time.time()
    ready = worker.ready
    worker.stop()
    return {"python_started_s": round(ready["entered"] - begun, 3),
            "torch_imported_s": round(ready["torch_imported"] - begun, 3),
            "engine_imported_s": round(ready["engine_imported"] - begun, 3),
            "model_described_s": round(answered - begun, 3)}


def segment_through_logic(logic, node, model: str) -> dict:
    """``logic.segment``'s steps, timed: the volume to a file, the worker (model, network, maps to a
    file, as it reports them), the maps read back, the nodes made."""
    started = time.perf_counter()
    run = logic.segmentation_run(node, model=model, device="cpu").start()
    sent = time.perf_counter()
    maps = run.wait()
    answered = time.perf_counter()
    segmentation = logic.apply_result(node, maps, device=run.device)
    done = time.perf_counter()
    logic.forget(segmentation)
    node.GetScene().RemoveNode(segmentation)
    return {"seconds": round(done - started, 2), "volume_to_file_s": round(sent - started, 3),
            "worker_s": run.seconds, "worker_total_and_maps_read_s": round(answered - sent, 2),
            "nodes_s": round(done - answered, 3), "device": run.device}


def segment_with_cli(image: Path, model: str, out: Path) -> float:
    command = [sys.executable, "-m", "MultiTaskSegLib.cli", "segment", str(image), "-o", str(out), "--model", model,
               "--device", "cpu", "--overwrite"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - started, 2)


def cancel_latency(logic, node, model: str) -> dict:
    run = logic.segmentation_run(node, model=model, device="cpu").start()
    while not run.finished:  # the engine's first stage, then a second: the network is running
        if any(stage.startswith("Resampling to the canonical") for _, stage in run.poll()):
            time.sleep(1.0)
            break
        time.sleep(0.01)
    pid, folder = logic.worker.pid, logic.worker.folder
    started = time.perf_counter()
    run.cancel()
    seconds = time.perf_counter() - started
    alive = True
    try:
        os.kill(pid, 0)
    except OSError:
        alive = False
    return {"seconds": round(seconds, 3), "worker_alive_after": alive, "files_left": os.path.exists(folder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slices", type=int, default=0, help="only this many central axial slices of the brain")
    args = parser.parse_args()
    import slicer
    from MultiTaskSegLib.engine.bundle import make_random_bundle
    from MultiTaskSegLib.engine.image_writing import write_volume
    from MultiTaskSegLib.slicer.logic import SegmentationLogic

    machine = machine_state()
    volume = brain(args.smoke, args.slices)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if SHIPPED_MODEL.exists() and not args.smoke:
            model, model_note = str(SHIPPED_MODEL), f"shipped ({SHIPPED_MODEL.name})"
        else:
            model, model_note = str(make_random_bundle(0, n_layers=3).save(folder / "m.safetensors")), "random, 3 layers"
        image = write_volume(volume, folder / "brain.nii.gz")
        scene = slicer.vtkMRMLScene()
        node = volume_node(scene, volume)
        rounds = []
        for _ in range(1 if args.smoke else args.rounds):
            entry = {"start": start_cost(model), "cli_s": segment_with_cli(image, model, folder / "out.nii.gz")}
            logic = SegmentationLogic()
            entry["logic_fresh_worker"] = segment_through_logic(logic, node, model)
            entry["logic_kept_worker"] = segment_through_logic(logic, node, model)
            entry["idle_worker_resident_mb"] = resident_mb(logic.worker.pid)
            entry["cancel"] = cancel_latency(logic, node, model)
            logic.shutdown()
            rounds.append(entry)
            print(entry, flush=True)

    def best(path):
        values = []
        for entry in rounds:
            value = entry
            for key in path:
                value = value[key]
            values.append(value)
        return min(values)

    summary = {
        "start_torch_imported_s": best(["start", "torch_imported_s"]),
        "start_engine_imported_s": best(["start", "engine_imported_s"]),
        "start_model_described_s": best(["start", "model_described_s"]),
        "cli_s": best(["cli_s"]),
        "logic_fresh_worker_s": best(["logic_fresh_worker", "seconds"]),
        "logic_kept_worker_s": best(["logic_kept_worker", "seconds"]),
        "cancel_s": max(entry["cancel"]["seconds"] for entry in rounds),
        "idle_worker_resident_mb": statistics.median(entry["idle_worker_resident_mb"] for entry in rounds),
    }
    write_result("slicer_worker", {
        "benchmark": "slicer_worker", "volume": f"MNI152 1 mm brain{f', {args.slices} central axial slices' if args.slices else ''}",
        "volume_shape_zyx": list(volume.array.shape),
        "spacing_mm": list(volume.spacing), "model": model_note, "device": "cpu", "rounds": rounds,
        "summary_best_of_rounds": summary, "machine": machine,
    }, args.results)


if __name__ == "__main__":
    main()
