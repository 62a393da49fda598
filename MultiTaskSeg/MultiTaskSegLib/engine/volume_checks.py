"""Checks that a volume can be segmented: its voxels (type, size, values) and its geometry.

Kept apart from geometry.py (which resamples) so readers, the segmenter and Slicer refuse the same
things with the same words. Every refusal is an InputError saying what to do.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .errors import InputError

MAX_VOXELS = 2 ** 31
# Physical sizes beyond these are damaged headers, not scans: past them the corner arithmetic of
# the canonical grid overflows (1e300 mm) or ITK's matrix inversion breaks down.
SPACING_RANGE_MM = (1e-6, 1e6)
MAX_ABS_ORIGIN_MM = 1e9
_MIN_ABS_DETERMINANT = 1e-6
# A direction matrix this far from orthonormal is sheared; NIfTI cannot hold it (ITK's writer
# "coerces" it to a rotation, moving the image).
ORTHONORMAL_TOLERANCE = 1e-4
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def memory_text(num_bytes: float) -> str:
    """Human-readable memory size (MiB below 1 GiB, TiB from 1 TiB)."""
    if num_bytes < 2 ** 30:
        return f"{num_bytes / 2 ** 20:.1f} MiB"
    if num_bytes < 2 ** 40:
        return f"{num_bytes / 2 ** 30:.1f} GiB"
    return f"{num_bytes / 2 ** 40:.3g} TiB"


def dimensionality_problem(dimension: int, components: int, what: str) -> str:
    if components > 1:
        return (f"The {what} has {components} components per voxel (a vector, colour or "
                f"multi-echo image); pick one component and save it as a scalar 3D volume "
                f"(command line: --component N; Python: read_volume(path, component=N)).")
    if dimension == 2:
        return (f"The {what} is 2D (a single slice); provide the whole 3D volume "
                f"(e.g. the DICOM series folder rather than one file).")
    if dimension == 4:
        return (f"The {what} is 4D (a time series or several volumes in one file); pick one "
                f"time point (command line: --component N; Python: read_volume(path, "
                f"component=N)) or save that volume as its own 3D file.")
    return f"The {what} has {dimension} dimensions; a 3D volume is needed."


def is_orthonormal(direction, tolerance: float = ORTHONORMAL_TOLERANCE) -> bool:
    """True for a rotation or reflection matrix (unit, mutually orthogonal columns)."""
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    return bool(np.all(np.abs(direction.T @ direction - np.eye(3)) <= tolerance))


def check_geometry(spacing: Sequence[float], origin: Sequence[float], direction, what: str = "image") -> None:
    """Refuse spacings, origins and direction matrices no scan has (NaN, infinite, zero, absurd,
    singular): the header is damaged, and resampling would overflow or divide by zero."""
    spacing = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    low, high = SPACING_RANGE_MM
    if not np.all(np.isfinite(spacing)):
        raise InputError(f"The {what}'s voxel spacing {tuple(spacing.tolist())} is not finite (NaN or infinite): "
                         f"its header is damaged. Fix the spacing in the header (e.g. in 3D Slicer) and save it again.")
    if not np.all((spacing >= low) & (spacing <= high)):
        raise InputError(f"The {what}'s voxel spacing {tuple(spacing.tolist())} mm is outside {low:g}..{high:g} mm: "
                         f"its header is damaged. Fix the spacing in the header and save it again.")
    if not np.all(np.isfinite(origin)) or np.max(np.abs(origin)) > MAX_ABS_ORIGIN_MM:
        raise InputError(f"The {what}'s origin {tuple(origin.tolist())} mm is not finite or beyond "
                         f"{MAX_ABS_ORIGIN_MM:g} mm: its header is damaged. Fix the origin and save it again.")
    if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < _MIN_ABS_DETERMINANT:
        raise InputError(f"The {what}'s direction matrix {direction.round(6).tolist()} is not finite or is "
                         f"singular (its axes are parallel): its header is damaged. Fix the orientation and "
                         f"save it again.")


def validate_volume(volume, what: str = "image", max_memory_bytes: Optional[int] = None,
                    allow_constant: bool = False) -> None:
    """Raise InputError, with a message saying what to do, if `volume` cannot be segmented.

    Checks: real numeric voxel type; 3D with one value per voxel ((z, y, x, c) arrays are treated
    as multi-component); at least one voxel in every axis; at most 2**31 voxels and a float32 copy
    that fits in `max_memory_bytes` (if given); no NaN/Inf; values within float32's range (the
    network computes in float32); not every voxel equal (an empty or constant image, skipped with
    `allow_constant`, e.g. for labelmaps); a usable geometry (``check_geometry``).
    """
    array = np.asarray(volume.array)
    if np.iscomplexobj(array):
        raise InputError(f"The {what} has complex-valued voxels (type {array.dtype}), e.g. raw MR phase data; "
                         f"save the magnitude as a real-valued image and segment that.")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise InputError(f"The {what} has non-numeric voxels (type {array.dtype}); "
                         f"convert it to a scalar numeric image (e.g. float32 or int16).")
    if array.ndim != 3:
        dimension, components = array.ndim, 1
        if array.ndim == 4 and array.shape[-1] <= 4 and array.shape[0] > 4:
            dimension, components = 3, array.shape[-1]  # (z, y, x, c) as numpy gives vector images
        raise InputError(dimensionality_problem(dimension, components, what) +
                         f" (array shape {tuple(array.shape)})")
    if min(array.shape) < 1:
        raise InputError(f"The {what} is empty: its size (z, y, x) is {tuple(array.shape)}; "
                         f"every axis needs at least one voxel. Check that the file is complete.")
    check_geometry(volume.spacing, volume.origin, volume.direction, what)
    voxels = int(np.prod(array.shape, dtype=object))
    float32_bytes = voxels * 4
    if voxels > MAX_VOXELS:
        raise InputError(f"The {what} has {voxels:,} voxels (more than 2**31); processing it "
                         f"would need at least {memory_text(float32_bytes)} of memory. Crop or "
                         f"downsample it first.")
    if max_memory_bytes is not None and float32_bytes > max_memory_bytes:
        raise InputError(f"The {what} has {voxels:,} voxels; a float32 copy alone needs "
                         f"{memory_text(float32_bytes)}, over the memory limit of "
                         f"{memory_text(max_memory_bytes)}. Crop or downsample it, or raise the limit.")
    if np.issubdtype(array.dtype, np.inexact):
        not_finite = sum(int(np.count_nonzero(~np.isfinite(plane))) for plane in array)
        if not_finite:
            raise InputError(f"The {what} contains {not_finite:,} NaN or infinite voxel values "
                             f"of {voxels:,}; replace them (e.g. by 0) before segmenting.")
    low, high = array.min(), array.max()
    if np.issubdtype(array.dtype, np.floating) and max(-float(low), float(high)) > _FLOAT32_MAX:
        raise InputError(f"The {what} has intensities up to {max(-float(low), float(high)):.3g}, beyond the "
                         f"float32 range ({_FLOAT32_MAX:.3g}) the network computes in; rescale the "
                         f"intensities (e.g. to their original units) and save the image again.")
    if not allow_constant and low == high:
        raise InputError(f"Every voxel of the {what} has the value {array.flat[0]!r}: it is "
                         f"empty or constant, there is nothing to segment. Check that the "
                         f"right file or series was loaded.")
