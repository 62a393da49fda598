"""The segmenter: from an image to per-class probabilities on its own grid.

volume -> canonical axis-aligned LPS grid at isotropic spacing (the three planes become axial,
coronal, sagittal) -> per-modality normalisation -> dense triplanar pass on the voxels with raw
intensity > 0 (the paper's samples) -> uint8 probabilities -> back to the input grid ->
``ProbabilityMaps``, from which ``labelmap(thresholds)`` is the cheap last step.
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Sequence

import numpy as np
import torch

from . import environment
from . import samples
from .bundle import ModelBundle
from .classes import ClassKey, selected_class_indices
from .device_segmentation import predict_on_device
from .devices import available_devices, configure_device, default_precision, resolve_device
from .geometry import Volume, channels_from_canonical, from_canonical, to_canonical, validate_volume
from .labelmap_rule import ProbabilityMaps, background_outside
from .normalization import NormalizedVolume, resolve_modality
from .openvino_backend import choose_backend, with_openvino_conv_stack
from .prepared_model import inference_model
from .progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress
from .samples import dilated_by_one_voxel  # noqa: F401  (importable from here, as before)
from .slab_loop import dense_probabilities, is_out_of_memory
from .slab_sizing import DenseOptions


# Voxels per plane range when forcing background outside the samples on the input grid.
BACKGROUND_CHUNK_VOXELS = 1 << 20


class Segmenter:
    """A loaded model on a device, ready to segment volumes.

    >>> seg = Segmenter(load_bundle())                 # doctest: +SKIP
    >>> probs = seg.predict(read_volume("t1.nii.gz"))  # doctest: +SKIP
    >>> labels = probs.labelmap({"pectoral muscle": 0.4})  # doctest: +SKIP
    """

    def __init__(self, bundle: ModelBundle, device: str = "auto", target_spacing: Optional[float] = None,
                 modality: str = "auto", precision: str = "auto", memory_budget_bytes: Optional[int] = None,
                 keep_on_device: Optional[bool] = None, backend: str = "auto"):
        self.bundle = bundle
        self.device = resolve_device(device)
        # The device path (device_segmentation) where the network runs on a GPU: resampling, masks
        # and the labelmap rule there too. None: on CUDA devices; True forces it (tests on the CPU).
        self.keep_on_device = self.device.type == "cuda" if keep_on_device is None else bool(keep_on_device)
        self.target_spacing = target_spacing or bundle.target_spacing_mm
        self.modality = modality
        self.precision = default_precision(self.device) if precision == "auto" else precision
        configure_device(self.device)
        # 0: each slab sizes itself from the memory available at the time (slab_sizing.memory_budget)
        budget = memory_budget_bytes or environment.memory_budget_bytes()
        self.options = DenseOptions(precision=self.precision, memory_budget_bytes=budget, channels_last=True)
        self.model = bundle.model.to(self.device).eval()
        # BN folded into the convs, weights in the compute dtype: prepared once, reused per volume
        self.inference_model = inference_model(self.model, self.precision, self.device, channels_last=True)
        # the conv stack compiled by OpenVINO where it is installed and faster (openvino_backend)
        self.backend = choose_backend(backend, self.device, self.precision)
        if self.backend == "openvino":
            self.inference_model = with_openvino_conv_stack(self.inference_model)

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
        modality = resolve_modality(self.modality, volume.array)
        if self.keep_on_device:
            try:
                return predict_on_device(self, volume, selected, modality, progress, cancel)
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not is_out_of_memory(error):
                    raise
                warnings.warn("The volume did not fit in GPU memory for the all-on-GPU path; resampling on the "
                              "CPU instead (slower).", RuntimeWarning)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        report(progress, 0.0, "Resampling to the canonical grid")
        canonical, grid = to_canonical(volume, self.target_spacing)
        check_cancel(cancel)
        if not grid.is_exact:
            samples.zero_interpolation_noise(canonical.array)
        # the paper's samples, computed slab by slab as the dense pass reads them (no whole-volume mask)
        sample_voxels = samples.SampleMask(canonical.array, interpolated=not grid.is_exact)
        # normalised crop by crop as the dense pass reads them: no float32 copy of the whole volume
        network_input = NormalizedVolume(canonical.array, modality, self.bundle.normalization)
        del canonical  # large volumes: keep at most the input, its canonical copy and the mask alive
        # On an interpolated grid one array per class, each let go once it is back on the input grid
        # (channels_from_canonical); an exact grid's probabilities come back as a view, no copy.
        channels = None if grid.is_exact else [np.empty(grid.canonical_shape, np.uint8)
                                                 for _ in range(self.inference_model.arch.num_classes)]
        probabilities = dense_probabilities(self.inference_model, network_input, sample_voxels, self.device,
                                            self.options, sub_progress(progress, 0.05, 0.9), cancel, out=channels)
        del network_input, sample_voxels, channels
        check_cancel(cancel)
        report(progress, 0.9, "Resampling to the input grid")
        if grid.is_exact:
            on_input = from_canonical(probabilities, grid, interpolation="linear")
        else:
            on_input = channels_from_canonical(probabilities, grid, interpolation="linear")
        del probabilities
        # plane range by plane range: a whole-volume mask and its negation were 2 bytes a voxel more
        image = np.asarray(volume.array)
        step = max(1, BACKGROUND_CHUNK_VOXELS // max(1, image[0].size))
        for start in range(0, image.shape[0], step):
            background_outside(on_input[:, start:start + step], image[start:start + step] > 0)
        report(progress, 1.0, "Done")
        return ProbabilityMaps(on_input, self.bundle.classes, selected, self.bundle.default_thresholds)
