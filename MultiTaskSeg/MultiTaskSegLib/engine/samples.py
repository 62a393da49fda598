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

from typing import Union

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
