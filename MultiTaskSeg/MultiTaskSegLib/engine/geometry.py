"""Volume geometry: the `Volume` record, input checks, and the canonical grid.

The network sees every image on a *canonical* grid: axis-aligned in LPS (index i along +L = x,
j along +P = y, k along +S = z, direction = identity) and isotropic. With arrays indexed
(z, y, x), the three array planes are then the anatomical axial (z), coronal (y) and sagittal (x)
planes whatever the scanner's orientation was, which is what the triplanar network assumes.
`to_canonical` goes there and returns a `CanonicalGrid` that `from_canonical` uses to bring
(probability) maps back onto the exact input grid.

Conventions (docs/architecture.md): spacing and origin in ITK order (x, y, z), origin in LPS mm,
direction column c = LPS unit vector of index axis c; physical = origin + D @ (spacing * ijk).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import InputError
# The input checks live in volume_checks; these names stay importable from here.
from .volume_checks import MAX_VOXELS, dimensionality_problem, memory_text, validate_volume  # noqa: F401

_PERMUTATION_TOLERANCE = 1e-6
_SPACING_RELATIVE_TOLERANCE = 1e-6
_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def _as_3_tuple(values, name: str) -> Tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (x, y, z), got {len(values)}")
    return values  # type: ignore[return-value]


@dataclass
class Volume:
    """A 3D image with its physical geometry (ITK/LPS conventions, see module docstring)."""

    array: np.ndarray
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.spacing = _as_3_tuple(self.spacing, "spacing")
        self.origin = _as_3_tuple(self.origin, "origin")
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        self.spacing, self.direction = unit_direction_columns(self.spacing, self.direction)

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        """3x3 matrix M with physical = origin + M @ ijk."""
        return self.direction * np.asarray(self.spacing)[None, :]

    def index_to_physical(self, ijk) -> np.ndarray:
        """Continuous indices (..., 3) in (i, j, k) order -> LPS points (..., 3) in mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.index_to_physical_matrix.T + np.asarray(self.origin)

    def physical_to_index(self, points) -> np.ndarray:
        """LPS points (..., 3) in mm -> continuous indices (..., 3) in (i, j, k) order."""
        points = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        return points @ np.linalg.inv(self.index_to_physical_matrix).T

    def with_array(self, new_array: np.ndarray) -> "Volume":
        """Same geometry, other voxels (e.g. a labelmap of this image)."""
        return Volume(new_array, self.spacing, self.origin, self.direction.copy())

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with this geometry (bool -> uint8, float16 -> float32, as ITK needs)."""
        image = sitk.GetImageFromArray(_sitk_compatible(self.array), isVector=False)
        _set_geometry(image, self.spacing, self.origin, self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        """Wrap a 3D single-component SimpleITK image; anything else raises InputError."""
        components = image.GetNumberOfComponentsPerPixel()
        if image.GetDimension() != 3 or components != 1:
            raise InputError(dimensionality_problem(image.GetDimension(), components, "image"))
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        return cls(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), direction)


def unit_direction_columns(spacing, direction: np.ndarray):
    """(spacing, direction) with each direction column scaled to unit length and its length
    moved into the spacing: the same physical grid (MetaImage files may store scaled columns), in
    the form NIfTI and ITK's resampling expect. Zero or non-finite columns are left for
    ``check_geometry`` to refuse."""
    norms = np.linalg.norm(direction, axis=0)
    if not np.all(np.isfinite(norms) & (norms > 0)) or np.allclose(norms, 1.0, rtol=0, atol=1e-12):
        return spacing, direction
    return tuple(float(s * n) for s, n in zip(spacing, norms)), direction / norms[None, :]


def _sitk_compatible(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def _set_geometry(image: sitk.Image, spacing, origin, direction) -> None:
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    # Subnormal cosines (e.g. 1e-320 from a rotation by 180 degrees) break ITK's matrix inversion.
    direction = np.asarray(direction, dtype=np.float64).reshape(9)
    direction = np.where(np.abs(direction) < 1e-12, 0.0, direction)
    image.SetDirection(tuple(float(d) for d in direction))


# ---------------------------------------------------------------------------------------------
# Canonical grid


def default_target_spacing(spacing) -> float:
    """The isotropic voxel size of the canonical grid: the median of the three spacings.

    For the usual scans with two equal in-plane spacings and a different slice distance this is
    the in-plane voxel size, which is what the paper does ("resampled to isotropic at the
    in-plane resolution"); for an oblique or fully anisotropic scan it is the middle one, so the
    grid neither throws away much resolution nor blows the voxel count up.
    """
    return float(np.median(np.asarray(spacing, dtype=np.float64)))


@dataclass
class CanonicalGrid:
    """Everything needed to map arrays on the canonical grid back to the input grid.

    `input_*`: the input volume's geometry (shape is (z, y, x)); `canonical_*`: the canonical
    grid's (direction is identity). `axis_permutation`/`axis_flips` are set only when the fast
    exact path applies: canonical axis a (x=0, y=1, z=2) is input index axis
    `axis_permutation[a]`, reversed where `axis_flips[a]`.
    """

    input_shape: Tuple[int, int, int]
    input_spacing: Tuple[float, float, float]
    input_origin: Tuple[float, float, float]
    input_direction: np.ndarray
    input_dtype: np.dtype
    canonical_shape: Tuple[int, int, int]
    canonical_spacing: float
    canonical_origin: Tuple[float, float, float]
    axis_permutation: Optional[Tuple[int, int, int]] = None
    axis_flips: Optional[Tuple[bool, bool, bool]] = None

    @property
    def is_exact(self) -> bool:
        """True when canonical <-> input is a transpose/flip only (no interpolation)."""
        return self.axis_permutation is not None

    def input_volume(self, array: np.ndarray) -> Volume:
        return Volume(array, self.input_spacing, self.input_origin, self.input_direction.copy())

    def canonical_volume(self, array: np.ndarray) -> Volume:
        return Volume(array, (self.canonical_spacing,) * 3, self.canonical_origin, np.eye(3))


def _signed_permutation(direction: np.ndarray):
    """(permutation, flips) if `direction` is a signed permutation matrix, else None.

    permutation[a] = the input index axis that runs along physical axis a; flips[a] = whether it
    runs along -a.
    """
    rounded = np.round(direction)
    if np.max(np.abs(direction - rounded)) > _PERMUTATION_TOLERANCE:
        return None
    if not np.array_equal(np.abs(rounded).sum(axis=0), np.ones(3)) or \
            not np.array_equal(np.abs(rounded).sum(axis=1), np.ones(3)):
        return None
    permutation = tuple(int(np.flatnonzero(rounded[a])[0]) for a in range(3))
    flips = tuple(bool(rounded[a, permutation[a]] < 0) for a in range(3))
    return permutation, flips


def _numpy_axis(index_axis: int) -> int:
    """Array axis of ITK index axis i=0, j=1, k=2 in a (z, y, x) array."""
    return 2 - index_axis


def _canonical_extent(volume: Volume, spacing: float):
    """Canonical shape (z, y, x) and origin covering the bounding box of the voxel corners."""
    size_xyz = np.array(volume.array.shape[::-1], dtype=np.float64)
    corners_ijk = np.array([[c0, c1, c2] for c0 in (0, 1) for c1 in (0, 1) for c2 in (0, 1)],
                           dtype=np.float64) * size_xyz - 0.5
    corners = volume.index_to_physical(corners_ijk)
    low, high = corners.min(axis=0), corners.max(axis=0)
    # The tolerance keeps an exact multiple of the spacing from gaining a voxel by rounding.
    counts = np.maximum(1, np.ceil((high - low) / spacing - 1e-6))
    _check_canonical_size(counts[::-1], spacing)  # in float: a tiny spacing must not overflow int64
    counts = counts.astype(int)
    origin = (low + high) / 2.0 - (counts - 1) * spacing / 2.0  # centred on the input's box
    return (int(counts[2]), int(counts[1]), int(counts[0])), tuple(float(o) for o in origin)


def to_canonical(volume: Volume, target_spacing: Optional[float] = None,
                 interpolation: str = "linear") -> Tuple[Volume, CanonicalGrid]:
    """Resample `volume` onto the canonical LPS axis-aligned isotropic grid.

    The grid covers the bounding box of the input's voxel corners (voxels outside the input get
    0); `target_spacing` defaults to `default_target_spacing`. Use "linear" for images and
    "nearest" for labels. If the direction is a signed permutation and the spacing already
    equals the target, the result is a bit-exact transpose/flip of the input array (same dtype).
    Otherwise SimpleITK resamples: "nearest" keeps the dtype, "linear" gives float32 (float64
    stays float64).
    """
    _check_interpolation(interpolation)
    spacing = float(target_spacing) if target_spacing is not None else \
        default_target_spacing(volume.spacing)
    if not (np.isfinite(spacing) and spacing > 0):
        raise InputError(f"The target spacing must be a positive finite number of millimetres, got "
                         f"{target_spacing}; e.g. --spacing 1.")
    shape, origin = _canonical_extent(volume, spacing)
    grid = CanonicalGrid(tuple(volume.array.shape), volume.spacing, volume.origin,
                         volume.direction.copy(), np.asarray(volume.array).dtype, shape, spacing,
                         origin)

    permutation = _signed_permutation(volume.direction)
    same_spacing = np.allclose(volume.spacing, spacing, rtol=_SPACING_RELATIVE_TOLERANCE, atol=0)
    if permutation is not None and same_spacing:
        grid.axis_permutation, grid.axis_flips = permutation
        # Contiguous: negative strides from flips would trip consumers such as torch.from_numpy.
        canonical = np.ascontiguousarray(_permute_to_canonical(np.asarray(volume.array), grid))
        # The exact origin is the physical centre of the voxel that lands at canonical (0, 0, 0).
        grid.canonical_origin = _exact_canonical_origin(volume, grid)
        return grid.canonical_volume(canonical), grid

    output = _resample(volume.to_sitk(), shape, (spacing,) * 3, origin, np.eye(3),
                       interpolation, 0.0)
    return grid.canonical_volume(_restore_dtype(output, volume.array.dtype, interpolation,
                                                to_input=False)), grid


def _check_canonical_size(shape, spacing: float) -> None:
    """Refuse, before resampling, a canonical grid too large to allocate (very anisotropic
    voxels, or a target spacing far finer than the image's)."""
    voxels = float(np.prod(np.asarray(shape, dtype=np.float64)))
    if not voxels <= MAX_VOXELS:
        sizes = " x ".join(f"{int(n):d}" if n < 1e15 else f"{n:.3g}" for n in shape)
        count = f"{int(voxels):,}" if voxels < 1e15 else f"{voxels:.3g}"
        raise InputError(f"On the {spacing:g} mm isotropic grid the network needs, the image would "
                         f"have {sizes} = {count} voxels (more than 2**31), "
                         f"needing at least {memory_text(4 * voxels)} of memory. Use a coarser "
                         f"spacing (--spacing MM) or crop the image.")


def _exact_canonical_origin(volume: Volume, grid: CanonicalGrid):
    first_ijk = np.zeros(3)
    for axis in range(3):
        index_axis = grid.axis_permutation[axis]
        if grid.axis_flips[axis]:
            first_ijk[index_axis] = volume.array.shape[_numpy_axis(index_axis)] - 1
    return tuple(float(v) for v in volume.index_to_physical(first_ijk))


def _permute_to_canonical(array: np.ndarray, grid: CanonicalGrid) -> np.ndarray:
    """Input (z, y, x) -> canonical (z, y, x) by transpose and flips only (a view)."""
    # Canonical numpy axis n holds physical axis 2 - n, which is input index axis perm[2 - n].
    source_axes = [_numpy_axis(grid.axis_permutation[2 - n]) for n in range(3)]
    lead = array.ndim - 3
    result = np.transpose(array, list(range(lead)) + [lead + a for a in source_axes])
    flip_axes = [lead + n for n in range(3) if grid.axis_flips[2 - n]]
    return np.flip(result, axis=flip_axes) if flip_axes else result


def _permute_to_input(array: np.ndarray, grid: CanonicalGrid) -> np.ndarray:
    lead = array.ndim - 3
    flip_axes = [lead + n for n in range(3) if grid.axis_flips[2 - n]]
    unflipped = np.flip(array, axis=flip_axes) if flip_axes else array
    source_axes = [_numpy_axis(grid.axis_permutation[2 - n]) for n in range(3)]
    inverse = np.argsort(source_axes)
    return np.transpose(unflipped, list(range(lead)) + [lead + int(a) for a in inverse])


def from_canonical(array: np.ndarray, grid: CanonicalGrid, interpolation: str = "linear",
                   fill: float = 0.0) -> np.ndarray:
    """Map a (z, y, x) or (C, z, y, x) array on the canonical grid back to the input grid.

    Returns the input's shape (with the leading C kept) and `array`'s dtype. Integer arrays are
    interpolated in float32, rounded and clipped to their type's range (uint8 probabilities stay
    uint8); points outside the canonical grid get `fill`. Channels are resampled one at a time
    so only one float copy of one channel exists at any time.
    """
    _check_interpolation(interpolation)
    array = np.asarray(array)
    if array.ndim not in (3, 4) or tuple(array.shape[-3:]) != tuple(grid.canonical_shape):
        raise ValueError(f"expected an array of shape (C,) + {grid.canonical_shape} or "
                         f"{grid.canonical_shape}, got {array.shape}")
    if grid.is_exact:
        return np.ascontiguousarray(_permute_to_input(array, grid))
    result = np.empty(array.shape[:-3] + tuple(grid.input_shape), dtype=array.dtype)
    for channel in (range(array.shape[0]) if array.ndim == 4 else [Ellipsis]):
        _resample_to_input(array[channel], grid, interpolation, fill, result[channel])
    return result


def channels_from_canonical(channels: List[Optional[np.ndarray]], grid: CanonicalGrid,
                            interpolation: str = "linear", fill: float = 0.0) -> np.ndarray:
    """``from_canonical`` of the stack of C canonical (z, y, x) arrays in ``channels``, which it
    empties as it goes (each entry becomes None once its channel is on the input grid).

    Whoever holds no other reference lets each canonical channel go as its resampled copy arrives,
    so the two never both exist whole: for a 512^2 x 300 CT in 0.625 mm slices the canonical
    probabilities take 0.98 GB and the input grid's 0.71 GB.
    """
    _check_interpolation(interpolation)
    canonical_shape = tuple(grid.canonical_shape)
    if not channels or any(np.shape(c) != canonical_shape for c in channels):
        raise ValueError(f"expected channels of shape {canonical_shape}, got "
                         f"{[np.shape(c) for c in channels]}")
    result = np.empty((len(channels),) + tuple(grid.input_shape), dtype=np.asarray(channels[0]).dtype)
    for index in range(len(channels)):
        channel, channels[index] = np.asarray(channels[index]), None
        if grid.is_exact:
            result[index] = _permute_to_input(channel, grid)
        else:
            _resample_to_input(channel, grid, interpolation, fill, result[index])
        del channel
    return result


# Voxels per plane range when rounding a resampled channel into its integer type.
_ROUNDING_CHUNK_VOXELS = 1 << 22


def _resample_to_input(channel: np.ndarray, grid: CanonicalGrid, interpolation: str,
                       fill: float, out: np.ndarray) -> None:
    """One channel back on the input grid, into ``out`` (the input's shape, the channel's dtype).

    ITK's float output is read in place and rounded plane range by plane range: a copy of it and
    whole-channel temporaries of the rounding took ~13 bytes per input voxel (1 GB for one
    channel of a 512^2 x 300 CT) where now the float output (4) and the channel's copy (1) remain.
    """
    image = grid.canonical_volume(np.ascontiguousarray(channel)).to_sitk()
    resampled = _resample_image(image, grid.input_shape, grid.input_spacing, grid.input_origin,
                                grid.input_direction, interpolation, fill)
    del image
    values = sitk.GetArrayViewFromImage(resampled)  # valid while ``resampled`` lives
    step = max(1, _ROUNDING_CHUNK_VOXELS // max(1, int(np.prod(values.shape[1:]))))
    for start in range(0, values.shape[0], step):
        out[start:start + step] = _restore_dtype(values[start:start + step], channel.dtype,
                                                 interpolation, to_input=True)


def _resample(image: sitk.Image, shape_zyx, spacing, origin, direction, interpolation: str,
              fill: float) -> np.ndarray:
    """SimpleITK resampling of `image` onto the given grid; returns the (z, y, x) array.

    Linear interpolation of integer voxels yields float32: ITK reads the integers and writes
    floats directly, so no float copy of the input is ever made.
    """
    return sitk.GetArrayFromImage(_resample_image(image, shape_zyx, spacing, origin, direction,
                                                  interpolation, fill))


def _resample_image(image: sitk.Image, shape_zyx, spacing, origin, direction, interpolation: str,
                    fill: float) -> sitk.Image:
    output_type = image.GetPixelID()
    if interpolation == "linear" and output_type not in (sitk.sitkFloat32, sitk.sitkFloat64):
        output_type = sitk.sitkFloat32
    reference = sitk.Image([int(s) for s in shape_zyx[::-1]], sitk.sitkUInt8)
    _set_geometry(reference, spacing, origin, direction)
    return sitk.Resample(image, reference, sitk.Transform(), _INTERPOLATORS[interpolation],
                         float(fill), output_type)


def _restore_dtype(array: np.ndarray, dtype: np.dtype, interpolation: str,
                   to_input: bool) -> np.ndarray:
    """Cast resampled voxels back: same dtype for nearest; integers rounded and clipped."""
    dtype = np.dtype(dtype)
    if array.dtype == dtype:
        return array
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        if interpolation == "linear" and not to_input:
            return array.astype(np.float32, copy=False)  # images go on in float
        if dtype == np.bool_:
            return array > 0.5
        limits = np.iinfo(dtype)
        return np.clip(np.rint(array), limits.min, limits.max).astype(dtype)
    return array.astype(dtype, copy=False)


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in _INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATORS)}, "
                         f"got {interpolation!r}")
