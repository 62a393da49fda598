"""Intensity normalisation per modality, with settings stored in the model bundle.

Both rules map air to 0, so that the zero padding the network sees outside the volume looks like
air. Which voxels are classified at all (the paper's "intensity > 0", section 3.2) is decided on the
raw intensities, before normalisation (pipeline.py):

* MR ("percentile"): divide by a high percentile of the voxels > 0; MR intensities have no unit,
  so only their ratios carry information.
* CT ("window"): Hounsfield units clipped to [low, high], shifted so that ``low`` (air) becomes 0,
  divided by ``scale``. Absolute values matter in CT (contrast-filled vessels are ~400 HU).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .errors import InputError

MODALITIES = ("MR", "CT")

DEFAULT_NORMALIZATION = {
    "MR": {"method": "percentile", "percentile": 99.5},
    "CT": {"method": "window", "low": -1000.0, "high": 2000.0, "scale": 1000.0},
}

# A CT image in Hounsfield units has air (-1000) around or inside the body; MR magnitudes are >= 0.
_CT_AIR_HU = -500.0
_CT_AIR_FRACTION = 0.01


def detect_modality(array: np.ndarray) -> str:
    """"CT" when at least 1% of the voxels are below -500 (air in Hounsfield units), else "MR"."""
    sample = array.ravel()[:: max(1, array.size // 1_000_000)]
    return "CT" if np.mean(sample < _CT_AIR_HU) >= _CT_AIR_FRACTION else "MR"


def resolve_modality(requested: str, array: np.ndarray) -> str:
    if requested in (None, "", "auto"):
        return detect_modality(array)
    modality = requested.upper()
    if modality not in MODALITIES:
        raise InputError(f"Unknown modality {requested!r}: use one of auto, {', '.join(MODALITIES)}.")
    return modality


def normalize(array: np.ndarray, modality: str, settings: Mapping[str, Mapping] = DEFAULT_NORMALIZATION) -> np.ndarray:
    """The network input for ``array`` (float32, same shape) under the bundle's rule for ``modality``."""
    if modality not in settings:
        raise InputError(f"The model has no intensity normalisation for modality {modality!r}; "
                         f"it knows {', '.join(settings)}. Pick one of those with --modality.")
    rule = settings[modality]
    # one float32 copy, then in place: a CTA-sized volume is 315 MB per temporary
    data = np.array(array, dtype=np.float32)
    if rule["method"] == "percentile":
        foreground = data[data > 0]
        if foreground.size == 0:
            raise InputError("The image has no voxel above 0, so there is nothing to segment "
                             "(the network classifies voxels with intensity > 0). Check the image.")
        step = max(1, foreground.size // 2_000_000)  # a subsample is plenty for a percentile
        scale = float(np.percentile(foreground[::step], rule["percentile"]))
        del foreground
        np.clip(data, 0.0, None, out=data)
        data /= np.float32(scale)
        return data
    if rule["method"] == "window":
        low, high, scale = float(rule["low"]), float(rule["high"]), float(rule["scale"])
        np.clip(data, low, high, out=data)
        data -= np.float32(low)
        data /= np.float32(scale)
        return data
    raise InputError(f"Unknown normalisation method {rule['method']!r} in the model bundle.")
