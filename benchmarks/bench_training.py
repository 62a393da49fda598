"""Training throughput: dense blocks against isolated 51x51 patches, in voxel-samples per second.

Both do the same thing per sample: the paper's network in training mode (batch norm, dropout),
cross-entropy weighted equally per sample, backward, one Adam step, at the precision the training
uses on this device (bf16 autocast + channels-last on CPU). Isolated patches: the paper's
mini-batch of 210 voxels, three 51x51 patches each. Dense blocks: as training.py draws them, three
blocks (one per task) of 16^3 target voxels with their 25-voxel context, every voxel a sample.

    .venv/bin/python benchmarks/bench_training.py [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_state, write_result  # noqa: E402

from MultiTaskSegLib.engine.network import crops_logits, extract_patches, pad_volume  # noqa: E402
from MultiTaskSegLib.engine.network import Architecture, TriplanarCNN  # noqa: E402
from MultiTaskSegLib.engine.devices import autocast  # noqa: E402

PAPER_BATCH = 210
BLOCK, BLOCKS = 16, 3


def timed_steps(step, steps: int) -> float:
    """Seconds per step, after one warm-up step (oneDNN builds its kernels on the first)."""
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args()
    result = {"benchmark": "training", "machine": machine_state(), "precision": args.precision}
    device = torch.device("cpu")
    channels_last = args.precision != "fp32"
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    num_classes = 9
    halo = Architecture().halo

    def make():
        model = TriplanarCNN(Architecture(num_classes=num_classes)).train()
        return model, torch.optim.Adam(model.parameters(), lr=1e-4)

    # isolated patches: PAPER_BATCH voxels of a random volume, three patches each
    volume = pad_volume(torch.from_numpy(rng.normal(0.5, 0.3, (80, 80, 80)).astype(np.float32)), halo)
    centres = torch.from_numpy(rng.integers(0, 80, size=(PAPER_BATCH, 3)))
    labels = torch.from_numpy(rng.integers(0, num_classes, size=PAPER_BATCH))
    model, optimizer = make()

    def patch_step():
        patches = extract_patches(volume, centres, halo)
        if channels_last:
            patches = [p.contiguous(memory_format=torch.channels_last) for p in patches]
        with autocast(device, args.precision):
            logits = model(*patches)[:, :, 0, 0]
        loss = nn.functional.cross_entropy(logits.float(), labels)  # mean: weight 1/n per sample
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    print("isolated patches ...", flush=True)
    patch_seconds = timed_steps(patch_step, args.steps)

    # dense blocks, as training.py runs them
    crops = torch.from_numpy(rng.normal(0.5, 0.3, (BLOCKS,) + (BLOCK + 2 * halo,) * 3).astype(np.float32))
    block_labels = torch.from_numpy(rng.integers(0, num_classes, size=(BLOCKS,) + (BLOCK,) * 3))
    model, optimizer = make()

    def block_step():
        with autocast(device, args.precision):
            logits = crops_logits(model, crops, planes_per_batch=4096, channels_last=channels_last)
        per_voxel = nn.functional.cross_entropy(logits.float().permute(0, 2, 1, 3, 4), block_labels, reduction="none")
        loss = per_voxel.mean()  # the same weight 1/n per sample
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    print("dense blocks ...", flush=True)
    block_seconds = timed_steps(block_step, args.steps)
    block_samples = BLOCKS * BLOCK ** 3
    result.update({
        "isolated_patches": {"samples_per_step": PAPER_BATCH, "seconds_per_step": patch_seconds,
                             "voxel_samples_per_second": PAPER_BATCH / patch_seconds},
        "dense_blocks": {"samples_per_step": block_samples, "block": BLOCK, "blocks": BLOCKS,
                         "seconds_per_step": block_seconds, "voxel_samples_per_second": block_samples / block_seconds},
    })
    result["dense_over_patches"] = (result["dense_blocks"]["voxel_samples_per_second"]
                                    / result["isolated_patches"]["voxel_samples_per_second"])
    print(json.dumps({k: result[k] for k in ("isolated_patches", "dense_blocks", "dense_over_patches")}, indent=2))
    print(f"written {write_result('training', result)}")


if __name__ == "__main__":
    main()
