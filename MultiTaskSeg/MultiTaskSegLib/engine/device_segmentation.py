"""The device path of ``Segmenter.predict``: the volume stays on the device (the GPU) from the read
to the labelmap, and only uint8 arrays come back.

input uploaded once, in its own voxel type -> canonical grid (``torch_resampling``) -> sample mask
(raw intensity > 0, grown by one voxel when the way back interpolates) -> normalisation -> dense
pass (``slab_loop.dense_probabilities_on_device``) -> uint8 probabilities back on the input grid ->
background outside the input's samples -> the threshold-free step of the labelmap rule -> host.

The steps and their rules are the host path's (``segmenter``, with SimpleITK resampling); only
float rounding differs (Testing/test_device_path.py). Why: on an H200 the host path spent 0.34 s of
the brain's 0.48 s outside the conv stack (issue 15): the head, and host resampling, per-slab
copies and the labelmap rule, which this path moves to the GPU. On the CPU the host path stays (the
tests force this one there).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from .classes import ClassInfo
from .errors import InputError
from .geometry import Volume
from .labelmap_rule import ProbabilityMaps
from .normalization import mr_scale
from .progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress
from .samples import sample_voxels as sample_voxels_of, zero_interpolation_noise
from .slab_loop import dense_probabilities_on_device
from .slab_sizing import DenseOptions
from .torch_resampling import canonical_grid, from_canonical_on_device, to_canonical_on_device


# Voxel types torch computes with on every device; others (bool, uint16 and wider unsigned types,
# which CUDA kernels mostly lack) are converted on the host first.
_DEVICE_TYPES = (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64)


def _uploadable(array) -> np.ndarray:
    """``array`` as torch.from_numpy takes it: native byte order, positive strides, a device type."""
    array = np.asarray(array)
    if array.dtype.type not in _DEVICE_TYPES:
        array = array.astype(np.uint8 if array.dtype == np.bool_ else
                             np.int32 if array.dtype.itemsize <= 2 and array.dtype.kind == "u" else np.float64)
    elif not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array)


def normalize_on_device(canonical: torch.Tensor, modality: str, settings: Mapping[str, Mapping]) -> torch.Tensor:
    """``normalization.normalize`` of a (z, y, x) tensor, on its device (float32, a new tensor).

    The CT window is elementwise. An MR rule's scale is a statistic of the whole image (a histogram
    of the deep interior after a distance transform, or a percentile): ``normalization.mr_scale``
    computes it on a host copy of the image, the one transfer to the host on this path (the brain:
    28 MB, ~0.1 s of host work), so both paths divide by the very same number.
    """
    if modality not in settings:
        raise InputError(f"The model has no intensity normalisation for modality {modality!r}; "
                         f"it knows {', '.join(settings)}. Pick one of those with --modality.")
    rule = settings[modality]
    data = canonical.float()
    if rule["method"] == "window":
        low, high, scale = float(rule["low"]), float(rule["high"]), float(rule["scale"])
        return data.clamp(low, high).sub_(low).div_(scale)
    scale = mr_scale(data.cpu().numpy(), rule)  # raises InputError for unknown methods
    return data.clamp(min=0.0).div_(np.float32(scale))


def background_outside_on_device(probabilities: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """``labelmap_rule.background_outside`` in place on a uint8 (C, z, y, x) tensor."""
    probabilities.mul_(inside)
    probabilities[0].masked_fill_(~inside, 255)
    return probabilities


def argmax_labels_on_device(probabilities: torch.Tensor, classes: Sequence[ClassInfo],
                            selected: Sequence[int]) -> torch.Tensor:
    """Step 2 of the labelmap rule (``ProbabilityMaps.argmax_labels``) on the device: the most
    probable of background and the argmax classes (ties to the lowest index), 0 where not selected."""
    keep = torch.zeros(len(classes), dtype=torch.uint8, device=probabilities.device)
    for index in selected:
        keep[index] = index
    best = probabilities[0].clone()
    winner = torch.zeros(best.shape, dtype=torch.uint8, device=probabilities.device)
    for info in classes:
        if info.decision == "argmax":  # ascending index and strict '>': ties go to the lowest index
            better = probabilities[info.index] > best
            best = torch.maximum(best, probabilities[info.index])
            winner.masked_fill_(better, info.index)
    return keep[winner.long()]


class _MapsWithArgmax(ProbabilityMaps):
    """Probability maps whose threshold-free step came from the device: a threshold change (the
    slider) still redoes step 1 on the host, as for any ``ProbabilityMaps``."""

    def __init__(self, data: np.ndarray, classes, selected, default_thresholds, argmax_labels: np.ndarray):
        super().__init__(data, classes, selected, default_thresholds)
        self._from_device = argmax_labels

    def _compute_argmax_labels(self) -> np.ndarray:
        return self._from_device


def predict_on_device(segmenter, volume: Volume, selected: Sequence[int], modality: str,
                      progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None,
                      ) -> ProbabilityMaps:
    """``Segmenter.predict`` with every voxel operation on ``segmenter.device`` (see module docstring)."""
    device, bundle = segmenter.device, segmenter.bundle
    report(progress, 0.0, "Resampling to the canonical grid")
    grid = canonical_grid(volume, segmenter.target_spacing)
    source = torch.from_numpy(_uploadable(volume.array)).to(device)
    with torch.inference_mode():
        canonical = to_canonical_on_device(source, grid)
        if not grid.is_exact:
            zero_interpolation_noise(canonical)
        sample_voxels = sample_voxels_of(canonical, interpolated=not grid.is_exact)
        network_input = normalize_on_device(canonical, modality, bundle.normalization)
        del canonical
    check_cancel(cancel)
    options = DenseOptions(precision=segmenter.precision, memory_budget_bytes=segmenter.options.memory_budget_bytes,
                           channels_last=segmenter.options.channels_last)
    probabilities = dense_probabilities_on_device(segmenter.inference_model, network_input, sample_voxels, options,
                                                  sub_progress(progress, 0.05, 0.9), cancel)
    del network_input, sample_voxels
    check_cancel(cancel)
    report(progress, 0.9, "Resampling to the input grid")
    with torch.inference_mode():
        on_input = from_canonical_on_device(probabilities, grid)
        del probabilities
        background_outside_on_device(on_input, source > 0)
        del source
        labels = argmax_labels_on_device(on_input, bundle.classes, selected)
        maps, labels = on_input.cpu().numpy(), labels.cpu().numpy()
    report(progress, 1.0, "Done")
    return _MapsWithArgmax(maps, bundle.classes, selected, bundle.default_thresholds, labels)
