"""Which voxels of the canonical grid the network classifies: the paper's samples (raw intensity > 0,
section 3.2), one rule for the host path (numpy) and the device path (torch tensors).

On an interpolated grid (``CanonicalGrid.is_exact`` false) two refinements:

* Interpolation noise is 0 (``zero_interpolation_noise``, applied to the canonical intensities
  before anything reads them). A canonical voxel that lies exactly on an input voxel of intensity
  0 beside a positive one comes out of SimpleITK's float64 arithmetic as ~1e-13 or as 0, as the
  rounding of its index falls, and the device path's arithmetic rounds differently: 4% of one small
  test volume's samples hung on it, and so did its MR normalisation (the tissue-mode rule's
  histogram starts at the smallest value > 0). Values within ``NOISE_FLOOR`` of the image's
  largest magnitude count as 0 (intensities that mean tissue are 1e-3 of it or more).
* The mask grows by one voxel: probabilities go back to the input grid by linear interpolation,
  which reads the canonical voxels around each input voxel; at the foreground's edge some have
  intensity <= 0. Classifying them too keeps the edge's input voxels from blending with forced
  background.
"""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]

NOISE_FLOOR = 1e-6


def dilated_by_one_voxel(mask: Array) -> Array:
    """``mask`` (z, y, x, bool) grown by its 26 neighbours (a 3x3x3 cube), in three separable passes."""
    copy = (lambda m: m.clone()) if isinstance(mask, torch.Tensor) else (lambda m: m.copy())
    grown = copy(mask)
    for axis in range(mask.ndim):
        before = copy(grown)
        lower = [slice(None)] * mask.ndim
        upper = [slice(None)] * mask.ndim
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        grown[tuple(lower)] |= before[tuple(upper)]
        grown[tuple(upper)] |= before[tuple(lower)]
    return grown


def zero_interpolation_noise(canonical: Array) -> Array:
    """In place on resampled (float) intensities: values within ``NOISE_FLOOR`` times the largest
    magnitude of 0 become 0 (see module docstring). Works through the planes in slabs, so the
    temporaries of a large volume stay small."""
    if isinstance(canonical, torch.Tensor):
        floor = NOISE_FLOOR * float(canonical.abs().max())
        return canonical.masked_fill_(canonical.abs() < floor, 0)
    floor = NOISE_FLOOR * float(max(abs(canonical.max()), abs(canonical.min())))
    step = max(1, (1 << 22) // max(1, canonical[0].size))
    for start in range(0, canonical.shape[0], step):
        slab = canonical[start:start + step]
        np.putmask(slab, np.abs(slab) < floor, 0)
    return canonical


def sample_voxels(canonical: Array, interpolated: bool) -> Array:
    """The bool mask of the voxels to classify: intensity > 0, grown by one voxel when
    ``interpolated`` (resampled, not a transpose/flip of the input; after
    ``zero_interpolation_noise``)."""
    mask = canonical > 0
    return dilated_by_one_voxel(mask) if interpolated else mask


class SampleMask:
    """``sample_voxels(canonical, interpolated)`` of a host array, computed plane range by plane
    range when read: ``mask[z0:z1, ...]`` is ``sample_voxels(canonical, interpolated)[z0:z1, ...]``.

    The dense pass reads one slab's planes at a time, so the whole mask (a byte a voxel: 79 MB for a
    512^2 x 300 CT) need not exist. The one-voxel growth reads one plane beyond each end of the range.
    """

    dtype = np.dtype(bool)
    ndim = 3

    def __init__(self, canonical: np.ndarray, interpolated: bool):
        self.canonical = canonical
        self.interpolated = interpolated
        self.shape: Tuple[int, int, int] = tuple(canonical.shape)

    def planes(self, z0: int, z1: int) -> np.ndarray:
        """The mask of planes z0:z1 (a new bool array)."""
        if not self.interpolated:
            return self.canonical[z0:z1] > 0
        low, high = max(0, z0 - 1), min(self.shape[0], z1 + 1)
        grown = dilated_by_one_voxel(self.canonical[low:high] > 0)
        return grown[z0 - low:z0 - low + max(0, z1 - z0)]

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        first = index[0] if index else slice(None)
        if isinstance(first, (int, np.integer)):
            z = int(first) + self.shape[0] if first < 0 else int(first)
            return self.planes(z, z + 1)[(0,) + index[1:]]
        if not isinstance(first, slice) or first.step not in (None, 1):
            raise TypeError("a SampleMask is read by plane ranges z0:z1 along its first axis")
        z0, z1, _ = first.indices(self.shape[0])
        return self.planes(z0, max(z0, z1))[(slice(None),) + index[1:]]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.planes(0, self.shape[0])
        return whole if dtype is None else whole.astype(dtype, copy=False)
