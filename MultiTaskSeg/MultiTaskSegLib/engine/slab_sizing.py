"""How much memory one dense slab may use, and the slab and plane-batch sizes that follow from it.

Whole volumes go through in slabs along z whose thickness is chosen from the memory available, so
memory stays bounded whatever the volume size. The coronal and sagittal planes of a slab carry 25
voxels of context above and below it, so thick slabs waste less: with enough memory a brain goes
through in one slab.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from .devices import DTYPES
from .network import Architecture

# Share of the memory the device reports available that one dense pass may use by default, and a cap
# on CPU: the pipeline around it holds the volume, its resampled copies and the probabilities too.
AVAILABLE_MEMORY_SHARE = 0.5


CPU_BUDGET_CAP_BYTES = 3 << 29  # 1.5 GiB: a 1 mm brain in one slab; a 512^2 x 300 CTA within 4 GB


# Conv activations per batch of planes (in the compute dtype): enough planes to keep oneDNN busy, and
# on CPUs below glibc's largest mmap threshold (32 MiB) even for the first layer's fp32 output.
CONV_BATCH_BYTES = 12 << 20  # see heap_reused_by_conv_layers


GPU_BATCH_FACTOR = 4  # GPUs need more planes in flight to fill their cores


HEAD_CHUNK_VOXELS = 1 << 16


@dataclass(frozen=True)
class DenseOptions:
    """How the dense pass runs.

    ``precision`` is the compute dtype of the reference path: "fp32", "bf16" or "fp16" (a prepared
    model brings its own). ``memory_budget_bytes`` bounds one slab's tensors; 0 chooses it from the
    memory available on the device (``memory_budget``).
    """

    precision: str = "fp32"
    memory_budget_bytes: int = 0
    channels_last: bool = False
    planes_per_batch: int = 0  # 0: chosen from CONV_BATCH_BYTES


def available_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Memory the device can give now: free GPU memory, or MemAvailable from /proc/meminfo."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # other Unixes: free pages; elsewhere assume a modest machine
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def memory_budget(device: torch.device | str = "cpu", options: DenseOptions = DenseOptions()) -> int:
    """Bytes one slab may use: the option when set, else a share of what is available (capped on CPU)."""
    if options.memory_budget_bytes:
        return int(options.memory_budget_bytes)
    device = torch.device(device)
    budget = int(AVAILABLE_MEMORY_SHARE * available_memory_bytes(device))
    if device.type != "cuda":
        budget = min(budget, CPU_BUDGET_CAP_BYTES)
    return max(budget, 64 << 20)


def _bytes_per_box_voxel(arch: Architecture, itemsize: int) -> int:
    """Per target voxel of a slab's box: three planes' features, two uint8 copies of the
    probabilities (the slab's and its transposed copy), and the coverage count and flag."""
    return 3 * arch.n_filters * itemsize + 2 * arch.num_classes + 2


def slab_thickness(shape: Tuple[int, int, int], num_classes: int, options: DenseOptions, n_filters: int = 32,
                   box_shape: Optional[Tuple[int, int]] = None, device: torch.device | str = "cpu",
                   prepared: bool = True) -> int:
    """Slab thickness along z that keeps one slab's tensors within the memory budget.

    ``box_shape`` is the (rows, cols) extent of the foreground box (default: whole planes). A slab
    holds its three planes' features over the box, its uint8 output over whole planes, plus a
    bounded batch of conv activations and head chunk. Slabs are then evened out so the last one is
    not a thin remainder (thin slabs waste work on the 25-voxel context).
    """
    z, y, x = shape
    rows, cols = box_shape or (y, x)
    arch = Architecture(num_classes=num_classes, n_filters=n_filters)
    itemsize = torch.finfo(DTYPES[options.precision]).bits // 8
    if not prepared:
        itemsize = 4 + itemsize  # autocast keeps fp32 and reduced copies around
    conv_batch = CONV_BATCH_BYTES * (GPU_BATCH_FACTOR if torch.device(device).type == "cuda" else 1)
    fixed = 3 * conv_batch + HEAD_CHUNK_VOXELS * ((3 * n_filters + 2 * 192) * itemsize + 3 * num_classes * 4)
    per_plane = _bytes_per_box_voxel(arch, itemsize) * rows * cols + num_classes * y * x
    per_plane += 2 * 4 * (rows + 2 * arch.halo) * (cols + 2 * arch.halo)  # the input crop
    budget = memory_budget(device, options)
    thickness = int(max(1, min(z, (budget - fixed) // max(1, per_plane))))
    slabs = -(-z // thickness)
    return -(-z // slabs)


def planes_per_batch_for(options: DenseOptions, arch: Architecture, height: int, width: int, itemsize: int,
                      device: torch.device) -> int:
    if options.planes_per_batch:
        return options.planes_per_batch
    target = CONV_BATCH_BYTES * (GPU_BATCH_FACTOR if device.type == "cuda" else 1)
    return max(1, target // (arch.n_filters * height * width * itemsize))


def foreground_box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) bounding the True voxels of a (z, y, x) mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
