"""What an image file's header says, checked before ITK reads it.

ITK would block forever on a named pipe or on a detached header whose data file is /dev/stdin,
and reports an infinite spacing as "Zero-valued spacing". Here: the input and every data file
its header names must be regular files, and the header's geometry numbers must be finite.
The data files are inputs too: the output planner keeps outputs off them.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import stat
import zlib
from pathlib import Path
from typing import List, Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .file_types import PathLike, full_suffix

_HEADER_BYTES = 1 << 20  # headers are a few hundred bytes; a megabyte is plenty
_MAX_DATA_FILES = 100_000
_NRRD_GEOMETRY_FIELDS = ("spacings", "space directions", "space origin", "axis mins", "axis maxs")
_META_GEOMETRY_FIELDS = ("elementspacing", "elementsize", "offset", "origin", "position",
                         "transformmatrix", "rotation", "orientation")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf(?:inity)?|nan)", re.IGNORECASE)


def file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def component_bytes(pixel_id: int, components: int = 1) -> int:
    """Bytes of one voxel component of ITK pixel type ``pixel_id`` (8 when ITK cannot say)."""
    for arguments in ((pixel_id, components), (pixel_id,)):
        try:
            return int(sitk.Image([1, 1, 1], *arguments).GetSizeOfPixelComponent())
        except (RuntimeError, TypeError):
            continue
    return 8


def check_regular_file(path: PathLike, what: str = "Input") -> None:
    """Refuse anything but a regular file (after following links): reading a pipe or a device
    could block forever or never end."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError) as error:  # ValueError: a NUL in a name a header gives
        reason = getattr(error, "strerror", None) or str(error)
        raise InputError(f"{what} {os.fspath(path)!r} cannot be opened: {reason}. Check the path.") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} {os.fspath(path)!s} is {file_kind(mode)}, not a regular file; reading it could "
                         f"block forever. Give an image file saved on disk.")


def check_header(path: PathLike) -> List[Path]:
    """Check ``path`` and the data files its header names (NRRD, MetaImage) before any reading;
    returns those data files. NIfTI headers get their spacing checked."""
    path = Path(path)
    check_regular_file(path)
    suffix = full_suffix(path)
    if suffix in (".nrrd", ".nhdr", ".mha", ".mhd"):
        fields, rest = _text_header(path, nrrd=suffix in (".nrrd", ".nhdr"))
        _check_finite_fields(path, fields, _NRRD_GEOMETRY_FIELDS if suffix in (".nrrd", ".nhdr")
                             else _META_GEOMETRY_FIELDS)
        files = _data_files(path, fields, rest, nrrd=suffix in (".nrrd", ".nhdr"))
        for data_file in files:
            check_regular_file(data_file, f"The data file of {path}:")
        return files
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_geometry(path, compressed=suffix == ".nii.gz")
    return []


def data_files(path: PathLike) -> List[Path]:
    """The separate data files a NRRD or MetaImage header names (none for other formats, or when
    the header cannot be read: reading the input will say why)."""
    path = Path(path)
    suffix = full_suffix(path)
    if suffix not in (".nrrd", ".nhdr", ".mha", ".mhd") or not path.is_file():
        return []
    try:
        fields, rest = _text_header(path, nrrd=suffix in (".nrrd", ".nhdr"))
        return _data_files(path, fields, rest, nrrd=suffix in (".nrrd", ".nhdr"))
    except (InputError, OSError):
        return []


def _text_header(path: Path, nrrd: bool):
    """(fields, lines after the field that ends the header) of a NRRD or MetaImage header; keys
    lower-case. NRRD: "key: value" up to a blank line; MetaImage: "Key = Value" up to ElementDataFile."""
    with open(path, "rb") as stream:
        text = stream.read(_HEADER_BYTES).decode("latin-1")
    lines = text.split("\n")
    fields, end = {}, len(lines)
    for number, line in enumerate(lines[1:] if nrrd else lines, start=1 if nrrd else 0):
        line = line.rstrip("\r")
        if nrrd and not line:
            end = number
            break
        if nrrd and line.startswith("#"):
            continue
        key, separator, value = line.partition(":" if nrrd else "=")
        if not separator:
            continue
        key = key.strip().lower()
        if not nrrd:
            key = key.replace(" ", "")
        fields[key] = value.lstrip("=").strip()
        if (nrrd and key in ("data file", "datafile")) or (not nrrd and key == "elementdatafile"):
            end = number
            break
    return fields, [line.rstrip("\r") for line in lines[end + 1:]]


def _check_finite_fields(path: Path, fields, names) -> None:
    for name in names:
        value = fields.get(name)
        if value is None:
            continue
        numbers = [float(token) for token in _NUMBER.findall(value)]
        if any(not math.isfinite(number) for number in numbers):
            raise InputError(f"Cannot read {path}: its header's {name!r} holds a value that is not finite "
                             f"({value.strip()[:80]}): the header is damaged. Fix the geometry in the header "
                             f"(spacing, origin, directions) and save it again.")


def _data_files(path: Path, fields, rest: List[str], nrrd: bool) -> List[Path]:
    value = fields.get("data file", fields.get("datafile")) if nrrd else fields.get("elementdatafile")
    if value is None or (not nrrd and value.upper() == "LOCAL"):
        return []
    words = value.split()
    if words and words[0].upper() == "LIST":
        names = [line.strip() for line in rest if line.strip()]
    elif len(words) >= 4 and "%" in words[0]:  # a printf pattern with min max step
        names = _pattern_names(path, words)
    else:
        names = [value]
    if len(names) > _MAX_DATA_FILES:
        raise InputError(f"Cannot read {path}: its header names {len(names):,} data files; that many are not "
                         f"an image. Check the header.")
    return [Path(name) if os.path.isabs(name) else path.parent / name for name in names]


def _pattern_names(path: Path, words: List[str]) -> List[str]:
    try:
        first, last, step = (int(w) for w in words[1:4])
    except ValueError:
        raise InputError(f"Cannot read {path}: its data file pattern {' '.join(words)!r} is malformed.") from None
    if step == 0 or (last - first) / step > _MAX_DATA_FILES:
        raise InputError(f"Cannot read {path}: its data file pattern {' '.join(words)!r} names no file or too "
                         f"many files. Check the header.")
    try:
        return [words[0] % number for number in range(first, last + (1 if step > 0 else -1), step)]
    except (TypeError, ValueError):
        raise InputError(f"Cannot read {path}: its data file pattern {words[0]!r} is malformed.") from None


def _check_nifti_geometry(path: Path, compressed: bool) -> None:
    """The voxel size and the orientation numbers (quaternion, offsets, affine rows) of a NIfTI
    header must be finite: ITK reports an infinite voxel size as zero spacing, and its reading of
    the header never returns on some infinite affines."""
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            header = stream.read(540)
    except (OSError, EOFError, zlib.error):
        return  # not readable as NIfTI: ITK's reading says why
    fields: Optional[np.ndarray] = None
    for order in "<>":
        if len(header) >= 348 and int(np.frombuffer(header[:4], order + "i4")[0]) == 348:
            pixdim = np.frombuffer(header[76:108], order + "f4")[1:4]
            affine = np.frombuffer(header[256:328], order + "f4")  # quatern b, c, d, qoffset x, y, z, srow
            fields = np.concatenate([pixdim, affine]).astype(np.float64)
        elif len(header) >= 540 and int(np.frombuffer(header[:4], order + "i4")[0]) == 540:
            pixdim = np.frombuffer(header[104:168], order + "f8")[1:4]
            affine = np.frombuffer(header[352:496], order + "f8")
            fields = np.concatenate([pixdim, affine])
    if fields is not None and not np.all(np.isfinite(fields)):
        raise InputError(f"Cannot read {path}: its header gives a voxel size {tuple(fields[:3].tolist())} or an "
                         f"orientation that is not finite (NaN or infinite): the header is damaged. Fix the geometry "
                         f"and save it again.")
