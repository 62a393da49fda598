"""Dense triplanar inference: every voxel's 51x51 triplanar classification, computed for whole slabs.

The conv stack has 25 unpadded 3x3 layers, so run on a plane of (H + 50) x (W + 50) voxels it yields
the features of all H x W centre voxels at once, exactly those each voxel's own 51x51 patch would
give. For a block of target voxels z0:z1, y0:y1, x0:x1 we therefore run

* the axial planes    z0..z1 over rows y0-25..y1+25, cols x0-25..x1+25,
* the coronal planes  y0..y1 over rows z0-25..z1+25, cols x0-25..x1+25,
* the sagittal planes x0..x1 over rows z0-25..z1+25, cols y0-25..y1+25,

put the three feature maps into the same (z, y, x) order and apply the 1x1-convolution head.
Outside the volume counts as intensity 0 (zero padding), exactly as the patch formulation sees it.

Whole volumes go through in slabs along z whose thickness is chosen from the memory available, so
memory stays bounded whatever the volume size; within a slab the conv stack runs only over the
foreground's bounding boxes and the head only on the samples (everything else is background by the
paper's sample rule, intensity > 0).
The coronal and sagittal planes of a slab carry 25 voxels of context above and below it, so thick
slabs waste less: with enough memory a brain goes through in one slab.

Inference runs a prepared copy of the network (``inference_model``): each eval-mode batch norm
folded into the convolution before it (exact up to float rounding; BN was ~10% of the time),
dropout dropped, weights in the compute dtype (bf16 on CPUs with AVX512-BF16 or AMX, fp16/bf16 on
GPUs) and channels-last, so oneDNN/cuDNN run each layer as one fused conv + bias and no
per-layer autocast casts happen. The head runs as three matrix products on (voxels x 96) features
written straight into channels-last order.

``patch_logits`` is the paper's per-voxel formulation (three 51x51 patches per voxel): the
reference the dense path is tested against, and the baseline of the benchmarks.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import os
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .model import Architecture, TriplanarCNN
from .progress import CancelCheck, ProgressCallback, check_cancel, report
from .thresholds import background_outside

Box = Tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1 (half-open), unpadded coordinates

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Share of the memory the device reports available that one dense pass may use by default, and a cap
# on CPU: the pipeline around it holds the volume, its resampled copies and the probabilities too.
AVAILABLE_MEMORY_SHARE = 0.5
CPU_BUDGET_CAP_BYTES = 3 << 29  # 1.5 GiB: a 1 mm brain in one slab; a 512^2 x 300 CTA within 4 GB
# Conv activations per batch of planes (in the compute dtype): enough planes to keep oneDNN busy, and
# on CPUs below glibc's largest mmap threshold (32 MiB) even for the first layer's fp32 output.
CONV_BATCH_BYTES = 12 << 20  # see _heap_reused_by_conv_layers
GPU_BATCH_FACTOR = 4  # GPUs need more planes in flight to fill their cores
HEAD_CHUNK_VOXELS = 1 << 16


@dataclass(frozen=True)
class DenseOptions:
    """How the dense pass runs.

    ``precision`` is the compute dtype: "fp32", "bf16" or "fp16". ``memory_budget_bytes`` bounds one
    slab's tensors; 0 chooses it from the memory available on the device (``memory_budget``).
    ``fold_batchnorm`` runs the prepared network (folded BN, weights in the compute dtype); without
    it, reduced precision runs by autocast on the network as trained (the slower reference path).
    """

    precision: str = "fp32"
    memory_budget_bytes: int = 0
    channels_last: bool = False
    planes_per_batch: int = 0  # 0: chosen from CONV_BATCH_BYTES
    fold_batchnorm: bool = True


def pad_volume(volume: torch.Tensor, halo: int) -> torch.Tensor:
    """Zero-pad a (Z, Y, X) tensor by ``halo`` on every side: outside the volume is intensity 0."""
    return torch.nn.functional.pad(volume[None, None], (halo,) * 6)[0, 0]


def autocast(device: torch.device, precision: str):
    """Autocast to the precision's dtype ("fp32": no autocast); shared by inference and training."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


# --------------------------------------------------------------------------------------------------
# The reference formulation on the network as trained (also used by training and validation)
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# The prepared inference network
# --------------------------------------------------------------------------------------------------

def _folded_conv(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d]) -> nn.Conv2d:
    """A conv with bias computing conv followed by eval-mode ``bn`` (folded in float64)."""
    weight = conv.weight.detach().double()
    bias = (conv.bias.detach().double() if conv.bias is not None
            else torch.zeros(conv.out_channels, dtype=torch.float64, device=weight.device))
    if bn is not None:
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        weight = weight * scale[:, None, None, None]
        bias = (bias - bn.running_mean.detach().double()) * scale + bn.bias.detach().double()
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, bias=True)
    with torch.no_grad():
        folded.weight.copy_(weight.float())
        folded.bias.copy_(bias.float())
    return folded


def _fold_sequence(layers: nn.Sequential) -> nn.Sequential:
    """conv [BN] [ELU] [dropout] ... -> folded conv, ELU in place, ...; dropout is the identity in eval."""
    modules = list(layers)
    out: List[nn.Module] = []
    for i, module in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            following = modules[i + 1] if i + 1 < len(modules) else None
            out.append(_folded_conv(module, following if isinstance(following, nn.BatchNorm2d) else None))
        elif isinstance(module, FullPrecisionInput):  # re-preparing a prepared model (e.g. GPU -> CPU)
            out.append(_folded_conv(module.conv, None))
        elif isinstance(module, nn.ELU):
            out.append(nn.ELU(alpha=module.alpha, inplace=True))
        elif not isinstance(module, (nn.BatchNorm2d, nn.Dropout)):
            raise ValueError(f"cannot fold a {type(module).__name__} layer")
    return nn.Sequential(*out)


def concrete_device(device: torch.device | str) -> torch.device:
    """``device`` with its index: tensors live on "cuda:0", and torch.device("cuda") != "cuda:0"."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def inference_model(model: TriplanarCNN, precision: str = "fp32", device: torch.device | str = "cpu",
                    channels_last: bool = True) -> TriplanarCNN:
    """An eval-only copy of ``model``: batch norm folded into the convs, weights in ``precision``.

    Same outputs as ``model.eval()`` up to float rounding (exact in fp32 to ~1e-6 relative); the
    original model is left untouched (training keeps using it). Preparing twice is a no-op.
    """
    dtype = DTYPES[precision]
    device = concrete_device(device)
    if getattr(model, "inference_precision", None) == precision and next(model.parameters()).device == device:
        return model
    prepared = TriplanarCNN.__new__(TriplanarCNN)
    nn.Module.__init__(prepared)
    prepared.arch = model.arch
    prepared.conv_stack = _fold_sequence(model.conv_stack)
    prepared.head = _fold_sequence(model.head)
    prepared.inference_precision = precision
    first = copy.deepcopy(prepared.conv_stack[0])  # fp32 fold, kept exact (see FullPrecisionInput)
    prepared = prepared.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if dtype != torch.float32:
        prepared.conv_stack[0] = FullPrecisionInput(first.to(device).requires_grad_(False), dtype)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    return prepared


class FullPrecisionInput(nn.Module):
    """The first convolution in fp32, its output in the compute dtype.

    Rounding the input image to bf16 (8 significant bits) and multiplying by the first layer's
    large folded weights is what moves reduced-precision outputs away from fp32; measured on a
    trained model (the first shipped one): labels agree on 97.6% of brain voxels with a bf16 first
    layer, 99.9% with an fp32 one. With one input channel the layer costs 1/32 of any other, so
    keeping it exact is cheap.
    """

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype):
        super().__init__()
        self.conv = conv
        self.dtype = dtype

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        return self.conv(planes.float()).to(self.dtype)


def conv_stack_flops(arch: Architecture, planes: int, height: int, width: int) -> int:
    """Exact multiply-add FLOPs (2 per MAC) of the conv stack on ``planes`` planes of height x width."""
    flops, channels = 0, 1
    for layer in range(1, arch.n_layers + 1):
        out_h, out_w = height - 2 * layer, width - 2 * layer
        flops += 2 * channels * arch.n_filters * 9 * planes * max(0, out_h) * max(0, out_w)
        channels = arch.n_filters
    return flops


# --------------------------------------------------------------------------------------------------
# Memory: how much a slab may use, and how thick that makes it
# --------------------------------------------------------------------------------------------------

def fast_cpu_precision() -> str:
    """bf16 where the CPU multiplies bf16 natively (AVX512-BF16 or AMX flags), else fp32 (bf16 would be emulated)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:  # not Linux: stay on the safe side
        return "fp32"
    return "bf16" if "avx512_bf16" in flags or "amx_bf16" in flags else "fp32"


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
                   box_shape: Optional[Tuple[int, int]] = None, device: torch.device | str = "cpu") -> int:
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
    if not options.fold_batchnorm:
        itemsize = 4 + itemsize  # autocast keeps fp32 and reduced copies around
    conv_batch = CONV_BATCH_BYTES * (GPU_BATCH_FACTOR if torch.device(device).type == "cuda" else 1)
    fixed = 3 * conv_batch + HEAD_CHUNK_VOXELS * ((3 * n_filters + 2 * 192) * itemsize + 3 * num_classes * 4)
    per_plane = _bytes_per_box_voxel(arch, itemsize) * rows * cols + num_classes * y * x
    per_plane += 2 * 4 * (rows + 2 * arch.halo) * (cols + 2 * arch.halo)  # the input crop
    budget = memory_budget(device, options)
    thickness = int(max(1, min(z, (budget - fixed) // max(1, per_plane))))
    slabs = -(-z // thickness)
    return -(-z // slabs)


def foreground_box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) bounding the True voxels of a (z, y, x) mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


# --------------------------------------------------------------------------------------------------
# The fast slab pass
# --------------------------------------------------------------------------------------------------

def _crop_with_zeros(volume: np.ndarray, box: Box, halo: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The box plus ``halo`` on every side, zeros outside the volume, as a tensor on ``device``.

    Replaces a zero-padded copy of the whole volume: only one slab's input exists at a time.
    """
    z0, z1, y0, y1, x0, x1 = box
    out = torch.zeros((z1 - z0 + 2 * halo, y1 - y0 + 2 * halo, x1 - x0 + 2 * halo), dtype=torch.float32)
    src, dst = [], []
    for lo, hi, total in ((z0, z1, volume.shape[0]), (y0, y1, volume.shape[1]), (x0, x1, volume.shape[2])):
        a, b = max(lo - halo, 0), min(hi + halo, total)
        src.append(slice(a, b))
        dst.append(slice(a - (lo - halo), b - (lo - halo)))
    out[tuple(dst)] = torch.from_numpy(np.ascontiguousarray(volume[tuple(src)], dtype=np.float32))
    return out.to(device=device, dtype=dtype)


def _planes_per_batch(options: DenseOptions, arch: Architecture, height: int, width: int, itemsize: int,
                      device: torch.device) -> int:
    if options.planes_per_batch:
        return options.planes_per_batch
    target = CONV_BATCH_BYTES * (GPU_BATCH_FACTOR if device.type == "cuda" else 1)
    return max(1, target // (arch.n_filters * height * width * itemsize))


PlaneGroup = Tuple[int, int, int, int, int, int]  # planes p0:p1, rows r0:r1, cols c0:c1 (target voxels)


def _plane_groups(mask: Optional[np.ndarray], shape: Tuple[int, int, int], group: int) -> List[PlaneGroup]:
    """Runs of ``group`` consecutive planes of a (planes, rows, cols) mask, each with its own box.

    Near the top and bottom of a brain the planes' foreground is much smaller than the slab's box:
    boxes per few planes skip about a third of the work on round anatomy, yet keep planes batched.
    """
    planes, rows, cols = shape
    if mask is None:  # the whole box, still in batches of ``group`` planes (bounded activations)
        return [(p0, min(planes, p0 + group), 0, rows, 0, cols) for p0 in range(0, planes, group)]
    groups = []
    for p0 in range(0, planes, group):
        box = foreground_box(mask[p0:p0 + group])
        if box is not None:
            groups.append((p0, min(planes, p0 + group)) + box)
    return groups


def _features_into(model: TriplanarCNN, crop: torch.Tensor, target: torch.Tensor, mask: Optional[np.ndarray],
                   batch: int, channels_last: bool, after_group: Callable[[], None] = lambda: None) -> None:
    """Conv-stack features of one orientation's planes, written into ``target`` (P, R, C, F), a view.

    ``crop`` (P, R + 2h, C + 2h) holds the planes with their context; only each plane group's
    foreground box is computed, which always holds the group's ``mask`` voxels.
    """
    h = model.arch.halo
    for p0, p1, r0, r1, c0, c1 in _plane_groups(mask, tuple(target.shape[:3]), batch):
        planes = crop[p0:p1, r0:r1 + 2 * h, c0:c1 + 2 * h, None].permute(0, 3, 1, 2)
        planes = planes.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        target[p0:p1, r0:r1, c0:c1] = model.features(planes).permute(0, 2, 3, 1)
        after_group()


def _head_probabilities(model: TriplanarCNN, features: torch.Tensor) -> torch.Tensor:
    """uint8 probabilities (N, C) from (N, 3F) features: the 1x1-conv head as matrix products."""
    x = features
    *hidden, output = list(model.head)
    for layer in hidden:
        x = nn.functional.linear(x, layer.weight.flatten(1), layer.bias) if isinstance(layer, nn.Conv2d) else layer(x)
    # the class scores in fp32 (192 x C, negligible): bf16 logits alone would shift probabilities by ~1%
    x = nn.functional.linear(x.float(), output.weight.flatten(1).float(), output.bias.float())
    return torch.softmax(x, dim=1).mul_(255).round_().to(torch.uint8)


class SlabBox(NamedTuple):
    """A block of target voxels (half-open, unpadded coordinates) and the voxels to classify in it."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int
    mask: Optional[np.ndarray] = None  # (z1-z0, y1-y0, x1-x0) bool; None: every voxel of the box

    def split(self) -> Tuple["SlabBox", "SlabBox"]:
        """Two halves along z (to retry a slab that did not fit in memory)."""
        middle = (self.z0 + self.z1) // 2
        cut = middle - self.z0
        first_mask = None if self.mask is None else self.mask[:cut]
        second_mask = None if self.mask is None else self.mask[cut:]
        return (SlabBox(self.z0, middle, self.y0, self.y1, self.x0, self.x1, first_mask),
                SlabBox(middle, self.z1, self.y0, self.y1, self.x0, self.x1, second_mask))


def slab_probabilities(model: TriplanarCNN, volume: np.ndarray, box: Box, options: DenseOptions,
                       device: torch.device) -> torch.Tensor:
    """uint8 probabilities (z, y, x, C) on the CPU for the target voxels in ``box``, by the prepared ``model``.

    With a ``SlabBox`` carrying a mask, only the mask's voxels are classified (the paper's sample
    rule); the others get background with probability 1, like everything outside the slab's box. On
    CPUs the conv stack then runs only over the foreground boxes of the axial, coronal and sagittal
    plane groups.
    """
    h, f = model.arch.halo, model.arch.n_filters
    dtype = model.head[0].weight.dtype  # the features' dtype; the input stays fp32 (FullPrecisionInput)
    z0, z1, y0, y1, x0, x1 = box[:6]
    sample = box.mask if isinstance(box, SlabBox) else None
    # On GPUs one box per slab: cuDNN autotunes per input shape (benchmark mode), and varying plane-group
    # boxes would retune for every group; equal slabs repeat the same few shapes.
    groups_mask = sample if device.type != "cuda" else None
    dz, dy, dx = z1 - z0, y1 - y0, x1 - x0
    crop = _crop_with_zeros(volume, (z0, z1, y0, y1, x0, x1), h, torch.float32, device)
    features = torch.zeros((dz, dy, dx, 3 * f), dtype=dtype, device=device)
    itemsize = features.element_size()
    cl = options.channels_last
    # axial planes (z, y, x); coronal (y, z, x); sagittal (x, z, y): each written into (z, y, x, F)
    with _heap_reused_by_conv_layers(device) as after_group:
        _features_into(model, crop[h:h + dz], features[..., :f], groups_mask,
                       _planes_per_batch(options, model.arch, dy + 2 * h, dx + 2 * h, itemsize, device), cl, after_group)
        _features_into(model, crop[:, h:h + dy].permute(1, 0, 2), features[..., f:2 * f].permute(1, 0, 2, 3),
                       None if groups_mask is None else groups_mask.transpose(1, 0, 2),
                       _planes_per_batch(options, model.arch, dz + 2 * h, dx + 2 * h, itemsize, device), cl, after_group)
        _features_into(model, crop[:, :, h:h + dx].permute(2, 0, 1), features[..., 2 * f:].permute(2, 0, 1, 3),
                       None if groups_mask is None else groups_mask.transpose(2, 0, 1),
                       _planes_per_batch(options, model.arch, dz + 2 * h, dy + 2 * h, itemsize, device), cl, after_group)
    del crop
    flat = features.reshape(-1, 3 * f)
    out = torch.zeros((dz * dy * dx, model.arch.num_classes), dtype=torch.uint8)
    out[:, 0] = 255
    # Equal-sized chunks of the samples: every distinct row count would build (and cache) new oneDNN
    # matmul kernels, which grew the heap by ~1.4 MB per chunk when chunks followed the mask.
    samples = (torch.arange(flat.shape[0]) if sample is None
               else torch.from_numpy(np.flatnonzero(sample).astype(np.int32)))
    for start in range(0, samples.shape[0], HEAD_CHUNK_VOXELS):
        rows = samples[start:start + HEAD_CHUNK_VOXELS]
        out[rows] = _head_probabilities(model, flat[rows.to(device)]).cpu()
    return out.reshape(dz, dy, dx, -1)


def _reference_slab_probabilities(model: TriplanarCNN, volume: np.ndarray, box: Box, options: DenseOptions,
                                  device: torch.device) -> torch.Tensor:
    """Same as ``slab_probabilities`` on the network as trained (autocast for reduced precision)."""
    h = model.arch.halo
    z0, z1, y0, y1, x0, x1 = box[:6]
    crop = _crop_with_zeros(volume, (z0, z1, y0, y1, x0, x1), h, torch.float32, device)
    batch = options.planes_per_batch or 64
    with autocast(device, options.precision):
        logits = crops_logits(model, crop[None], batch, options.channels_last)[0]  # (z, C, y, x)
    probs = torch.softmax(logits.float(), dim=1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    if isinstance(box, SlabBox) and box.mask is not None:  # the same samples as the fast path
        background_outside(np.moveaxis(probs.numpy(), -1, 0), box.mask)
    return probs


# --------------------------------------------------------------------------------------------------
# Whole volumes
# --------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library when it is glibc (its heap can be tuned), else None (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
GLIBC_DEFAULT_TRIM_THRESHOLD = 128 << 10
# Outside the conv layers: allocations >= 1 MiB by mmap, so freed head chunks and whole-volume
# arrays go back to the system at once (measured: 2.44 -> 1.72 GB peak on a 150 x 256 x 256 CT).
MMAP_THRESHOLD_OUTSIDE_CONV = 1 << 20
# Inside them: glibc's largest threshold and no trimming on free, so every layer's output (kept below
# it by CONV_BATCH_BYTES) reuses the heap instead of faulting in a fresh, zeroed mapping.
MMAP_THRESHOLD_INSIDE_CONV = 32 << 20
TRIM_THRESHOLD_INSIDE_CONV = 256 << 20
# Resident growth over the conv pass's start after which a plane group ends with a heap trim:
# fragmentation across differently shaped groups grew the brain's heap by ~0.2 GB untrimmed, while
# trimming after every group re-faulted its pages each time (~10% slower on a brain slab).
HEAP_GROWTH_BEFORE_TRIM = 96 << 20


def _resident_bytes() -> int:
    """This process's resident memory now (Linux), or 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _return_freed_memory_to_the_system() -> None:
    """glibc: large allocations by mmap from now on, and the heap's free pages back to the system.

    Without it, freed head chunks and plane batches stay in glibc's per-thread arenas, so each slab
    adds a few hundred MB of resident memory that is never used again.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_OUTSIDE_CONV)
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


@contextlib.contextmanager
def _heap_reused_by_conv_layers(device: torch.device) -> Iterator[Callable[[], None]]:
    """glibc, CPU: serve the conv layers' outputs from the heap while the conv stack runs.

    A fresh mmap per layer output costs page faults and zeroing: measured at ~20% of the brain's conv
    stack in a fresh process (158-169 against 197-208 GFLOP/s). Yields the call to make after each
    plane group, which trims the heap once it has grown by HEAP_GROWTH_BEFORE_TRIM; afterwards the
    thresholds are set back and the heap trimmed (``_return_freed_memory_to_the_system``).
    """
    libc = _glibc() if device.type == "cpu" else None
    if libc is None:
        yield lambda: None
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_INSIDE_CONV)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_INSIDE_CONV)
    start = _resident_bytes()

    def after_group() -> None:
        if _resident_bytes() - start > HEAP_GROWTH_BEFORE_TRIM:
            libc.malloc_trim(0)

    try:
        yield after_group
    finally:
        _return_freed_memory_to_the_system()


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _slab_with_retries(compute: Callable[[SlabBox], torch.Tensor], box: SlabBox, device: torch.device) -> torch.Tensor:
    """Compute a slab; when the device runs out of memory, split it along z and retry the halves."""
    try:
        return compute(box)
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not _is_out_of_memory(error) or box.z1 - box.z0 < 2:
            raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    first, second = box.split()
    return torch.cat([_slab_with_retries(compute, first, device), _slab_with_retries(compute, second, device)], dim=0)


def iter_dense_probabilities(model: TriplanarCNN, volume: np.ndarray, mask: Optional[np.ndarray] = None,
                             device: torch.device | str = "cpu", options: DenseOptions = DenseOptions(),
                             progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None,
                             ) -> Iterator[Tuple[int, int, np.ndarray]]:
    """Yield (z0, z1, probabilities) slab by slab; probabilities are uint8 (C, z1-z0, Y, X), 255 = 1.

    ``volume`` is the normalised (Z, Y, X) float image on the canonical grid; ``mask`` marks the
    voxels to classify (default: volume > 0). They get the network's softmax; every other voxel gets
    background (class 0) with probability 1, as the paper classifies only its samples.
    Probabilities leave the device as uint8, so transfers and host memory stay small. A slab that
    runs out of device memory is split and retried.
    """
    device = torch.device(device)
    if mask is None:
        mask = volume > 0
    if options.fold_batchnorm:
        model = inference_model(model, options.precision, device, options.channels_last)
        compute_box = slab_probabilities
    else:
        model = model.eval()
        compute_box = _reference_slab_probabilities
    num_classes = model.arch.num_classes
    z_total, y_total, x_total = volume.shape
    whole_box = foreground_box(mask)
    box_shape = (whole_box[1] - whole_box[0], whole_box[3] - whole_box[2]) if whole_box else (1, 1)
    thickness = slab_thickness(volume.shape, num_classes, options, model.arch.n_filters, box_shape, device)
    _return_freed_memory_to_the_system()
    with torch.inference_mode():
        for z0 in range(0, z_total, thickness):
            check_cancel(cancel)
            z1 = min(z_total, z0 + thickness)
            slab = np.zeros((num_classes, z1 - z0, y_total, x_total), dtype=np.uint8)
            slab[0] = 255
            box = foreground_box(mask[z0:z1])
            if box is not None:
                y0, y1, x0, x1 = box
                slab_box = SlabBox(z0, z1, y0, y1, x0, x1, mask[z0:z1, y0:y1, x0:x1])
                probs = _slab_with_retries(lambda b: compute_box(model, volume, b, options, device), slab_box, device)
                slab[:, :, y0:y1, x0:x1] = probs.permute(3, 0, 1, 2).numpy()
                del probs
                _return_freed_memory_to_the_system()
            yield z0, z1, slab
            report(progress, z1 / z_total, "Running the network")


def dense_probabilities(model: TriplanarCNN, volume: np.ndarray, mask: Optional[np.ndarray] = None,
                        device: torch.device | str = "cpu", options: DenseOptions = DenseOptions(),
                        progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None,
                        ) -> np.ndarray:
    """Whole-volume uint8 probabilities (C, Z, Y, X); see ``iter_dense_probabilities``.

    When a GPU runs out of memory even for one-plane slabs, the pass warns and continues on the CPU.
    """
    out = np.empty((model.arch.num_classes,) + tuple(volume.shape), dtype=np.uint8)
    device = torch.device(device)
    done = 0
    try:
        for z0, z1, slab in iter_dense_probabilities(model, volume, mask, device, options, progress, cancel):
            out[:, z0:z1] = slab
            done = z1
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if device.type != "cuda" or not _is_out_of_memory(error):
            raise
        message = ("The GPU ran out of memory even for the thinnest slabs; continuing on the CPU (slower). "
                   "Close other GPU programs or choose the CPU device to avoid this.")
        warnings.warn(message, RuntimeWarning)
        report(progress, done / max(1, volume.shape[0]), message)
        torch.cuda.empty_cache()
        cpu_options = replace(options, precision=fast_cpu_precision(), memory_budget_bytes=0,
                              channels_last=True, fold_batchnorm=True)
        for z0, z1, slab in iter_dense_probabilities(model, volume, mask, "cpu", cpu_options, progress, cancel):
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
