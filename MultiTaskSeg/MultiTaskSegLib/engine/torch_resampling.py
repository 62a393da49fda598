"""The canonical grid on a torch device: ``geometry.to_canonical`` and ``from_canonical`` by torch.

The GPU path keeps the volume on the device from the read to the labelmap; these are its two
resamplings. They follow SimpleITK's linear interpolation exactly in their rules (only float
rounding differs), so the CPU path (SimpleITK) and this one give the same grids and nearly the
same voxels (Testing/test_device_path.py):

* the grid is ``geometry``'s own (same shape, origin and exact transpose/flip case);
* a point takes the trilinear interpolation of the voxels around it, clamped to the edge voxel
  when it lies within half a voxel outside the image, and the fill value (0) further out: ITK's
  ``IsInsideBuffer`` accepts continuous indices in [-0.5, size - 0.5) and its linear interpolator
  clamps to the edge;
* the way back rounds to the nearest integer (half to even, as numpy's ``rint``) and clips.

The interpolation is written out (8 gathers) rather than ``grid_sample``: its float32 grid puts
points that lie on a voxel 1e-7 off it, and the sample rule (intensity > 0) then takes voxels
beside the air border that SimpleITK leaves at exactly 0 (4% of one test volume's samples).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .geometry import (_SPACING_RELATIVE_TOLERANCE, CanonicalGrid, Volume, _canonical_extent, _check_canonical_size,
                       _exact_canonical_origin, _signed_permutation, default_target_spacing)

# Output voxels (times channels) per chunk: bounds the float64 indices (24 bytes per voxel) and the
# gathered corners (float32 per channel); a 512^2 x 300 volume goes through in ~19 chunks per channel.
CHUNK_VOXELS = 1 << 22


def canonical_grid(volume: Volume, target_spacing: Optional[float] = None) -> CanonicalGrid:
    """The grid ``geometry.to_canonical`` resamples ``volume`` onto, without resampling anything."""
    spacing = float(target_spacing) if target_spacing is not None else default_target_spacing(volume.spacing)
    if not spacing > 0:
        raise ValueError(f"target_spacing must be positive, got {target_spacing}")
    shape, origin = _canonical_extent(volume, spacing)
    _check_canonical_size(shape, spacing)
    grid = CanonicalGrid(tuple(volume.array.shape), volume.spacing, volume.origin, volume.direction.copy(),
                         np.asarray(volume.array).dtype, shape, spacing, origin)
    permutation = _signed_permutation(volume.direction)
    if permutation is not None and np.allclose(volume.spacing, spacing, rtol=_SPACING_RELATIVE_TOLERANCE, atol=0):
        grid.axis_permutation, grid.axis_flips = permutation
        grid.canonical_origin = _exact_canonical_origin(volume, grid)
    return grid


def _canonical_axes(grid: CanonicalGrid) -> Tuple[list, list]:
    """(source axes, flipped axes) of the transpose/flip from the input (z, y, x) to the canonical one.

    Canonical array axis n holds physical axis 2 - n, which is input index axis perm[2 - n], i.e.
    input array axis 2 - perm[2 - n] (as ``geometry._permute_to_canonical``).
    """
    source = [2 - grid.axis_permutation[2 - n] for n in range(3)]
    flips = [n for n in range(3) if grid.axis_flips[2 - n]]
    return source, flips


def _affine_to_input(grid: CanonicalGrid) -> Tuple[np.ndarray, np.ndarray]:
    """(A, b): continuous input index ijk = A @ canonical xyz index + b (float64)."""
    to_physical = np.asarray(grid.input_direction) * np.asarray(grid.input_spacing)[None, :]
    inverse = np.linalg.inv(to_physical)
    a = inverse * grid.canonical_spacing
    b = inverse @ (np.asarray(grid.canonical_origin) - np.asarray(grid.input_origin))
    return a, b


def _affine_to_canonical(grid: CanonicalGrid) -> Tuple[np.ndarray, np.ndarray]:
    """(A, b): continuous canonical xyz index = A @ input ijk index + b (float64)."""
    to_physical = np.asarray(grid.input_direction) * np.asarray(grid.input_spacing)[None, :]
    a = to_physical / grid.canonical_spacing
    b = (np.asarray(grid.input_origin) - np.asarray(grid.canonical_origin)) / grid.canonical_spacing
    return a, b


def _trilinear(volume: torch.Tensor, index: torch.Tensor, fill: float) -> torch.Tensor:
    """(C, n) float32 samples of ``volume`` (C, Z, Y, X, any voxel type) at continuous indices
    ``index`` (n, 3) in (i, j, k): the 8 voxels around each point are gathered in the volume's own
    type and only they become float32, so no float copy of the volume (or of a channel) is made.

    ITK's rules: clamped to the edge within half a voxel outside, ``fill`` further out. The
    weights come from float64 indices, so a point on a voxel takes exactly that voxel's value.
    """
    channels, depth, rows, cols = volume.shape
    size = torch.tensor([cols, rows, depth], dtype=torch.float64, device=volume.device)
    inside = ((index >= -0.5) & (index < size - 0.5)).all(dim=1)
    index = torch.minimum(index.clamp(min=0.0), size - 1)
    base = index.floor()
    weight = (index - base).float()
    lower = base.long()
    upper = torch.minimum(lower + 1, size.long() - 1)
    flat = volume.reshape(channels, -1)

    def along_x(y, z):  # interpolated along x between the voxels at (lower x, y, z) and (upper x, y, z)
        row = (z * rows + y) * cols
        v0 = flat[:, row + lower[:, 0]].float()
        return v0 + (flat[:, row + upper[:, 0]].float() - v0) * weight[:, 0]

    planes = []
    for z in (lower[:, 2], upper[:, 2]):
        near = along_x(lower[:, 1], z)
        planes.append(near + (along_x(upper[:, 1], z) - near) * weight[:, 1])
    samples = planes[0] + (planes[1] - planes[0]) * weight[:, 2]
    return torch.where(inside, samples, torch.as_tensor(fill, dtype=samples.dtype, device=samples.device))


def _sample(source: torch.Tensor, out_shape: Tuple[int, int, int], affine: Tuple[np.ndarray, np.ndarray],
            fill: float, out: torch.Tensor, rounded: bool) -> None:
    """Trilinear samples of ``source`` (C, Z, Y, X) at the points ``affine`` maps ``out``'s voxels to.

    ``out`` (C,) + ``out_shape`` receives them (cast to its dtype; rounded and clipped to its range
    when ``rounded``), chunk by chunk of output planes, every channel from the same indices.
    """
    a, b = (torch.as_tensor(m, dtype=torch.float64, device=source.device) for m in affine)
    depth, rows, cols = out_shape
    x = torch.arange(cols, dtype=torch.float64, device=source.device)[:, None] * a[:, 0]
    y = torch.arange(rows, dtype=torch.float64, device=source.device)[:, None] * a[:, 1]
    limits = None if not rounded else (float(torch.iinfo(out.dtype).min), float(torch.iinfo(out.dtype).max))
    planes = max(1, CHUNK_VOXELS // max(1, rows * cols * source.shape[0]))
    for z0 in range(0, depth, planes):
        z1 = min(depth, z0 + planes)
        z = torch.arange(z0, z1, dtype=torch.float64, device=source.device)[:, None] * a[:, 2]
        index = (z[:, None, None] + y[None, :, None] + x[None, None, :] + b).reshape(-1, 3)
        # ITK computes in float64 too, by another route: indices within 1e-7 of a voxel are on it
        nearest = index.round()
        index = torch.where((index - nearest).abs() < 1e-7, nearest, index)
        samples = _trilinear(source, index, fill)
        del index, nearest
        if rounded:
            samples = samples.round_().clamp_(*limits)
        out[:, z0:z1] = samples.reshape(out.shape[0], z1 - z0, rows, cols).to(out.dtype)


def to_canonical_on_device(array: torch.Tensor, grid: CanonicalGrid) -> torch.Tensor:
    """The input (z, y, x) tensor on ``grid``'s canonical grid, on the same device.

    The exact case (a transpose/flip) keeps the dtype; otherwise float32 by linear interpolation,
    0 outside the input (``geometry.to_canonical`` with "linear").
    """
    if grid.is_exact:
        source, flips = _canonical_axes(grid)
        result = array.permute(*source)
        return (result.flip(flips) if flips else result).contiguous()
    out = torch.empty((1,) + tuple(grid.canonical_shape), dtype=torch.float32, device=array.device)
    _sample(array[None], tuple(grid.canonical_shape), _affine_to_input(grid), 0.0, out, rounded=False)
    return out[0]


def from_canonical_on_device(maps: torch.Tensor, grid: CanonicalGrid, fill: float = 0.0) -> torch.Tensor:
    """(C, z, y, x) maps on the canonical grid back onto the input grid, on the same device.

    Integer maps (uint8 probabilities) are interpolated in float32, rounded and clipped
    (``geometry.from_canonical``); the voxels are read in their own type (see ``_trilinear``).
    """
    if grid.is_exact:
        source, flips = _canonical_axes(grid)
        unflipped = maps.flip([1 + n for n in flips]) if flips else maps
        inverse = np.argsort(source)
        return unflipped.permute(0, *[1 + int(a) for a in inverse]).contiguous()
    out = torch.empty((maps.shape[0],) + tuple(grid.input_shape), dtype=maps.dtype, device=maps.device)
    _sample(maps, tuple(grid.input_shape), _affine_to_canonical(grid), fill, out,
            rounded=not maps.dtype.is_floating_point)
    return out
