"""Drawing helpers shared by the procedural phantoms: millimetre grids, smooth random fields,
random curves and tubes around them."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..engine.geometry import Volume


def grid_mm(shape: Sequence[int], spacing: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical coordinates (mm) of every voxel, centred on the volume, as broadcastable z, y, x."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * spacing for n in shape]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def centred_volume(array: np.ndarray, spacing: float) -> Volume:
    """A Volume with identity direction whose physical origin (0, 0, 0) is the grid centre."""
    origin = tuple(-(n - 1) / 2.0 * spacing for n in reversed(array.shape))
    return Volume(array=array, spacing=(spacing,) * 3, origin=origin, direction=np.eye(3))


def smoothed_noise(rng: np.random.Generator, shape: Sequence[int], sigma_voxels: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean, unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_voxels, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-6)


def knot_field(rng: np.random.Generator, shape: Sequence[int], knots: int = 4) -> np.ndarray:
    """A slowly varying random field (about unit amplitude): cubic upsampling of a few knots."""
    coarse = rng.standard_normal((knots,) * 3)
    return ndimage.zoom(coarse, [n / knots for n in shape], order=3, mode="nearest")[
        : shape[0], : shape[1], : shape[2]].astype(np.float32)


def random_curve(rng: np.random.Generator, start, direction, length_mm: float, step_mm: float,
                  wiggle: float) -> np.ndarray:
    """A smooth random walk (points, mm) from ``start`` roughly along ``direction``."""
    n = max(int(length_mm / step_mm), 2)
    heading = np.asarray(direction, float) / np.linalg.norm(direction)
    points = [np.asarray(start, float)]
    for _ in range(n - 1):
        heading = heading + wiggle * rng.standard_normal(3)
        heading /= np.linalg.norm(heading)
        points.append(points[-1] + step_mm * heading)
    return np.array(points)


def render_tubes(shape: Sequence[int], spacing: float, centrelines: List[np.ndarray],
                  radii: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Tubes around polylines given in centred mm coordinates (z, y, x).

    Returns (distance to the nearest centreline sample minus its radius, in mm; a boolean
    inside mask). Exact distances are computed only near the curves: a coarse distance
    transform picks the candidate voxels, a k-d tree of densely resampled centreline
    points measures them, so thin tubes keep sub-voxel accurate walls.
    """
    points, point_radii = [], []
    for line, radius in zip(centrelines, radii):
        seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        dense_arc = np.arange(0.0, arc[-1] + 1e-9, min(0.2, spacing / 4))
        points.append(np.stack([np.interp(dense_arc, arc, line[:, a]) for a in range(3)], axis=1))
        point_radii.append(np.interp(dense_arc, arc, radius))
    points = np.concatenate(points)
    point_radii = np.concatenate(point_radii)
    centre = (np.asarray(shape) - 1) / 2.0
    index = np.round(points / spacing + centre).astype(int)
    inside_grid = np.all((index >= 0) & (index < np.asarray(shape)), axis=1)
    seeds = np.zeros(shape, bool)
    seeds[tuple(index[inside_grid].T)] = True
    signed = np.full(shape, np.inf, np.float32)
    inside = np.zeros(shape, bool)
    if not seeds.any():
        return signed, inside
    reach = point_radii.max() + 2 * spacing
    near = ndimage.distance_transform_edt(~seeds, sampling=spacing) <= reach
    candidates = np.argwhere(near)
    distance, nearest = cKDTree(points).query((candidates - centre) * spacing)
    signed[tuple(candidates.T)] = distance - point_radii[nearest]
    inside[tuple(candidates.T)] = signed[tuple(candidates.T)] <= 0
    return signed, inside


def soft_inside(signed_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """A smooth 0..1 membership from a signed distance (negative inside), for partial volume."""
    return 1.0 / (1.0 + np.exp(np.clip(signed_mm / width_mm, -30, 30)))
