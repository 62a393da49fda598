"""A PLACEHOLDER synthetic head: concentric layers around a skull-stripped brain, for the evaluation
battery until the proper head synthesis (random shape and thickness, orbits, face, neck) is there.

Outward from the brain's outline: extra-cerebral CSF (dark), the skull's inner table (very dark),
diploe (intermediate), the outer table (very dark), scalp fat (brighter than white matter, as on
every T1) and skin/muscle (intermediate). Intensities are relative to the brain's white matter (the
brightest major tissue mode). Layer thicknesses are drawn per seed within adult ranges; the volume
is padded so the layers fit. Everything added is background for the labels.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage

from ..engine.geometry import Volume
from ..engine.normalization import tissue_mode

# (name, thickness range in mm, intensity relative to white matter)
PLACEHOLDER_LAYERS = (
    ("extra-cerebral CSF", (1.0, 3.0), 0.25),
    ("inner table", (1.5, 2.5), 0.06),
    ("diploe", (2.0, 4.0), 0.55),
    ("outer table", (1.5, 2.5), 0.06),
    ("scalp fat", (3.0, 7.0), 1.35),
    ("skin and muscle", (1.5, 3.0), 0.6),
)
MARGIN_MM = 24.0  # the layers add at most 22 mm


def pad_volume(volume: Volume, margin_voxels: Tuple[int, int, int]) -> Volume:
    """``volume`` with ``margin_voxels`` (z, y, x) of zeros on both sides, origin moved to keep the physical place."""
    array = np.pad(volume.array, [(m, m) for m in margin_voxels])
    shift_ijk = -np.array(margin_voxels[::-1], float)  # index (x, y, z) of the new first voxel in the old grid
    origin = volume.index_to_physical(shift_ijk[None])[0]
    return Volume(array, volume.spacing, tuple(float(v) for v in origin), volume.direction)


def brain_outline(array: np.ndarray) -> np.ndarray:
    """The brain and what it encloses (sulci, ventricles): voxels > 0, closed and filled."""
    return ndimage.binary_fill_holes(ndimage.binary_closing(array > 0, iterations=2))


def placeholder_synthetic_head(brain: Volume, seed: int = 0) -> Tuple[Volume, Tuple[int, int, int]]:
    """The skull-stripped ``brain`` inside placeholder head layers (see module docstring).

    Returns the head image, padded by ``MARGIN_MM`` on every side, and the padding in voxels
    (z, y, x), so that label maps can be padded the same way (``np.pad``).
    """
    rng = np.random.default_rng(seed)
    spacing_zyx = np.array(brain.spacing[::-1], float)
    margin = tuple(int(np.ceil(MARGIN_MM / s)) for s in spacing_zyx)
    padded = pad_volume(brain, margin)
    array = padded.array.astype(np.float32)
    outline = brain_outline(array)
    outside_mm = ndimage.distance_transform_edt(~outline, sampling=spacing_zyx)
    white = tissue_mode(array)
    head = array.copy()
    start = 0.0
    for _, (low, high), level in PLACEHOLDER_LAYERS:
        stop = start + rng.uniform(low, high)
        head[(outside_mm > start) & (outside_mm <= stop)] = level * white
        start = stop
    texture = 1.0 + 0.03 * rng.standard_normal(head.shape).astype(np.float32)
    head[~outline] *= texture[~outline]
    return padded.with_array(head), margin
