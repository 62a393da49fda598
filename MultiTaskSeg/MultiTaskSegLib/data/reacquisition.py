"""Simulated clinical re-acquisitions of a volume with its label maps: a tilted slice orientation,
thick slices along any axis, a receive-coil bias field and Rician noise.

The image is resampled onto a fine grid in the tilted frame (linear), blurred along the thick axis
with a Gaussian slice profile (FWHM = the slice thickness), then every k-th plane is kept; label maps
(and any mask) take the same planes by nearest neighbour, so image and labels stay aligned by
construction. Then a smooth multiplicative bias field and Rician noise (magnitude of the complex
signal plus Gaussian noise in both channels, so the air gets its noise floor as on a scanner).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..engine.geometry import Volume
from ..engine.normalization import tissue_mode


@dataclass(frozen=True)
class Acquisition:
    """How a variant is acquired: tilt about the left-right axis (degrees), voxel size as multiples of
    the source's finest spacing in ITK order (x, y, z), bias field strength and noise level."""

    tilt_degrees: float = 0.0
    spacing_factors: Tuple[int, int, int] = (1, 1, 1)
    bias: float = 0.0        # the field spans about exp(+-bias)
    noise: float = 0.0       # Gaussian sigma per channel, as a fraction of the white-matter level


def tilted_direction(direction: np.ndarray, degrees: float) -> np.ndarray:
    """``direction`` rotated about the physical left-right (LPS x) axis by ``degrees``."""
    a = np.radians(degrees)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
    return rotation @ np.asarray(direction, float)


def _fine_grid(volume: Volume, direction: np.ndarray, spacing: float):
    """Size and origin of a grid of ``spacing`` along ``direction``'s axes holding the whole ``volume``."""
    shape_xyz = np.array(volume.array.shape[::-1])
    corners = np.array([[i, j, k] for i in (0, shape_xyz[0] - 1) for j in (0, shape_xyz[1] - 1)
                        for k in (0, shape_xyz[2] - 1)], float)
    physical = volume.index_to_physical(corners)
    local = physical @ direction  # coordinates along the new axes (columns of ``direction``)
    low, high = local.min(axis=0), local.max(axis=0)
    size = np.ceil((high - low) / spacing).astype(int) + 1
    return [int(s) for s in size], tuple(float(v) for v in direction @ low)


def _resample(volume: Volume, size, origin, spacing, direction, nearest: bool) -> np.ndarray:
    reference = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    reference.SetSpacing([float(spacing)] * 3)
    reference.SetOrigin(origin)
    reference.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    image = volume.to_sitk() if not nearest else volume.with_array(volume.array.astype(np.uint8)).to_sitk()
    if not nearest:
        image = sitk.Cast(image, sitk.sitkFloat32)
    out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
                        0.0, sitk.sitkUInt8 if nearest else sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def bias_field(shape: Sequence[int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """exp of a random smooth (quadratic) field spanning about +-``strength`` over the volume."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    c = rng.uniform(-1.0, 1.0, size=9).astype(np.float32) * strength / 3.0
    field = c[0] * z + c[1] * y + c[2] * x + c[3] * z * y + c[4] * y * x + c[5] * z * x + c[6] * z ** 2 + \
        c[7] * y ** 2 + c[8] * x ** 2
    return np.exp(field)


def reacquire(volume: Volume, label_maps: Mapping[str, np.ndarray], acquisition: Acquisition,
              seed: int = 0) -> Tuple[Volume, Dict[str, np.ndarray]]:
    """``volume`` and its ``label_maps`` (on its grid) as ``acquisition`` would deliver them."""
    rng = np.random.default_rng(seed)
    fine = float(min(volume.spacing))
    direction = tilted_direction(volume.direction, acquisition.tilt_degrees)
    size, origin = _fine_grid(volume, direction, fine)
    factors = acquisition.spacing_factors
    image = _resample(volume, size, origin, fine, direction, nearest=False)
    labels = {name: _resample(volume.with_array(np.asarray(m)), size, origin, fine, direction, nearest=True)
              for name, m in label_maps.items()}
    keep = []
    for axis_xyz, k in enumerate(factors):
        axis = 2 - axis_xyz  # numpy axis of ITK axis x, y, z
        if k > 1:  # slice profile: FWHM k planes, less the fine grid's own width
            image = ndimage.gaussian_filter1d(image, np.sqrt(k * k - 1.0) / 2.3548, axis=axis, mode="nearest")
        keep.append(slice(None, None, int(k)))
    take = tuple(keep[::-1])
    image = np.ascontiguousarray(image[take])
    labels = {name: np.ascontiguousarray(m[take]) for name, m in labels.items()}
    if acquisition.bias or acquisition.noise:
        level = tissue_mode(image) if (image > 0).any() else 1.0
        image = image * bias_field(image.shape, acquisition.bias, rng) if acquisition.bias else image
        if acquisition.noise:
            sigma = acquisition.noise * level
            real = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
            imaginary = rng.normal(0.0, sigma, image.shape).astype(np.float32)
            image = np.sqrt(real * real + imaginary * imaginary)
    spacing = tuple(fine * k for k in factors)
    return Volume(image.astype(np.float32), spacing, origin, direction), labels
