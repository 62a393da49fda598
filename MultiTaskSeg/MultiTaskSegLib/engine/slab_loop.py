"""The dense slab loop: every voxel's triplanar classification, slab by slab, by a prepared model.

For a block of target voxels z0:z1, y0:y1, x0:x1 it runs

* the axial planes    z0..z1 over rows y0-25..y1+25, cols x0-25..x1+25,
* the coronal planes  y0..y1 over rows z0-25..z1+25, cols x0-25..x1+25,
* the sagittal planes x0..x1 over rows z0-25..z1+25, cols y0-25..y1+25,

puts the three feature maps into the same (z, y, x) order and applies the head as three matrix
products on (voxels x 96) features. Within a slab the conv stack runs only over the foreground's
bounding boxes and the head only on the samples (everything else is background by the paper's
sample rule, intensity > 0); on the host only the samples' features are kept (``slab_features``).
Outside the volume counts as intensity 0, as in the patch formulation.

The loop takes the model it is given: one prepared by ``prepared_model.inference_model`` runs the
fast path; the network as trained runs the reference path (``network.crops_logits`` under autocast),
which tests and benchmarks compare against. A slab that runs out of device memory is split and
retried; a GPU that cannot fit even thin slabs hands over to the CPU.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .crops import crop_with_zeros
from .devices import autocast, fast_cpu_precision
from .heap import heap_reused_by_conv_layers, return_freed_memory_to_the_system
from .labelmap_rule import background_outside
from .network import TriplanarCNN, crops_logits
from .prepared_model import inference_model, is_prepared
from .progress import CancelCheck, ProgressCallback, check_cancel, report
from .slab_features import ORDERS, PlaneGroup, SlabFeatures, Store
from .slab_sizing import HEAD_CHUNK_VOXELS, DenseOptions, foreground_box, planes_per_batch_for, slab_thickness

Box = Tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1 (half-open), unpadded coordinates
Volume3D = Union[np.ndarray, torch.Tensor]  # (z, y, x): on the host, or on the device (the device path)


def _crop_with_zeros(volume: Volume3D, box: Box, halo: int, device: torch.device) -> torch.Tensor:
    """The box plus ``halo`` on every side, zeros outside the volume, as a float32 tensor on ``device``.

    Replaces a zero-padded copy of the whole volume: only one slab's input exists at a time (a
    ``NormalizedVolume`` normalises just the crop). A volume that is a tensor already (the device
    path) is cropped where it lies.
    """
    z0, z1, y0, y1, x0, x1 = box
    start = (z0 - halo, y0 - halo, x0 - halo)
    size = (z1 - z0 + 2 * halo, y1 - y0 + 2 * halo, x1 - x0 + 2 * halo)
    if isinstance(volume, torch.Tensor):
        window = torch.zeros(size, dtype=torch.float32, device=volume.device)
        source = tuple(slice(max(s, 0), min(s + n, total)) for s, n, total in zip(start, size, volume.shape))
        if all(part.stop > part.start for part in source):
            target = tuple(slice(part.start - s, part.stop - s) for part, s in zip(source, start))
            window[target] = volume[source]
        return window
    window = crop_with_zeros(volume, start, size)
    return torch.from_numpy(window.astype(np.float32, copy=False)).to(device)




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


def _features_into(model: TriplanarCNN, crop: torch.Tensor, shape: Tuple[int, int, int], store: Store,
                   mask: Optional[Volume3D], batch: int, channels_last: bool,
                   after_group: Callable[[], None] = lambda: None) -> None:
    """Conv-stack features of one orientation's (P, R, C) planes, handed to ``store`` group by group.

    ``crop`` (P, R + 2h, C + 2h) holds the planes with their context; only each plane group's
    foreground box is computed, which always holds the group's ``mask`` voxels.
    """
    h = model.arch.halo
    for p0, p1, r0, r1, c0, c1 in _plane_groups(mask, shape, batch):
        planes = crop[p0:p1, r0:r1 + 2 * h, c0:c1 + 2 * h, None].permute(0, 3, 1, 2)
        planes = planes.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        store((p0, p1, r0, r1, c0, c1), model.features(planes).permute(0, 2, 3, 1))
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
    mask: Optional[Volume3D] = None  # (z1-z0, y1-y0, x1-x0) bool; None: every voxel of the box

    def split(self) -> Tuple["SlabBox", "SlabBox"]:
        """Two halves along z (to retry a slab that did not fit in memory)."""
        middle = (self.z0 + self.z1) // 2
        cut = middle - self.z0
        first_mask = None if self.mask is None else self.mask[:cut]
        second_mask = None if self.mask is None else self.mask[cut:]
        return (SlabBox(self.z0, middle, self.y0, self.y1, self.x0, self.x1, first_mask),
                SlabBox(middle, self.z1, self.y0, self.y1, self.x0, self.x1, second_mask))


def slab_probabilities(model: TriplanarCNN, volume: Volume3D, box: Box, options: DenseOptions,
                       device: torch.device) -> torch.Tensor:
    """uint8 probabilities (z, y, x, C) for the target voxels in ``box``, by the prepared ``model``:
    on the CPU for a host ``volume``, on ``device`` for a tensor (the device path).

    With a ``SlabBox`` carrying a mask, only the mask's voxels are classified (the paper's sample
    rule); the others get background with probability 1, like everything outside the slab's box. On
    CPUs the conv stack then runs only over the foreground boxes of the axial, coronal and sagittal
    plane groups.
    """
    h, f = model.arch.halo, model.arch.n_filters
    dtype = model.head[0].weight.dtype  # the features' dtype; the input stays fp32 (FullPrecisionInput)
    z0, z1, y0, y1, x0, x1 = box[:6]
    sample = box.mask if isinstance(box, SlabBox) else None
    on_device = isinstance(volume, torch.Tensor)
    # On GPUs one box per slab: cuDNN autotunes per input shape (benchmark mode), and varying plane-group
    # boxes would retune for every group; equal slabs repeat the same few shapes. The device path
    # follows that rule wherever it runs.
    groups_mask = sample if device.type != "cuda" and not on_device else None
    dz, dy, dx = z1 - z0, y1 - y0, x1 - x0
    crop = _crop_with_zeros(volume, (z0, z1, y0, y1, x0, x1), h, device)
    itemsize = torch.finfo(dtype).bits // 8  # of the features, for the plane batches
    cl = options.channels_last
    out_device = device if on_device else torch.device("cpu")
    features = SlabFeatures(sample, (dz, dy, dx), f, dtype, device, out_device)
    crops = (crop[h:h + dz], crop[:, h:h + dy].permute(1, 0, 2), crop[:, :, h:h + dx].permute(2, 0, 1))
    with heap_reused_by_conv_layers(device) as after_group:
        for planes, order, store in zip(crops, ORDERS, features.stores):
            shape = tuple((dz, dy, dx)[a] for a in order)
            group_mask = None if groups_mask is None else groups_mask.transpose(order)
            batch = planes_per_batch_for(options, model.arch, shape[1] + 2 * h, shape[2] + 2 * h, itemsize, device)
            _features_into(model, planes, shape, store, group_mask, batch, cl, after_group)
    del crop, crops, planes, store
    features.stored()  # the sample masks and row numbers go: the head needs neither
    out = torch.zeros((dz * dy * dx, model.arch.num_classes), dtype=torch.uint8, device=out_device)
    out[:, 0] = 255
    # Equal-sized chunks of the samples: every distinct row count would build (and cache) new oneDNN
    # matmul kernels, which grew the heap by ~1.4 MB per chunk when chunks followed the mask.
    for start in range(0, len(features), HEAD_CHUNK_VOXELS):
        stop = start + HEAD_CHUNK_VOXELS
        out[features.samples[start:stop]] = _head_probabilities(model, features.rows(start, stop)).to(out_device)
    return out.reshape(dz, dy, dx, -1)


def _reference_slab_probabilities(model: TriplanarCNN, volume: np.ndarray, box: Box, options: DenseOptions,
                                  device: torch.device) -> torch.Tensor:
    """Same as ``slab_probabilities`` on the network as trained (autocast for reduced precision)."""
    h = model.arch.halo
    z0, z1, y0, y1, x0, x1 = box[:6]
    crop = _crop_with_zeros(volume, (z0, z1, y0, y1, x0, x1), h, device)
    batch = options.planes_per_batch or 64
    with autocast(device, options.precision):
        logits = crops_logits(model, crop[None], batch, options.channels_last)[0]  # (z, C, y, x)
    probs = torch.softmax(logits.float(), dim=1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    if isinstance(box, SlabBox) and box.mask is not None:  # the same samples as the fast path
        background_outside(np.moveaxis(probs.numpy(), -1, 0), box.mask)
    return probs


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _slab_with_retries(compute: Callable[[SlabBox], torch.Tensor], box: SlabBox, device: torch.device) -> torch.Tensor:
    """Compute a slab; when the device runs out of memory, split it along z and retry the halves."""
    try:
        return compute(box)
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not is_out_of_memory(error) or box.z1 - box.z0 < 2:
            raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    first, second = box.split()
    return torch.cat([_slab_with_retries(compute, first, device), _slab_with_retries(compute, second, device)], dim=0)


def _whole_foreground_box(mask) -> Optional[Tuple[int, int, int, int]]:
    """``foreground_box`` of the whole mask, read in plane ranges when it is computed on reading
    (``samples.SampleMask``)."""
    if isinstance(mask, np.ndarray):
        return foreground_box(mask)
    step = max(1, (1 << 24) // max(1, int(np.prod(mask.shape[1:]))))
    boxes = [b for b in (foreground_box(mask[z:z + step]) for z in range(0, mask.shape[0], step)) if b is not None]
    if not boxes:
        return None
    return min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes)


def iter_dense_probabilities(model: TriplanarCNN, volume: np.ndarray, mask: Optional[np.ndarray] = None,
                             device: torch.device | str = "cpu", options: DenseOptions = DenseOptions(),
                             progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None,
                             ) -> Iterator[Tuple[int, int, np.ndarray]]:
    """Yield (z0, z1, probabilities) slab by slab; probabilities are uint8 (C, z1-z0, Y, X), 255 = 1.

    ``model`` is prepared by ``inference_model`` for ``device`` (the fast path) or is the network as
    trained (the reference path, autocast to ``options.precision``).
    ``volume`` is the normalised (Z, Y, X) float image on the canonical grid, or a
    ``normalization.NormalizedVolume`` that normalises each slab's crop as it reads it. ``mask``
    marks the voxels to classify (default: volume > 0), a bool array or a ``samples.SampleMask``
    read slab by slab. They get the network's softmax; every other voxel gets background (class 0)
    with probability 1, as the paper classifies only its samples.
    Probabilities leave the device as uint8, so transfers and host memory stay small. A slab that
    runs out of device memory is split and retried.
    """
    device = torch.device(device)
    if mask is None:
        mask = np.asarray(volume) > 0
    prepared = is_prepared(model)
    if prepared:  # its weights' dtype is the compute precision
        options = replace(options, precision=model.inference_precision)
        compute_box = slab_probabilities
    else:
        model = model.eval()
        compute_box = _reference_slab_probabilities
    num_classes = model.arch.num_classes
    z_total, y_total, x_total = volume.shape
    whole_box = _whole_foreground_box(mask)
    box_shape = (whole_box[1] - whole_box[0], whole_box[3] - whole_box[2]) if whole_box else (1, 1)
    thickness = slab_thickness(volume.shape, num_classes, options, model.arch.n_filters, box_shape, device, prepared)
    return_freed_memory_to_the_system()
    report(progress, 0.0, "Running the network")  # the stage starts now, not when its first slab is done
    with torch.inference_mode():
        for z0 in range(0, z_total, thickness):
            check_cancel(cancel)
            z1 = min(z_total, z0 + thickness)
            planes = np.asarray(mask[z0:z1])
            box = foreground_box(planes)
            probs = None
            if box is not None:
                y0, y1, x0, x1 = box
                slab_box = SlabBox(z0, z1, y0, y1, x0, x1, planes[:, y0:y1, x0:x1])
                probs = _slab_with_retries(lambda b: compute_box(model, volume, b, options, device), slab_box, device)
                del slab_box
            del planes
            # allocated once the network's tensors of the slab are gone, so they never coexist
            slab = np.zeros((num_classes, z1 - z0, y_total, x_total), dtype=np.uint8)
            slab[0] = 255
            if probs is not None:
                slab[:, :, y0:y1, x0:x1] = probs.permute(3, 0, 1, 2).numpy()
                del probs
                return_freed_memory_to_the_system()
            yield z0, z1, slab
            del slab  # the caller has its copy: held here, it would live on through the next slab's pass
            report(progress, z1 / z_total, "Running the network")


def dense_probabilities(model: TriplanarCNN, volume: np.ndarray, mask: Optional[np.ndarray] = None,
                        device: torch.device | str = "cpu", options: DenseOptions = DenseOptions(),
                        progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None,
                        out: Optional[Sequence[np.ndarray]] = None) -> Union[np.ndarray, Sequence[np.ndarray]]:
    """Whole-volume uint8 probabilities (C, Z, Y, X); see ``iter_dense_probabilities``.

    ``out``: the C arrays (Z, Y, X) to fill, one per class, returned instead of a new (C, Z, Y, X)
    array (separate channels can be let go one by one afterwards). When a GPU runs out of memory
    even for one-plane slabs, the pass warns and continues on the CPU.
    """
    if out is None:
        out = np.empty((model.arch.num_classes,) + tuple(volume.shape), dtype=np.uint8)
    device = torch.device(device)
    done = 0
    try:
        for z0, z1, slab in iter_dense_probabilities(model, volume, mask, device, options, progress, cancel):
            for channel, values in zip(out, slab):
                channel[z0:z1] = values
            del slab, values  # or they would live on through the next slab's pass
            done = z1
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if device.type != "cuda" or not is_out_of_memory(error):
            raise
        message = ("The GPU ran out of memory even for the thinnest slabs; continuing on the CPU (slower). "
                   "Close other GPU programs or choose the CPU device to avoid this.")
        warnings.warn(message, RuntimeWarning)
        report(progress, done / max(1, volume.shape[0]), message)
        torch.cuda.empty_cache()
        cpu_model = inference_model(model, fast_cpu_precision(), "cpu", channels_last=True)
        cpu_options = replace(options, memory_budget_bytes=0, channels_last=True)
        for z0, z1, slab in iter_dense_probabilities(cpu_model, volume, mask, "cpu", cpu_options, progress, cancel):
            for channel, values in zip(out, slab):
                channel[z0:z1] = values
            del slab, values
    return out


def _tensor_box(mask: torch.Tensor) -> Optional[Tuple[int, int, int, int]]:
    """``slab_sizing.foreground_box`` of a (z, y, x) bool tensor, computed where it lies."""
    rows = torch.nonzero(mask.any(dim=2).any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(mask.any(dim=1).any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def dense_probabilities_on_device(model: TriplanarCNN, volume: torch.Tensor, mask: torch.Tensor,
                                  options: DenseOptions = DenseOptions(), progress: Optional[ProgressCallback] = None,
                                  cancel: Optional[CancelCheck] = None) -> torch.Tensor:
    """Whole-volume uint8 probabilities (C, Z, Y, X) of a normalised (Z, Y, X) tensor, kept on its device.

    The device path's dense pass (``device_segmentation``): ``iter_dense_probabilities`` with
    ``volume`` and the bool ``mask`` of the voxels to classify on the device the prepared ``model``
    is on, and nothing coming back to the host. A slab that runs out of memory is split and retried;
    when even one-plane slabs do not fit, the error goes to the caller.
    """
    device = volume.device
    if not is_prepared(model):
        raise ValueError("the device path runs a model prepared by prepared_model.inference_model")
    options = replace(options, precision=model.inference_precision)
    num_classes = model.arch.num_classes
    z_total, y_total, x_total = volume.shape
    out = torch.zeros((num_classes, z_total, y_total, x_total), dtype=torch.uint8, device=device)
    out[0] = 255
    whole_box = _tensor_box(mask)
    box_shape = (whole_box[1] - whole_box[0], whole_box[3] - whole_box[2]) if whole_box else (1, 1)
    thickness = slab_thickness(tuple(volume.shape), num_classes, options, model.arch.n_filters, box_shape, device)
    with torch.inference_mode():
        for z0 in range(0, z_total, thickness):
            check_cancel(cancel)
            z1 = min(z_total, z0 + thickness)
            box = _tensor_box(mask[z0:z1])
            if box is not None:
                y0, y1, x0, x1 = box
                slab_box = SlabBox(z0, z1, y0, y1, x0, x1, mask[z0:z1, y0:y1, x0:x1])
                probs = _slab_with_retries(lambda b: slab_probabilities(model, volume, b, options, device),
                                           slab_box, device)
                out[:, z0:z1, y0:y1, x0:x1] = probs.permute(3, 0, 1, 2)
                del probs
            report(progress, z1 / z_total, "Running the network")
    return out
