"""The segmenter: from an image to per-class probabilities on its own grid.

volume -> canonical axis-aligned LPS grid at isotropic spacing (the three planes become axial,
coronal, sagittal) -> per-modality normalisation -> dense triplanar pass on the voxels with raw
intensity > 0 (the paper's samples) -> uint8 probabilities -> back to the input grid ->
``ProbabilityMaps``, from which ``labelmap(thresholds)`` is the cheap last step.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
import torch

from .bundle import ModelBundle
from .classes import ClassKey, selected_class_indices
from .devices import available_devices, configure_device, default_precision, resolve_device
from .geometry import Volume, from_canonical, to_canonical, validate_volume
from .labelmap_rule import ProbabilityMaps, background_outside
from .normalization import normalize, resolve_modality
from .prepared_model import inference_model
from .progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress
from .slab_loop import dense_probabilities
from .slab_sizing import DenseOptions


def dilated_by_one_voxel(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by its 26 neighbours (a 3x3x3 cube), in three separable passes.

    Probabilities go back to the input grid by linear interpolation, which reads the canonical
    voxels around each input voxel; at the foreground's edge some of those have intensity <= 0.
    Classifying them too keeps the edge's input voxels from blending with forced background.
    """
    grown = mask.copy()
    for axis in range(mask.ndim):
        before = grown.copy()
        lower = [slice(None)] * mask.ndim
        upper = [slice(None)] * mask.ndim
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        grown[tuple(lower)] |= before[tuple(upper)]
        grown[tuple(upper)] |= before[tuple(lower)]
    return grown


class Segmenter:
    """A loaded model on a device, ready to segment volumes.

    >>> seg = Segmenter(load_bundle())                 # doctest: +SKIP
    >>> probs = seg.predict(read_volume("t1.nii.gz"))  # doctest: +SKIP
    >>> labels = probs.labelmap({"pectoral muscle": 0.4})  # doctest: +SKIP
    """

    def __init__(self, bundle: ModelBundle, device: str = "auto", target_spacing: Optional[float] = None,
                 modality: str = "auto", precision: str = "auto", memory_budget_bytes: Optional[int] = None):
        self.bundle = bundle
        self.device = resolve_device(device)
        self.target_spacing = target_spacing or bundle.target_spacing_mm
        self.modality = modality
        self.precision = default_precision(self.device) if precision == "auto" else precision
        configure_device(self.device)
        # 0: each slab sizes itself from the memory available at the time (slab_sizing.memory_budget)
        budget = memory_budget_bytes or int(os.environ.get("MULTITASKSEG_MEMORY_BUDGET", 0))
        self.options = DenseOptions(precision=self.precision, memory_budget_bytes=budget, channels_last=True)
        self.model = bundle.model.to(self.device).eval()
        # BN folded into the convs, weights in the compute dtype: prepared once, reused per volume
        self.inference_model = inference_model(self.model, self.precision, self.device, channels_last=True)

    @property
    def device_description(self) -> str:
        for name, description in available_devices():
            if torch.device(name) == self.device:
                return description
        return str(self.device)

    def selected_classes(self, classes: Optional[Sequence[ClassKey]]) -> List[int]:
        """Indices of ``classes`` (names or indices); None: every class but background."""
        return selected_class_indices(self.bundle.classes, classes)

    def predict(self, volume: Volume, classes: Optional[Sequence[str]] = None,
                progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None) -> ProbabilityMaps:
        """Per-class probabilities of ``volume`` on its own grid (see module docstring)."""
        validate_volume(volume)
        selected = self.selected_classes(classes)
        report(progress, 0.0, "Resampling to the canonical grid")
        modality = resolve_modality(self.modality, volume.array)
        canonical, grid = to_canonical(volume, self.target_spacing)
        check_cancel(cancel)
        sample_voxels = canonical.array > 0
        if not grid.is_exact:  # the way back interpolates: classify what it reads
            sample_voxels = dilated_by_one_voxel(sample_voxels)
        network_input = normalize(canonical.array, modality, self.bundle.normalization)
        del canonical  # large volumes: keep at most the input, one float copy and the mask alive
        probabilities = dense_probabilities(self.inference_model, network_input, sample_voxels, self.device,
                                            self.options, sub_progress(progress, 0.05, 0.9), cancel)
        del network_input, sample_voxels
        check_cancel(cancel)
        report(progress, 0.9, "Resampling to the input grid")
        on_input = from_canonical(probabilities, grid, interpolation="linear")
        del probabilities
        background_outside(on_input, np.asarray(volume.array) > 0)
        report(progress, 1.0, "Done")
        return ProbabilityMaps(on_input, self.bundle.classes, selected, self.bundle.default_thresholds)
