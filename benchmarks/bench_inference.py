"""Inference speed on a real 1 mm brain, every path against its own FLOP bound measured in the same run.

Same weights, same volume (the skull-stripped MNI152 T1, 182 x 218 x 182 at 1 mm), one run:

* the attainable rates: large bf16 and fp32 matrix products (the bound) and one conv layer, at
  the start and the end of the run (each figure the best of the two);
* the paper's per-voxel patch formulation, timed on random brain voxels and extrapolated (it
  would take hours in full): fp32 as in the paper, and with the inference settings;
* end to end from the NIfTI file to the labelmap, each run in a fresh process (its own peak RSS):
  ``Segmenter.predict`` as users run it (best of two), the same steps one by one with each timed
  (dense fp32, and the Segmenter's precision), and the whole ``multitaskseg segment`` command;
* one slab of the brain, one change at a time (network only), and the conv stack on one batch of
  planes: its ELUs' share and the heap setting's gain;
* torch.compile of the conv stack: compile time against time saved.

    .venv/bin/python benchmarks/bench_inference.py [--patch-voxels 256] [--quick] [--smoke] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_common_arguments, attainable_rates, conv_flop_bound, finish_machine_state,  # noqa: E402
                    machine_state, model_bundle, patch_formulation, refresh_flop_bounds, run_child, run_command,
                    write_result)
from inference_worker import agreement  # noqa: E402
from slab_ablation import compile_check, conv_stack_checks, slab_ablation  # noqa: E402

from MultiTaskSegLib.engine.devices import default_precision  # noqa: E402

WORKER = Path(__file__).resolve().parent / "inference_worker.py"
CPU = torch.device("cpu")
ABLATION_ROUNDS = 2  # each row's figure is its best round
SLAB = (84, 96)  # the ablation's 12 planes: mid-brain, where the foreground fills its box


def brain(smoke: bool):
    """The brain volume (a small crop of it in a smoke run)."""
    from MultiTaskSegLib.data.brain_templates import mni152_brain_case

    volume = mni152_brain_case()[0]
    if smoke:
        volume = volume.with_array(np.ascontiguousarray(volume.array[80:92, 80:120, 60:100]))
    return volume


def end_to_end(image_file: Path, model_file: Path, mode: str, precision: str, runs: int, tmp: Path) -> dict:
    """``runs`` fresh processes of inference_worker.py; the fastest is reported, all times kept.

    Each run's labelmap is saved in ``tmp``: ``labels_files`` (not written to the JSON) lists them.
    """
    results = []
    for number in range(runs):
        load = os.getloadavg()[0]
        labels = tmp / f"{mode}-{precision}-{number}.npy"
        run = run_child(WORKER, ["--mode", mode, "--input", str(image_file), "--model", str(model_file),
                                 "--precision", precision, "--device", "cpu", "--labels", str(labels)])
        run["load_average_1min_before_after"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        run["labels_file"] = labels
        results.append(run)
        print(f"  {mode} {run['precision']}: {run['seconds_end_to_end']:.1f} s, "
              f"{run['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    best = dict(min(results, key=lambda run: run["seconds_end_to_end"]))
    best["seconds_all_runs"] = [run["seconds_end_to_end"] for run in results]
    best["loads_1min"] = [x for run in results for x in run["load_average_1min_before_after"]]
    best["labels_files"] = [run.pop("labels_file") for run in results]
    best.pop("labels_file")
    return best


def whole_command(image_file: Path, model_file: Path, runs: int, tmp: Path, device: str = "cpu") -> dict:
    """``multitaskseg segment`` on the file as a user runs it: imports, model load, read, segment, write.

    Its labelmap, read back, is saved in ``tmp`` (``labels_files``, not written to the JSON).
    """
    from MultiTaskSegLib.engine.image_reading import read_volume

    output = tmp / "labels.nii.gz"
    command = [sys.executable, "-m", "MultiTaskSegLib.cli", "segment", str(image_file), "-o", str(output),
               "--model", str(model_file), "--device", device, "--overwrite"]
    runs_ = []
    for _ in range(runs):
        runs_.append(run_command(command))
        print(f"  multitaskseg segment: {runs_[-1]['seconds']:.1f} s", flush=True)
    labels = tmp / "command.npy"
    np.save(labels, read_volume(output).array.astype(np.uint8))
    return {"command": f"multitaskseg segment IMAGE -o labels.nii.gz --model MODEL --device {device}",
            "seconds_first": runs_[0]["seconds"], "seconds": min(r["seconds"] for r in runs_),
            "seconds_all_runs": [r["seconds"] for r in runs_], "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs_),
            "labels_files": [labels]}


def agreements(result: dict) -> dict:
    """Every labelmap of the run against the first ``Segmenter.predict`` run's (and drops the files).

    ``Segmenter.predict`` runs should agree exactly with each other and with the stage-by-stage run
    at the same precision; the command, likewise; fp32 against the Segmenter's reduced precision
    differs on near-ties only.
    """
    e2e = result["end_to_end"]
    entries = dict(e2e, whole_command=result["whole_command"])
    files = {name: entry.pop("labels_files") for name, entry in entries.items()}
    reference = np.load(files["segmenter"][0])
    out = {}
    for name, paths in files.items():
        for number, path in enumerate(paths):
            if (name, number) != ("segmenter", 0):
                out[f"{name}_{number}" if len(paths) > 1 else name] = agreement(reference, np.load(path))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-voxels", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="skip dense fp32 end to end and torch.compile")
    add_common_arguments(parser)
    args = parser.parse_args()
    smoke = args.smoke
    started = time.perf_counter()
    result = {"benchmark": "inference", "smoke": smoke, "machine": machine_state(0 if smoke else 1.0)}
    print(f"machine: {result['machine']['cpu']}, load {result['machine']['load_average_start']}", flush=True)
    rates = attainable_rates(CPU, smoke)
    bundle, model_note = model_bundle(smoke=smoke)
    precision = default_precision(CPU)
    volume = brain(smoke)
    from MultiTaskSegLib.engine.normalization import normalize

    mask = volume.array > 0
    image = normalize(volume.array, "MR", bundle.normalization)
    brain_voxels = int(mask.sum())
    result.update({"model": model_note, "precision": precision,
                   "volume": {"name": "MNI152 T1 1 mm, skull-stripped" + (" (smoke: a crop)" if smoke else ""),
                              "shape": list(mask.shape), "voxels": int(mask.size), "brain_voxels": brain_voxels}})

    print("patch formulation ...", flush=True)
    n = 8 if smoke else args.patch_voxels
    result["patch"] = {"fp32": patch_formulation(bundle.model, image, mask, n, CPU, rounds=1 if smoke else 2),
                       "fast": patch_formulation(bundle.model, image, mask, n, CPU, precision, rounds=1 if smoke else 2)}
    for entry in result["patch"].values():
        entry["flop_bound"] = conv_flop_bound(entry["conv_flops_per_voxel"] * brain_voxels,
                                              entry["extrapolated_seconds"], rates, entry["precision"])

    print("ablation on one slab ...", flush=True)
    z0, z1 = (4, 8) if smoke else SLAB
    result["ablation_rounds"] = 1 if smoke else ABLATION_ROUNDS
    result["ablation_slab"] = {"planes": [z0, z1], "rows": slab_ablation(bundle.model, image, mask, z0, z1, rates,
                                                                         result["ablation_rounds"], precision)}

    from MultiTaskSegLib.engine.image_writing import write_volume

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image_file, model_file = tmp / "brain.nii.gz", tmp / "model.safetensors"
        write_volume(volume, image_file)
        bundle.save(model_file)
        e2e = result["end_to_end"] = {}
        print("end to end ...", flush=True)
        e2e["segmenter"] = end_to_end(image_file, model_file, "segmenter", "auto", 1 if smoke else 2, tmp)
        e2e["stages"] = end_to_end(image_file, model_file, "stages", "auto", 1, tmp)
        if not (args.quick or smoke):  # the same code as the run above, at another precision
            e2e["stages_fp32"] = end_to_end(image_file, model_file, "stages", "fp32", 1, tmp)
        print("the whole command ...", flush=True)
        result["whole_command"] = whole_command(image_file, model_file, 1 if smoke else 2, tmp)
        result["labels_against_the_first_segmenter_run"] = agreements(result)
    add_bounds(result, rates)

    print("conv stack on one batch of planes ...", flush=True)
    result["conv_stack"] = conv_stack_checks(bundle.model, rates, precision, 24 if smoke else 232,
                                             rounds=1 if smoke else 2, repeats=1 if smoke else 3)
    if not (args.quick or smoke):  # compiling takes tens of seconds: not a smoke check
        print("torch.compile ...", flush=True)
        result["torch_compile"] = compile_check(bundle.model, precision)

    result["attainable_flops_per_second"] = attainable_rates(CPU, smoke, previous=rates)
    refresh_flop_bounds(result, result["attainable_flops_per_second"])
    finish_machine_state(result["machine"], 0 if smoke else 1.0)
    result["summary"] = summary(result)
    result["seconds_whole_benchmark"] = time.perf_counter() - started
    print(json.dumps(result["summary"], indent=2))
    write_result("inference", result, args.results)
    check_agreement(result, smoke)


def check_agreement(result: dict, smoke: bool) -> None:
    """Fail when the stage-by-stage mirror or the command strays from ``Segmenter.predict``: exactly in
    a smoke run (one slab, one process state), beyond near-ties (0.1% of voxels) in a full run."""
    least = 1.0 if smoke else 0.999
    for name, entry in result["labels_against_the_first_segmenter_run"].items():
        if name.startswith("stages_fp32"):
            continue  # another precision: differs on near-ties by design
        if entry["equal_fraction"] < least:
            sys.exit(f"{name}: its labelmap differs from Segmenter.predict's on {entry['differing_voxels']:,} voxels; "
                     "inference_worker.py's stages must follow Segmenter.predict, and the command must give "
                     "what it gives")
        if entry["differing_voxels"]:
            print(f"note: {name} differs from the first Segmenter.predict run on {entry['differing_voxels']:,} "
                  "voxels (near-ties)", flush=True)


def add_bounds(result: dict, rates: dict) -> None:
    """Each end-to-end path against the FLOP bound of its conv stack (FLOPs counted in the stages run)."""
    e2e = result["end_to_end"]
    for entry in e2e.values():
        flops = entry.get("conv_stack_flops") or e2e["stages"]["conv_stack_flops"]
        entry["volume_voxels_per_second"] = result["volume"]["voxels"] / entry["seconds_end_to_end"]
        entry["flop_bound"] = conv_flop_bound(flops, entry["seconds_end_to_end"], rates, entry["precision"])
        if "seconds_conv_stack" in entry:
            entry["conv_stack_flop_bound"] = conv_flop_bound(flops, entry["seconds_conv_stack"], rates,
                                                             entry["precision"])
    command = result["whole_command"]
    command["flop_bound"] = conv_flop_bound(e2e["stages"]["conv_stack_flops"], command["seconds"], rates,
                                            e2e["stages"]["precision"])


def summary(result: dict) -> dict:
    e2e, rates = result["end_to_end"], result["attainable_flops_per_second"]
    fast, stages = e2e["segmenter"], e2e["stages"]
    conv = stages["conv_stack_flop_bound"]
    return {
        "brain_end_to_end_seconds": fast["seconds_end_to_end"],
        "brain_end_to_end_times_flop_bound": fast["flop_bound"]["times_flop_bound"],
        "conv_stack_seconds": conv["seconds"],
        "conv_stack_share_of_attainable": 1 / conv["times_flop_bound"],
        "whole_command_seconds": result["whole_command"]["seconds"],
        "whole_command_times_flop_bound": result["whole_command"]["flop_bound"]["times_flop_bound"],
        "fastest_over_patch_fp32": result["patch"]["fp32"]["extrapolated_seconds"] / fast["seconds_end_to_end"],
        "bf16_over_fp32_matmul": rates["bf16_matmul"] / rates["fp32_matmul"],
        "labels_equal_fraction": {name: entry["equal_fraction"]
                                  for name, entry in result["labels_against_the_first_segmenter_run"].items()},
    }


if __name__ == "__main__":
    main()
