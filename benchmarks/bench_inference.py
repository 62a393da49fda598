"""Inference speed on a real 1 mm brain: patch formulation vs dense fp32 vs the fastest path.

One run, same weights, same volume (the skull-stripped MNI152 T1, 182 x 218 x 182 at 1 mm):

* (a) the paper's per-voxel patch formulation, timed on a random subset of the brain's voxels and
  extrapolated to all of them (it would take hours in full): fp32 as in the paper, and with the
  fast settings (folded BN, bf16, channels-last) for a like-for-like comparison;
* (b) dense fp32 and (c) the fastest path, end to end from the file: read, resample, normalise,
  network, back to the input grid, labelmap. Each in its own process, so its peak resident memory
  (ru_maxrss) is its own; the conv stack's time and exact FLOPs are recorded inside it;
* the attainable FLOP rate (large bf16 and fp32 matrix products) in the same run, so the conv
  stack's achieved rate is a fraction of what this machine can do;
* an ablation on one 12-plane slab of the brain: what each change buys (network only);
* torch.compile of the conv stack: compile time against time saved.

    .venv/bin/python benchmarks/bench_inference.py [--patch-voxels 256] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (busy_processes, machine_state, matmul_flops_per_second, model_bundle, peak_rss_bytes,  # noqa: E402
                    run_child, write_result)

from MultiTaskSegLib.engine import dense

from MultiTaskSegLib.engine import segmenter as pipeline# noqa: E402
from MultiTaskSegLib.engine.network import conv_stack_flops, extract_patches, pad_volume, patch_logits
from MultiTaskSegLib.engine.prepared_model import inference_model
from MultiTaskSegLib.engine.slab_loop import SlabBox
from MultiTaskSegLib.engine.slab_sizing import DenseOptions, foreground_box

PATCH_BATCH = 64
PATCH_ROUNDS = 2
ABLATION_ROUNDS = 3  # each row's figure is its best round

END_TO_END = {
    # the dense formulation at full precision (BN folded, which is exact; channels-last)
    "dense_fp32": {"precision": "fp32", "runs": 1},
    # what Segmenter picks by itself on this machine; the best of two runs (a shared virtual machine)
    "fastest": {"precision": "auto", "runs": 2},
}


# ---------------------------------------------------------------------------------------------- worker

def instrument_conv_stack(model) -> dict:
    """Accumulate wall time and exact FLOPs of every conv-stack call of ``model``."""
    totals = {"seconds": 0.0, "flops": 0}
    features = model.features

    def timed(planes):
        start = time.perf_counter()
        out = features(planes)
        if out.is_cuda:
            torch.cuda.synchronize()
        totals["seconds"] += time.perf_counter() - start
        totals["flops"] += conv_stack_flops(model.arch, planes.shape[0], planes.shape[2], planes.shape[3])
        return out

    model.features = timed
    return totals


def worker(args) -> None:
    """Segment one file end to end with one configuration; print one JSON line."""
    from MultiTaskSegLib.engine.bundle import load_bundle
    from MultiTaskSegLib.engine.image_reading import read_volume

    bundle = load_bundle(args.model)
    segmenter = pipeline.Segmenter(bundle, device=args.device, precision=args.precision)
    conv = instrument_conv_stack(segmenter.inference_model)
    network = {"seconds": 0.0}
    run_dense = pipeline.dense_probabilities

    def timed_dense(*a, **k):
        start = time.perf_counter()
        out = run_dense(*a, **k)
        network["seconds"] += time.perf_counter() - start
        return out

    pipeline.dense_probabilities = timed_dense
    start = time.perf_counter()
    volume = read_volume(args.input)
    maps = segmenter.predict(volume)
    labels = maps.labelmap()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "precision": segmenter.precision, "threads": torch.get_num_threads(),
        "seconds_end_to_end": seconds, "seconds_network": network["seconds"],
        "seconds_conv_stack": conv["seconds"], "conv_stack_flops": conv["flops"],
        "voxels": int(labels.size), "peak_rss_bytes": peak_rss_bytes(),
        "labels_checksum": int(np.bincount(labels.ravel().astype(np.int64)).argmax()),
    }))


# ---------------------------------------------------------------------------------------------- parts

def patch_formulation(model, image: np.ndarray, mask: np.ndarray, n: int, fast: bool, seed: int = 0) -> dict:
    """Seconds per voxel of the per-voxel formulation on ``n`` random brain voxels."""
    rng = np.random.default_rng(seed)
    voxels = np.argwhere(mask)
    centres = voxels[rng.choice(len(voxels), size=n, replace=False)]
    if fast:
        net = inference_model(model, "bf16", "cpu", channels_last=True)
        padded = pad_volume(torch.from_numpy(image), model.arch.halo)

        def classify(chosen, batch):
            with torch.inference_mode():
                for start in range(0, len(chosen), batch):
                    patches = extract_patches(padded, torch.as_tensor(chosen[start:start + batch]), model.arch.halo)
                    net(*(p.contiguous(memory_format=torch.channels_last) for p in patches))  # fp32 in: FullPrecisionInput
    else:
        def classify(chosen, batch):
            patch_logits(model.eval(), image, chosen, batch=batch)
    batch = min(n, PATCH_BATCH)
    classify(centres[:batch], batch)  # warm-up with the timed batch shape (oneDNN builds kernels per shape)
    rounds = []
    for _ in range(PATCH_ROUNDS):  # the best round: a neighbour's burst in a short window skews the ratio
        start = time.perf_counter()
        classify(centres, batch)
        rounds.append(time.perf_counter() - start)
    per_voxel = min(rounds) / n
    return {"timed_voxels": n, "rounds_seconds": [round(r, 2) for r in rounds], "seconds_per_voxel": per_voxel,
            "extrapolated_seconds_for_brain": per_voxel * int(mask.sum()),
            "settings": "folded BN, bf16, channels-last" if fast else "network as trained, fp32"}


@contextlib.contextmanager
def layer_outputs_in_fresh_mappings():
    """The memory setting before this change: every allocation of 1 MiB or more by mmap for the whole
    pass, so each conv layer's output faults in a fresh, zeroed mapping (same plane batches)."""
    saved = dense._heap_reused_by_conv_layers
    libc = dense._glibc()
    dense._heap_reused_by_conv_layers = lambda device: contextlib.nullcontext(lambda: None)
    if libc is not None:
        libc.mallopt(dense.M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        dense._heap_reused_by_conv_layers = saved


def ablation(model, image: np.ndarray, mask: np.ndarray, z0: int = 84, z1: int = 96) -> list:
    """Network time on one slab (planes z0:z1 with their context), one change at a time."""
    y0, y1, x0, x1 = foreground_box(mask[z0:z1])
    target_voxels = int(mask[z0:z1].sum())
    whole = SlabBox(z0, z1, y0, y1, x0, x1)
    grouped = SlabBox(z0, z1, y0, y1, x0, x1, mask[z0:z1, y0:y1, x0:x1])
    # (name, path, box, options, the row it is compared with, the setting it runs under)
    reference_fp32 = "network as trained, fp32 (BN + ELU per layer)"
    fresh_mappings = "bf16 weights and activations, BN folded, channels-last, layer outputs in fresh mmaps"
    heap = "bf16 weights and activations, BN folded, channels-last, layer outputs reuse the heap"
    plain = contextlib.nullcontext
    steps = [
        (reference_fp32, "reference", whole, DenseOptions("fp32"), None, plain),
        ("fp32 + channels-last", "reference", whole, DenseOptions("fp32", channels_last=True), reference_fp32, plain),
        ("bf16 autocast + channels-last", "reference", whole,
         DenseOptions("bf16", channels_last=True, fold_batchnorm=False), "fp32 + channels-last", plain),
        ("fp32, BN folded into the convs, channels-last", "fast", whole, DenseOptions("fp32", channels_last=True),
         "fp32 + channels-last", plain),
        (fresh_mappings, "fast", whole, DenseOptions("bf16", channels_last=True), "bf16 autocast + channels-last",
         layer_outputs_in_fresh_mappings),
        (heap, "fast", whole, DenseOptions("bf16", channels_last=True), fresh_mappings, plain),
        ("+ foreground boxes per plane group, head on the samples only (the fastest path)", "fast", grouped,
         DenseOptions("bf16", channels_last=True), heap, plain),
    ]
    seconds_of = {name: float("inf") for name, *_ in steps}
    for round_ in range(ABLATION_ROUNDS):  # rounds, not repeats: a neighbour's burst hits every row alike
        for name, path, box, options, against, setting in steps:
            net = inference_model(model, options.precision, "cpu", options.channels_last) if path == "fast" else model.eval()
            compute = dense.slab_probabilities if path == "fast" else dense._reference_slab_probabilities
            with torch.inference_mode(), setting():
                start = time.perf_counter()
                compute(net, image, box, options, torch.device("cpu"))
                seconds_of[name] = min(seconds_of[name], time.perf_counter() - start)
            print(f"  ablation round {round_ + 1}: {name}: {seconds_of[name]:.1f} s (best so far)", flush=True)
    rows = []
    for name, path, box, options, against, setting in steps:
        seconds = seconds_of[name]
        rows.append({"configuration": name, "seconds": round(seconds, 2),
                     "speedup_over_reference_fp32": round(seconds_of[reference_fp32] / seconds, 2),
                     "compared_with": against,
                     "gain_over_compared": round(seconds_of[against] / seconds, 2) if against else None,
                     "target_voxels_per_second": round(target_voxels / seconds)})
    return rows


def elu_share(model, size: int = 232, repeats: int = 4) -> dict:
    """The conv stack on one engine-sized batch of planes, with and without its ELUs: how much of the
    stack's time the activations take (they cannot be fused into oneDNN's convolutions, see findings)."""
    net = inference_model(model, "bf16", "cpu", channels_last=True)
    without = inference_model(model, "bf16", "cpu", channels_last=True)
    without.conv_stack = torch.nn.Sequential(*[torch.nn.Identity() if isinstance(layer, torch.nn.ELU) else layer
                                               for layer in net.conv_stack])
    planes = dense._planes_per_batch(DenseOptions("bf16"), model.arch, size, size, 2, torch.device("cpu"))
    x = torch.randn(planes, 1, size, size).contiguous(memory_format=torch.channels_last)
    flops = conv_stack_flops(model.arch, planes, size, size)
    best = {}
    with torch.inference_mode(), dense._heap_reused_by_conv_layers(torch.device("cpu")):
        for name, candidate in (("with_elu", net), ("without_elu", without)) * 2:
            candidate.features(x)
            start = time.perf_counter()
            for _ in range(repeats):
                candidate.features(x)
            best[name] = min(best.get(name, float("inf")), (time.perf_counter() - start) / repeats)
    return {"planes": planes, "plane_size": size, "seconds_with_elu": best["with_elu"],
            "seconds_without_elu": best["without_elu"],
            "elu_share_of_stack_time": 1 - best["without_elu"] / best["with_elu"],
            "conv_layers_flops_per_second": flops / best["without_elu"],
            "stack_flops_per_second": flops / best["with_elu"]}


def compile_check(model, planes: int = 8, size: int = 232, repeats: int = 3) -> dict:
    """Does torch.compile (inductor) speed the bf16 conv stack up, and does the compile time pay off?"""
    net = inference_model(model, "bf16", "cpu", channels_last=True)
    x = torch.randn(planes, 1, size, size).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)

    def best_of(fn):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.inference_mode():
        net.features(x)
        eager = best_of(net.features)
        try:
            compiled = torch.compile(net.conv_stack)
            start = time.perf_counter()
            compiled(x)
            compile_seconds = time.perf_counter() - start
            fast = best_of(compiled)
        except Exception as error:  # no compiler, unsupported platform: report, do not fail
            return {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    return {"planes": planes, "plane_size": size, "eager_seconds": eager, "compiled_seconds": fast,
            "compile_seconds": compile_seconds, "speedup": eager / fast,
            "note": "plane-group shapes vary per slab, so each new shape would compile again"}


# ---------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input"), parser.add_argument("--model"), parser.add_argument("--precision")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patch-voxels", type=int, default=256, help="a multiple of 64")
    parser.add_argument("--quick", action="store_true", help="skip dense fp32 end to end and torch.compile")
    parser.add_argument("--smoke", action="store_true",
                        help="a small crop of the brain, to check the script (writes inference_smoke.json)")
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from MultiTaskSegLib.data.brain_templates import mni152_brain_case
    from MultiTaskSegLib.engine.normalization import normalize
    from MultiTaskSegLib.engine.image_writing import write_volume

    result = {"benchmark": "inference", "machine": machine_state()}
    print(f"machine: {result['machine']['cpu']}, load {result['machine']['load_average_before']}", flush=True)
    result["attainable_flops_per_second"] = {
        "bf16_matmul": matmul_flops_per_second(torch.bfloat16, repeats=5),
        "fp32_matmul": matmul_flops_per_second(torch.float32, repeats=5)}
    bundle, model_note = model_bundle()
    volume, _ = mni152_brain_case()
    if args.smoke:
        volume = volume.with_array(np.ascontiguousarray(volume.array[80:92, 80:140, 60:120]))
        args.patch_voxels = 64
    mask = volume.array > 0
    image = normalize(volume.array, "MR", bundle.normalization)
    voxels = int(volume.array.size)
    result.update({"model": model_note, "volume": {"name": "MNI152 T1 1 mm, skull-stripped", "shape": list(mask.shape),
                                                   "voxels": voxels, "brain_voxels": int(mask.sum())}})

    print("patch formulation ...", flush=True)
    result["patch"] = {"fp32": patch_formulation(bundle.model, image, mask, args.patch_voxels, fast=False),
                       "fast_settings": patch_formulation(bundle.model, image, mask, args.patch_voxels, fast=True)}
    for entry in result["patch"].values():
        entry["volume_voxels_per_second"] = voxels / entry["extrapolated_seconds_for_brain"]

    print("ablation on one slab ...", flush=True)
    result["ablation_rounds"] = ABLATION_ROUNDS
    result["ablation_slab"] = ablation(bundle.model, image, mask, *((4, 8) if args.smoke else ()))

    with tempfile.TemporaryDirectory() as tmp:
        image_file, model_file = Path(tmp) / "brain.nii.gz", Path(tmp) / "model.safetensors"
        write_volume(volume, image_file)
        bundle.save(model_file)
        result["end_to_end"] = {}
        for name, settings in END_TO_END.items():
            if args.quick and name != "fastest":
                continue
            print(f"end to end: {name} ...", flush=True)
            runs = []
            for _ in range(settings["runs"]):  # each in a fresh process; the fastest is reported
                load_before = os.getloadavg()[0]
                run = run_child(Path(__file__), ["--worker", "--input", str(image_file), "--model", str(model_file),
                                                 "--precision", settings["precision"], "--device", args.device])
                run["load_average_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                runs.append(run)
            child = min(runs, key=lambda run: run["seconds_end_to_end"])
            child["seconds_end_to_end_all_runs"] = [round(run["seconds_end_to_end"], 2) for run in runs]
            child["volume_voxels_per_second"] = voxels / child["seconds_end_to_end"]
            child["conv_stack_flops_per_second"] = child["conv_stack_flops"] / max(1e-9, child["seconds_conv_stack"])
            peak_key = "bf16_matmul" if child["precision"] == "bf16" else "fp32_matmul"
            child["conv_stack_fraction_of_attainable"] = (child["conv_stack_flops_per_second"]
                                                          / result["attainable_flops_per_second"][peak_key])
            child["fraction_measured_against"] = peak_key
            result["end_to_end"][name] = child
            print(f"  {child['seconds_end_to_end']:.1f} s, {child['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)

    print("ELU share of the conv stack ...", flush=True)
    result["elu_share"] = elu_share(bundle.model, *((60,) if args.smoke else ()))
    if not args.quick:
        print("torch.compile ...", flush=True)
        result["torch_compile"] = compile_check(bundle.model, *((1, 60) if args.smoke else ()))

    fastest = result["end_to_end"]["fastest"]
    result["summary"] = {
        "patch_fp32_voxels_per_second": result["patch"]["fp32"]["volume_voxels_per_second"],
        "dense_fp32_voxels_per_second": result["end_to_end"].get("dense_fp32", {}).get("volume_voxels_per_second"),
        "fastest_voxels_per_second": fastest["volume_voxels_per_second"],
        "fastest_over_patch_fp32": fastest["volume_voxels_per_second"]
        / result["patch"]["fp32"]["volume_voxels_per_second"],
        "fastest_over_patch_same_settings": fastest["volume_voxels_per_second"]
        / result["patch"]["fast_settings"]["volume_voxels_per_second"],
        "fastest_conv_fraction_of_attainable": fastest["conv_stack_fraction_of_attainable"],
        "brain_end_to_end_seconds": fastest["seconds_end_to_end"],
    }
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"]["other_busy_processes_after"] = busy_processes()
    # the attainable rate is the best the machine showed: measured again at the end, a neighbour's
    # burst during either measurement cannot lower it
    for key, dtype in (("bf16_matmul", torch.bfloat16), ("fp32_matmul", torch.float32)):
        again = matmul_flops_per_second(dtype, repeats=5)
        result["attainable_flops_per_second"][key] = max(result["attainable_flops_per_second"][key], again)
    for child in result["end_to_end"].values():
        peak = result["attainable_flops_per_second"][child["fraction_measured_against"]]
        child["conv_stack_fraction_of_attainable"] = child["conv_stack_flops_per_second"] / peak
    result["summary"]["fastest_conv_fraction_of_attainable"] = fastest["conv_stack_fraction_of_attainable"]
    # short samples can miss a neighbour that ran in between; a 1-minute load above the cores cannot
    loads = [x for e in result["end_to_end"].values() for x in e["load_average_1min_before_after"]]
    result["machine"]["max_load_average_around_runs"] = max(loads)
    result["machine"]["cpu_shared"] = bool(result["machine"]["other_busy_processes"]
                                          or result["machine"]["other_busy_processes_after"]
                                          or max(loads) > result["machine"]["physical_cores"] + 0.7)
    print(json.dumps(result["summary"], indent=2))
    print(f"written {write_result('inference_smoke' if args.smoke else 'inference', result)}")


if __name__ == "__main__":
    main()
