"""Dense triplanar inference: every voxel's 51x51 triplanar classification, computed for whole slabs.

The conv stack has 25 unpadded 3x3 layers, so run on a plane of (H + 50) x (W + 50) voxels it yields
the features of all H x W centre voxels at once, exactly those each voxel's own 51x51 patch would
give. For a block of target voxels z0:z1, y0:y1, x0:x1 we therefore run

* the axial planes    z0..z1 over rows y0-25..y1+25, cols x0-25..x1+25,
* the coronal planes  y0..y1 over rows z0-25..z1+25, cols x0-25..x1+25,
* the sagittal planes x0..x1 over rows z0-25..z1+25, cols y0-25..y1+25,

put the three feature maps into the same (z, y, x) order and apply the 1x1-convolution head.
Outside the volume counts as intensity 0 (zero padding), exactly as the patch formulation sees it.

Whole volumes go through in slabs along z whose thickness is chosen from a memory budget, so memory
stays bounded whatever the volume size; within a slab only the bounding box of the foreground is
computed (everything else is background by the paper's sample rule, intensity > 0).

``patch_probabilities`` is the paper's per-voxel formulation (three 51x51 patches per voxel): the
reference the dense path is tested against, and the baseline of the benchmarks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from .model import TriplanarCNN
from .progress import CancelCheck, ProgressCallback, check_cancel, report

Box = Tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1 (half-open), unpadded coordinates


@dataclass(frozen=True)
class DenseOptions:
    """How the dense pass runs. ``precision`` is "fp32", "bf16" or "fp16" (autocast)."""

    precision: str = "fp32"
    memory_budget_bytes: int = 1 << 30
    channels_last: bool = False
    planes_per_batch: int = 0  # 0: chosen from the memory budget


def pad_volume(volume: torch.Tensor, halo: int) -> torch.Tensor:
    """Zero-pad a (Z, Y, X) tensor by ``halo`` on every side: outside the volume is intensity 0."""
    return torch.nn.functional.pad(volume[None, None], (halo,) * 6)[0, 0]


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _stack_features(model: TriplanarCNN, planes: torch.Tensor, batch: int, channels_last: bool) -> torch.Tensor:
    """Conv-stack features of (B, H, W) planes, in sub-batches so activations stay bounded."""
    outputs = []
    for start in range(0, planes.shape[0], batch):
        chunk = planes[start:start + batch, None]
        if channels_last:
            chunk = chunk.contiguous(memory_format=torch.channels_last)
        outputs.append(model.features(chunk))
    return torch.cat(outputs, dim=0)


def crops_logits(model: TriplanarCNN, crops: torch.Tensor, planes_per_batch: int = 64,
                 channels_last: bool = False) -> torch.Tensor:
    """Logits (n, dz, C, dy, dx) of the target voxels of each crop (n, dz+2h, dy+2h, dx+2h).

    Each crop holds its target block plus the model's halo h (25) of context on every side; the
    three orientations' planes of all crops go through the shared conv stack together.
    """
    h = model.arch.halo
    n, dz, dy, dx = crops.shape[0], crops.shape[1] - 2 * h, crops.shape[2] - 2 * h, crops.shape[3] - 2 * h
    axial = crops[:, h:h + dz].reshape(n * dz, dy + 2 * h, dx + 2 * h)
    coronal = crops[:, :, h:h + dy].permute(0, 2, 1, 3).reshape(n * dy, dz + 2 * h, dx + 2 * h)
    sagittal = crops[:, :, :, h:h + dx].permute(0, 3, 1, 2).reshape(n * dx, dz + 2 * h, dy + 2 * h)
    f = model.arch.n_filters
    f_axial = _stack_features(model, axial, planes_per_batch, channels_last).reshape(n, dz, f, dy, dx)
    # coronal features are (n, y, F, z, x) and sagittal (n, x, F, z, y): bring both to (n, z, F, y, x)
    f_coronal = _stack_features(model, coronal, planes_per_batch, channels_last).reshape(n, dy, f, dz, dx)
    f_coronal = f_coronal.permute(0, 3, 2, 1, 4)
    f_sagittal = _stack_features(model, sagittal, planes_per_batch, channels_last).reshape(n, dx, f, dz, dy)
    f_sagittal = f_sagittal.permute(0, 3, 2, 4, 1)
    logits = model.classify(f_axial.reshape(n * dz, f, dy, dx), f_coronal.reshape(n * dz, f, dy, dx),
                            f_sagittal.reshape(n * dz, f, dy, dx))
    return logits.reshape(n, dz, -1, dy, dx)


def block_logits(model: TriplanarCNN, padded: torch.Tensor, box: Box, planes_per_batch: int = 64,
                 channels_last: bool = False) -> torch.Tensor:
    """Logits (z1-z0, C, y1-y0, x1-x0) for the target voxels in ``box`` of a zero-padded volume.

    ``padded`` is the volume padded by the model's halo (see ``pad_volume``); ``box`` is in the
    coordinates of the unpadded volume.
    """
    h2 = 2 * model.arch.halo
    z0, z1, y0, y1, x0, x1 = box
    crop = padded[z0:z1 + h2, y0:y1 + h2, x0:x1 + h2]
    return crops_logits(model, crop[None], planes_per_batch, channels_last)[0]


def foreground_box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) bounding the True voxels of a (z, y, x) mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def slab_thickness(shape: Tuple[int, int, int], num_classes: int, options: DenseOptions, n_filters: int = 32) -> int:
    """Slab thickness along z that keeps one slab's tensors within the memory budget.

    Per target voxel a slab holds three planes' features, their concatenation, the head's two
    hidden layers (192 channels) and the class scores, in 4-byte floats: about 2.5 KB. Thicker
    slabs waste less work on the 25-voxel halo of the coronal and sagittal planes.
    """
    _, y, x = shape
    bytes_per_voxel = 4 * (6 * n_filters + 2 * 192 + 2 * num_classes)
    return int(max(1, min(shape[0], options.memory_budget_bytes // max(1, bytes_per_voxel * y * x))))


def iter_dense_probabilities(model: TriplanarCNN, volume: np.ndarray, mask: Optional[np.ndarray] = None,
                             device: torch.device | str = "cpu", options: DenseOptions = DenseOptions(),
                             progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None,
                             ) -> Iterator[Tuple[int, int, np.ndarray]]:
    """Yield (z0, z1, probabilities) slab by slab; probabilities are uint8 (C, z1-z0, Y, X), 255 = 1.

    ``volume`` is the normalised (Z, Y, X) float image on the canonical grid; ``mask`` marks the
    voxels to classify (default: volume > 0). Voxels outside the mask's per-slab bounding box get
    background (class 0) with probability 1; inside it, every voxel gets the network's softmax.
    Probabilities leave the device as uint8, so transfers and host memory stay small.
    """
    device = torch.device(device)
    model.eval()
    if mask is None:
        mask = volume > 0
    num_classes = model.arch.num_classes
    thickness = slab_thickness(volume.shape, num_classes, options, model.arch.n_filters)
    batch = options.planes_per_batch or max(1, thickness)
    padded = pad_volume(torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(device), model.arch.halo)
    z_total, y_total, x_total = volume.shape
    with torch.inference_mode(), _autocast(device, options.precision):
        for z0 in range(0, z_total, thickness):
            check_cancel(cancel)
            z1 = min(z_total, z0 + thickness)
            slab = np.zeros((num_classes, z1 - z0, y_total, x_total), dtype=np.uint8)
            slab[0] = 255
            box = foreground_box(mask[z0:z1])
            if box is not None:
                y0, y1, x0, x1 = box
                logits = block_logits(model, padded, (z0, z1, y0, y1, x0, x1), batch, options.channels_last)
                probs = torch.softmax(logits.float(), dim=1).mul_(255).round_().to(torch.uint8)
                slab[:, :, y0:y1, x0:x1] = probs.permute(1, 0, 2, 3).cpu().numpy()
            yield z0, z1, slab
            report(progress, z1 / z_total, "Running the network")


def dense_probabilities(model: TriplanarCNN, volume: np.ndarray, mask: Optional[np.ndarray] = None,
                        device: torch.device | str = "cpu", options: DenseOptions = DenseOptions(),
                        progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None,
                        ) -> np.ndarray:
    """Whole-volume uint8 probabilities (C, Z, Y, X); see ``iter_dense_probabilities``."""
    out = np.empty((model.arch.num_classes,) + tuple(volume.shape), dtype=np.uint8)
    for z0, z1, slab in iter_dense_probabilities(model, volume, mask, device, options, progress, cancel):
        out[:, z0:z1] = slab
    return out


def dense_logits(model: TriplanarCNN, volume: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Float32 logits (C, Z, Y, X) of every voxel in one block: for tests and small volumes."""
    device = torch.device(device)
    model.eval()
    padded = pad_volume(torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(device), model.arch.halo)
    z, y, x = volume.shape
    with torch.inference_mode():
        logits = block_logits(model, padded, (0, z, 0, y, 0, x))
    return logits.permute(1, 0, 2, 3).float().cpu().numpy()


def extract_patches(padded: torch.Tensor, centres: torch.Tensor, halo: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's three orthogonal (2*halo+1)^2 patches around each centre (n, 3) of (z, y, x).

    Orientation matches the dense path: axial rows y / cols x, coronal rows z / cols x,
    sagittal rows z / cols y. ``padded`` is the volume zero-padded by ``halo``.
    """
    size = 2 * halo + 1
    offsets = torch.arange(size, device=padded.device)
    z, y, x = (centres[:, i, None, None] for i in range(3))
    rows, cols = offsets[None, :, None], offsets[None, None, :]
    axial = padded[z + halo, y + rows, x + cols]
    coronal = padded[z + rows, y + halo, x + cols]
    sagittal = padded[z + rows, y + cols, x + halo]
    return axial[:, None], coronal[:, None], sagittal[:, None]


def patch_logits(model: TriplanarCNN, volume: np.ndarray, centres: np.ndarray, batch: int = 256,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """Per-voxel patch formulation: logits (n, C) of the voxels at ``centres`` (n, 3) of (z, y, x)."""
    device = torch.device(device)
    model.eval()
    padded = pad_volume(torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(device), model.arch.halo)
    centres_t = torch.as_tensor(np.asarray(centres), dtype=torch.long, device=device)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(centres_t), batch):
            patches = extract_patches(padded, centres_t[start:start + batch], model.arch.halo)
            outputs.append(model(*patches)[:, :, 0, 0].float().cpu())
    return torch.cat(outputs).numpy()
