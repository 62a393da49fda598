"""Smooth random fields and cheap resampling for synthesis: the building blocks that head
synthesis and domain randomisation share.

Whole-volume synthesis runs in the batch workers, thousands of times per training run, so these
avoid scipy's general zoom (0.7 s per 10-million-voxel field here) for separable linear
interpolation (0.15 s).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def interpolate_axes(array: np.ndarray, positions: Sequence[np.ndarray]) -> np.ndarray:
    """Separable linear interpolation of a 3D array at per-axis positions (index units, clamped to
    the array): ``out[i, j, k] = array(positions[0][i], positions[1][j], positions[2][k])``. float32."""
    out = np.asarray(array, dtype=np.float32)
    # the last axis first, while the array is small: gathers along it are the slow ones
    for axis in (2, 1, 0):
        position = positions[axis]
        length = out.shape[axis]
        position = np.clip(np.asarray(position, dtype=np.float32), 0.0, length - 1)
        if length == 1:
            out = np.repeat(out, position.size, axis=axis)
            continue
        low = np.minimum(np.floor(position).astype(np.int64), length - 2)
        weight = (position - low).astype(np.float32)
        broadcast = [1] * out.ndim
        broadcast[axis] = position.size
        below = np.take(out, low, axis=axis)
        above = np.take(out, low + 1, axis=axis)
        out = below + (above - below) * weight.reshape(broadcast)
    return out


def upsample_linear(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``array`` stretched to ``shape`` by separable linear interpolation, corners aligned
    (the first and last samples stay where they are). float32."""
    return interpolate_axes(array, [np.linspace(0.0, m - 1, n) for m, n in zip(np.shape(array), shape)])


def smooth_field(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float],
                 wavelength_mm: float) -> np.ndarray:
    """A random field of zero mean and about unit standard deviation that varies over about
    ``wavelength_mm``: normal knots that far apart, linearly interpolated. float32, ``shape``."""
    knots = [max(2, int(round(n * s / wavelength_mm)) + 1) for n, s in zip(shape, spacing)]
    return upsample_linear(rng.standard_normal(knots).astype(np.float32), shape)


def smooth_multiplier(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float],
                      wavelength_mm: float, strength: float) -> np.ndarray:
    """exp(strength x a smooth field) (about 1 +- strength), the exponential taken on the knots
    before interpolating: one pass over the volume instead of two."""
    knots = [max(2, int(round(n * s / wavelength_mm)) + 1) for n, s in zip(shape, spacing)]
    return upsample_linear(np.exp(strength * rng.standard_normal(knots)).astype(np.float32), shape)


def pool_any(mask: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Block-wise OR of a boolean array (the shape padded up to multiples of ``factors``)."""
    padded_shape = [-(-n // f) * f for n, f in zip(mask.shape, factors)]
    padded = np.zeros(padded_shape, bool)
    padded[tuple(slice(0, n) for n in mask.shape)] = mask
    view = padded.reshape(padded_shape[0] // factors[0], factors[0], padded_shape[1] // factors[1], factors[1],
                          padded_shape[2] // factors[2], factors[2])
    return view.any(axis=(1, 3, 5))


def coarse_to_full_nearest(coarse: np.ndarray, factors: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """``pool_any``'s coarse grid brought back to the full ``shape`` by repeating each cell."""
    out = coarse
    for axis in (2, 1, 0):
        index = np.minimum(np.arange(shape[axis]) // factors[axis], coarse.shape[axis] - 1)
        out = np.take(out, index, axis=axis)
    return out


def coarse_factors(spacing: Sequence[float], target_mm: float = 2.0) -> Tuple[int, int, int]:
    """Per-axis integer factors that bring ``spacing`` (mm) to about ``target_mm``."""
    return tuple(max(1, int(round(target_mm / s))) for s in spacing)  # type: ignore[return-value]


def coarse_to_full(coarse: np.ndarray, factors: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """A field on ``pool_any``'s coarse grid brought back to the full ``shape``: coarse cell i
    covers full voxels [i f, (i + 1) f) and its value sits at the cell's centre."""
    return interpolate_axes(coarse, [(np.arange(n) - (f - 1) / 2.0) / f for n, f in zip(shape, factors)])
