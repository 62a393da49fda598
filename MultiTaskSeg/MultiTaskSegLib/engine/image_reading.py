"""Reading images (files or DICOM series folders) into `Volume`s, refusing before reading what
cannot fit in memory or is truncated.

Everything goes through SimpleITK (ITK's readers), so geometry is LPS as in the rest of the engine.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .dicom_reading import read_dicom_folder
from .errors import InputError
from .file_types import READABLE_SUFFIXES, PathLike, full_suffix
from .geometry import Volume
from .image_headers import check_header, component_bytes
from .itk_paths import itk_file_name, itk_reason  # noqa: F401 (itk_reason: importable from here)
from .volume_checks import MAX_VOXELS, check_geometry, memory_text

_COMPLEX_PIXELS = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)


def read_volume(path: PathLike, series_uid: Optional[str] = None,
                component: Optional[int] = None) -> Volume:
    """Read a 3D image file (NIfTI, NRRD, MetaImage) or a DICOM series folder as a `Volume`.

    A folder is read as a DICOM series; with several series in it, `series_uid` picks one.
    `component` picks one component of a multi-component (vector) image or one time point of a
    4D image. Every problem the user can fix raises InputError saying what to do; nothing that
    is not a regular file (a named pipe, a device) is opened.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input not found: {path}. Check the path (files: "
                         f"{', '.join(READABLE_SUFFIXES)}; or a DICOM series folder).")
    if path.is_dir():
        image = read_dicom_folder(path, series_uid, _check_size_before_reading)
    else:
        image = _read_image_file(path)
    volume = Volume.from_sitk(_select_component(image, component, path))
    check_geometry(volume.spacing, volume.origin, volume.direction, f"image {path}")
    return volume


def _nifti_expected_bytes(header: bytes) -> Optional[int]:
    """Header plus voxel bytes a NIfTI-1/-2 file must hold, or None if no NIfTI header."""
    for order in ("<", ">"):
        if len(header) < 348:
            return None
        size = int(np.frombuffer(header[:4], dtype=order + "i4")[0])
        if size == 348:  # NIfTI-1: dim int16[8] @40, bitpix int16 @72, vox_offset float32 @108
            dims = np.frombuffer(header[40:56], dtype=order + "i2").astype(np.int64)
            bitpix = int(np.frombuffer(header[72:74], dtype=order + "i2")[0])
            offset_value = float(np.frombuffer(header[108:112], dtype=order + "f4")[0])
            if not np.isfinite(offset_value):
                return None  # a damaged header: ITK's reading says so
            offset = int(offset_value)
        elif size == 540 and len(header) >= 540:  # NIfTI-2: bitpix @14, dim int64[8] @16, vox_offset @168
            bitpix = int(np.frombuffer(header[14:16], dtype=order + "i2")[0])
            dims = np.frombuffer(header[16:80], dtype=order + "i8")
            offset = int(np.frombuffer(header[168:176], dtype=order + "i8")[0])
        else:
            continue
        rank = int(dims[0])
        if not 1 <= rank <= 7:
            return None
        return max(offset, size) + int(np.prod(dims[1:rank + 1])) * bitpix // 8
    return None


def _gzip_uncompressed_size(path: Path) -> int:
    """Stream-decompress to count bytes; raises EOFError/zlib.error/OSError if truncated."""
    total = 0
    with gzip.open(path, "rb") as stream:
        while True:
            chunk = stream.read(1 << 24)
            if not chunk:
                return total
            total += len(chunk)


def _check_nifti_complete(path: Path) -> None:
    """ITK silently zero-fills a truncated NIfTI file: detect it from the header's data size."""
    compressed = full_suffix(path) == ".nii.gz"
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            expected = _nifti_expected_bytes(stream.read(540))
    except (OSError, EOFError, zlib.error):
        return  # not readable as NIfTI at all: let ITK report it
    if expected is None:
        return
    if compressed:
        with open(path, "rb") as raw:  # the gzip trailer holds the size mod 2**32: a cheap check
            raw.seek(-4, os.SEEK_END)
            trailer_size = int(np.frombuffer(raw.read(4), dtype="<u4")[0])
        if trailer_size == expected % 2 ** 32:
            return
        try:
            actual = _gzip_uncompressed_size(path)  # several gzip members: count for real
        except (OSError, EOFError, zlib.error):
            actual = -1
    else:
        actual = path.stat().st_size
    if actual < expected:
        raise InputError(f"Cannot read {path}: the file is truncated (its header announces "
                         f"{expected:,} bytes of data, it holds "
                         f"{'fewer' if actual < 0 else f'{actual:,}'}). Copy or export it again.")


def physical_memory_bytes() -> Optional[int]:
    """This machine's RAM, or None where the OS does not say (then only MAX_VOXELS applies)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_size_from_header(size: Sequence[int], components: int, bytes_per_component: int,
                           source: str, memory_bytes: Optional[int] = None) -> None:
    """Refuse, before any voxel is read, an image too large to read and segment here.

    `size` is the header's (x, y, z[, t]); reading takes every voxel of every component, and
    segmenting then needs at least a float32 copy of one 3D volume. InputError gives both figures.
    """
    dims = [int(n) for n in size]
    read_bytes = int(np.prod(dims, dtype=object)) * int(components) * int(bytes_per_component)
    voxels = int(np.prod(dims[:3], dtype=object))
    needed = read_bytes + 4 * voxels
    memory_bytes = physical_memory_bytes() if memory_bytes is None else memory_bytes
    if voxels <= MAX_VOXELS and (memory_bytes is None or needed <= memory_bytes):
        return
    limit = ("more than the 2**31 voxels MultiTaskSeg handles" if voxels > MAX_VOXELS else
             f"more than this machine's {memory_text(memory_bytes)} of memory")
    raise InputError(f"{source} is too large: its header announces {' x '.join(map(str, dims))} voxels "
                     f"({voxels:,} per volume); reading and segmenting it would need at least "
                     f"{memory_text(needed)}, {limit}. Crop or downsample it first (nothing was read).")


def _check_size_before_reading(file: str, slices: int = 1, source: Optional[str] = None) -> None:
    """Read only the header and refuse absurd sizes (a damaged or hostile header) and voxel types
    that cannot be segmented (complex) up front.

    `file` is a name ITK can open; for a DICOM series its first file and `slices` the number of files.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # not readable at all: the full read reports why
    source = source or file
    if reader.GetPixelID() in _COMPLEX_PIXELS:
        raise InputError(f"{source} has complex-valued voxels (e.g. raw MR phase data); save the magnitude as a "
                         f"real-valued image and segment that (nothing was read).")
    components = reader.GetNumberOfComponents()
    size = list(reader.GetSize())
    if slices > 1:
        size = size[:2] + [slices * (size[2] if len(size) > 2 else 1)]
    check_size_from_header(size, components, component_bytes(reader.GetPixelID(), components), source)


def _read_image_file(path: Path) -> sitk.Image:
    check_header(path)  # a regular file, data files too, finite geometry: before ITK opens anything
    with itk_file_name(path) as name:
        _check_size_before_reading(name, source=str(path))
        if full_suffix(path) in (".nii", ".nii.gz"):
            _check_nifti_complete(path)
        try:
            return sitk.ReadImage(name)
        except RuntimeError as error:
            hint = "" if full_suffix(path) in READABLE_SUFFIXES else \
                f" Supported: {', '.join(READABLE_SUFFIXES)} files or a DICOM series folder."
            raise InputError(f"Cannot read {path}: {_plain_reason(error)}. The file may be truncated, "
                             f"corrupt or of an unsupported format.{hint}") from None


def _plain_reason(error: Exception) -> str:
    reason = itk_reason(error)
    if "Zero-valued spacing" in reason:  # ITK's words for a zero, negative, infinite or NaN spacing
        return "its header gives a voxel spacing that is zero, negative, infinite or not a number"
    return reason


def _select_component(image: sitk.Image, component: Optional[int], path: Path) -> sitk.Image:
    """One scalar 3D image out of a vector or 4D image (or InputError saying how to pick)."""
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        if component is None:
            raise InputError(f"{path} has {components} components per voxel; pick one with "
                             f"--component N (Python: component=N), N in 0..{components - 1}.")
        _check_component(component, components, path, "components")
        image = sitk.VectorIndexSelectionCast(image, int(component))
    elif image.GetDimension() == 4:
        time_points = image.GetSize()[3]
        if time_points > 1 and component is None:
            raise InputError(f"{path} is 4D with {time_points} volumes (time points); pick one "
                             f"with --component N (Python: component=N), N in "
                             f"0..{time_points - 1}.")
        index = 0 if component is None else int(component)
        _check_component(index, time_points, path, "time points")
        image = sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, index])
    elif component not in (None, 0):
        raise InputError(f"{path} has a single component; leave --component out.")
    if image.GetDimension() != 3:
        raise InputError(f"{path} is {image.GetDimension()}D; a 3D volume is needed (for a "
                         f"DICOM series give the folder, not one slice file).")
    return image


def _check_component(index: int, count: int, path: Path, what: str) -> None:
    if not 0 <= index < count:
        raise InputError(f"--component {index} is out of range: {path} has {count} {what} "
                         f"(0..{count - 1}).")
