"""Random pose, shape and resolution for training blocks (the spatial half of SynthSeg's recipe).

Users' scans come tilted by tens of degrees, at 0.8-1.3 mm in plane and with slices up to 5 mm
thick along any axis. Each block is therefore sampled from its case through a random affine
transform (rotations up to 30 degrees about every axis, scaling 0.8-1.2 per axis, shear) and a
smooth elastic deformation, image linearly and labels and the sample mask by nearest neighbour,
all at the same coordinates, so they stay aligned. Then the block may be degraded to a random
acquisition: blurred along each axis to its voxel size and down- and up-sampled there, as an
anisotropic scan looks after resampling to the isotropic grid; the labels keep their full
resolution, which is what the network has to recover.

Transforms act about the block's centre on the case's canonical grid (arrays (z, y, x)), so a
block drawn around a small structure still holds it, and they cost the same per block whatever
the case's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .random_fields import interpolate_axes


@dataclass(frozen=True)
class SpatialSettings:
    max_rotation_degrees: float = 30.0
    scaling: Tuple[float, float] = (0.8, 1.2)
    max_shear: float = 0.08
    elastic_mm: float = 3.0           # standard deviation of the displacement's knots
    elastic_wavelength_mm: float = 24.0
    acquisition_share: float = 0.6     # blocks degraded to a random acquisition
    in_plane_mm: Tuple[float, float] = (0.8, 1.3)
    slice_mm: Tuple[float, float] = (1.5, 5.0)


# The acquisitions each task's scans come in. Brain T1s: any clinical protocol, slices up to 5 mm
# (SynthSeg's range). Breast MRI: 3D sequences, slices of 1-3 mm. Cardiac CTA: reconstructed at
# 0.5-1 mm whatever the scanner, since the coronary arteries are 1-4 mm wide; 5 mm slices erase
# them from the image while their labels stay, which teaches the network to guess (a CPU fine-tune
# with the brain's range lost half its coronary Dice in 75 steps).
TASK_SETTINGS = {
    "breast": SpatialSettings(slice_mm=(1.0, 3.0)),
    "coronary": SpatialSettings(in_plane_mm=(0.4, 0.9), slice_mm=(0.5, 1.25)),
}


def settings_for_task(task: str) -> SpatialSettings:
    return TASK_SETTINGS.get(task, SpatialSettings())


def rotation_matrix(angles_rad: Sequence[float]) -> np.ndarray:
    """Rotations about array axes 0, 1, 2 in turn (angles in radians)."""
    out = np.eye(3)
    for axis, angle in enumerate(angles_rad):
        c, s = np.cos(angle), np.sin(angle)
        a, b = [i for i in range(3) if i != axis]
        r = np.eye(3)
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
        out = out @ r
    return out


@dataclass
class BlockTransform:
    """Output voxel o of a block of ``size`` maps to case voxel ``centre + matrix @ (o - mid) + displacement(o)``."""

    matrix: np.ndarray                 # (3, 3), output -> input index units
    displacement: np.ndarray = None    # (3, n, n, n) in input voxels, or None

    @classmethod
    def random(cls, rng: np.random.Generator, size: int, spacing_mm: float,
               settings: SpatialSettings = SpatialSettings()) -> "BlockTransform":
        angles = np.deg2rad(rng.uniform(-settings.max_rotation_degrees, settings.max_rotation_degrees, 3))
        scales = rng.uniform(*settings.scaling, size=3)
        shear = np.eye(3)
        shear[np.triu_indices(3, 1)] = rng.uniform(-settings.max_shear, settings.max_shear, 3)
        # a scale s > 1 makes anatomy bigger in the block: it samples the case more finely
        matrix = rotation_matrix(angles) @ shear @ np.diag(1.0 / scales)
        displacement = None
        if settings.elastic_mm > 0:
            knots = max(2, int(round(size * spacing_mm / settings.elastic_wavelength_mm)) + 1)
            coarse = rng.normal(0.0, settings.elastic_mm / spacing_mm, size=(3, knots, knots, knots))
            positions = [np.linspace(0.0, knots - 1, size)] * 3
            displacement = np.stack([interpolate_axes(c, positions) for c in coarse])
        return cls(matrix, displacement)

    def coordinates(self, centre: Sequence[float], size: int, mid: int) -> np.ndarray:
        """(3, size, size, size) input coordinates of the block's voxels; output voxel ``mid`` (on
        every axis) lands on ``centre``, so the identity transform samples whole voxels."""
        offsets = np.arange(size, dtype=np.float32) - np.float32(mid)
        out = np.empty((3, size, size, size), np.float32)
        m = self.matrix.astype(np.float32)
        for i in range(3):
            out[i] = (m[i, 0] * offsets[:, None, None] + m[i, 1] * offsets[None, :, None]
                      + m[i, 2] * offsets[None, None, :] + np.float32(centre[i]))
            if self.displacement is not None:
                out[i] += self.displacement[i]
        return out

    def sample(self, arrays: Sequence[np.ndarray], centre: Sequence[float], size: int, mid: int,
               orders: Sequence[int]) -> List[np.ndarray]:
        """Each array resampled on the block (order 1: linear, 0: nearest); outside the case is 0."""
        coords = self.coordinates(centre, size, mid)
        return [ndimage.map_coordinates(a, coords, order=order, mode="constant", cval=0, prefilter=False)
                .astype(a.dtype, copy=False) for a, order in zip(arrays, orders)]


def random_acquisition(rng: np.random.Generator, settings: SpatialSettings = SpatialSettings()
                       ) -> Tuple[float, float, float]:
    """Voxel sizes (mm) of a random scan: in plane ``settings.in_plane_mm``, and along one random axis
    slices of ``settings.slice_mm`` (for the brain 0.8-1.3 mm and up to 5 mm)."""
    in_plane = rng.uniform(*settings.in_plane_mm)
    sizes = [in_plane, in_plane, in_plane]
    sizes[int(rng.integers(3))] = max(in_plane, rng.uniform(*settings.slice_mm))
    return tuple(sizes)  # type: ignore[return-value]


def degrade_resolution(image: np.ndarray, voxel_mm: Sequence[float], spacing_mm: float,
                       rng: np.random.Generator) -> np.ndarray:
    """``image`` (on an isotropic grid of ``spacing_mm``) as a scan with voxels of ``voxel_mm``
    per axis would show it once resampled back: along every axis coarser than the grid, a
    Gaussian slice profile (FWHM the voxel size), sampling at that voxel size from a random
    phase, and linear interpolation back."""
    out = image.astype(np.float32, copy=True)
    for axis, voxel in enumerate(voxel_mm):
        ratio = voxel / spacing_mm
        if ratio <= 1.05:
            continue
        out = ndimage.gaussian_filter1d(out, sigma=ratio / 2.355, axis=axis, mode="nearest")
        n = out.shape[axis]
        samples = np.arange(rng.uniform(0, ratio), n - 1 + 1e-6, ratio)
        if samples.size < 2:
            continue
        positions = [np.arange(m, dtype=np.float32) for m in out.shape]
        positions[axis] = samples
        coarse = interpolate_axes(out, positions)
        back = [np.arange(m, dtype=np.float32) for m in out.shape]
        back[axis] = (np.arange(n) - samples[0]) / ratio
        out = interpolate_axes(coarse, back)
    return out
