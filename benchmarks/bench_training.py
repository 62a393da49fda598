"""Training throughput: dense blocks against isolated 51x51 patches, in voxel-samples per second.

Both do the same thing per sample: the paper's network in training mode (batch norm, dropout),
cross-entropy weighted equally per sample, backward, one Adam step, under autocast to the
training precision of the device (``devices.default_precision(device, training=True)``, with
channels-last). Isolated patches: the paper's mini-batch of 210 voxels, three 51x51 patches each.
Dense blocks: as the training loop draws them, blocks of target voxels with their 25-voxel context,
every voxel a sample. bench_gpu.py runs the same on a GPU with larger batches.

    .venv/bin/python benchmarks/bench_training.py [--steps 3] [--smoke] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOKE_LAYERS, add_common_arguments, best_seconds, finish_machine_state, machine_state  # noqa: E402
from common import write_result  # noqa: E402

from MultiTaskSegLib.engine.devices import autocast, default_precision  # noqa: E402
from MultiTaskSegLib.engine.network import Architecture, TriplanarCNN, crops_logits, extract_patches, pad_volume  # noqa: E402

PAPER_BATCH = 210


def training_throughput(device: torch.device, arch: Architecture, patch_batches: Sequence[int], block: int,
                        blocks: int, steps: int, precision: str) -> dict:
    """Seconds per step and voxel-samples per second of isolated patches (one entry per batch size)
    and of dense blocks; a fresh model and Adam for each."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    halo, classes = arch.halo, arch.num_classes
    out = {"precision": precision, "n_layers": arch.n_layers}

    def fresh():
        model = TriplanarCNN(arch).to(device).train()
        return model, torch.optim.Adam(model.parameters(), lr=1e-4)

    def measure(name: str, step, samples: int) -> None:
        step()  # one warm-up step: kernels are built (or searched, with cuDNN autotuning) on the first
        seconds = best_seconds(lambda: [step() for _ in range(steps)], 1, device, warmups=0) / steps
        out[name] = {"samples_per_step": samples, "seconds_per_step": seconds,
                     "voxel_samples_per_second": samples / seconds}

    side = 2 * block + 2
    volume = pad_volume(torch.from_numpy(rng.normal(0.5, 0.3, (side,) * 3).astype(np.float32)).to(device), halo)
    for batch in patch_batches:
        model, optimizer = fresh()
        centres = torch.from_numpy(rng.integers(0, side, size=(batch, 3))).to(device)
        labels = torch.from_numpy(rng.integers(0, classes, size=batch)).to(device)

        def patch_step(model=model, optimizer=optimizer, centres=centres, labels=labels):
            patches = [p.contiguous(memory_format=torch.channels_last) for p in extract_patches(volume, centres, halo)]
            with autocast(device, precision):
                logits = model(*patches)[:, :, 0, 0]
            loss = nn.functional.cross_entropy(logits.float(), labels)  # mean: weight 1/n per sample
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        measure(f"isolated_patches_batch_{batch}", patch_step, batch)

    model, optimizer = fresh()
    crops = torch.from_numpy(rng.normal(0.5, 0.3, (blocks,) + (block + 2 * halo,) * 3).astype(np.float32)).to(device)
    block_labels = torch.from_numpy(rng.integers(0, classes, size=(blocks,) + (block,) * 3)).to(device)

    def block_step():
        with autocast(device, precision):
            logits = crops_logits(model, crops, planes_per_batch=4096, channels_last=True)
        loss = nn.functional.cross_entropy(logits.float().permute(0, 2, 1, 3, 4), block_labels)  # the same 1/n
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    measure("dense_blocks", block_step, blocks * block ** 3)
    out["dense_blocks"].update({"block": block, "blocks": blocks})
    if device.type == "cuda":
        out["dense_blocks"]["gpu_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    paper = out[f"isolated_patches_batch_{patch_batches[0]}"]["voxel_samples_per_second"]
    out["dense_over_patches"] = out["dense_blocks"]["voxel_samples_per_second"] / paper
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    add_common_arguments(parser)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    result = {"benchmark": "training", "smoke": args.smoke, "machine": machine_state(0 if args.smoke else 1.0)}
    arch = Architecture(num_classes=9, n_layers=SMOKE_LAYERS if args.smoke else 25)
    start = time.perf_counter()
    result["cpu"] = training_throughput(cpu, arch, [8 if args.smoke else PAPER_BATCH], 4 if args.smoke else 16, 3,
                                        1 if args.smoke else args.steps, default_precision(cpu, training=True))
    result["seconds_whole_benchmark"] = time.perf_counter() - start
    finish_machine_state(result["machine"], 0 if args.smoke else 1.0)
    print(json.dumps(result["cpu"], indent=2))
    write_result("training", result, args.results)


if __name__ == "__main__":
    main()
