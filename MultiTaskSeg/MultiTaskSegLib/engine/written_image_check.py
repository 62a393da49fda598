"""Checking an image file ITK has just written, before it replaces anything.

ITK's NIfTI and NRRD writers do not report a failed write (a full disk, a file size limit): the
file is simply short, and its header may still read. So a written file must (1) have a header
ITK reads back, and (2) hold every voxel the header announces: for gzip and zlib streams
(.nii.gz, compressed .nrrd and .mha) the whole stream is decompressed, which also verifies its
checksum; for raw data the file size is compared.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import OutputError
from .file_types import full_suffix
from .image_headers import component_bytes
from .itk_paths import itk_file_name, itk_reason

_CHUNK = 1 << 24


def check_written_image(path: Path) -> None:
    """Raise OutputError unless the image file ``path`` (.nii, .nii.gz, .nrrd, .mha) is complete
    (its message says why, without naming the file: the caller names its target)."""
    with itk_file_name(path) as name:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise _incomplete(path, f"its header cannot be read back ({itk_reason(error)})") from None
    components = reader.GetNumberOfComponents()
    expected = int(np.prod(reader.GetSize(), dtype=object)) * components * \
        component_bytes(reader.GetPixelID(), components)
    suffix = full_suffix(path)
    try:
        if suffix in (".nii", ".nii.gz"):
            offset = _nifti_data_offset(path, suffix == ".nii.gz")
            held = _gzip_size(path) - offset if suffix == ".nii.gz" else path.stat().st_size - offset
        else:
            offset, compression = _text_header_end(path, nrrd=suffix == ".nrrd")
            held = _stream_size(path, offset, compression) if compression else path.stat().st_size - offset
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise _incomplete(path, f"its data cannot be read back ({error})") from None
    if held < expected:
        raise _incomplete(path, f"it holds {max(held, 0):,} of the {expected:,} bytes of voxel data")


def _incomplete(path: Path, reason: str) -> OutputError:
    return OutputError(f"the written file is incomplete: {reason}. The disk may be full or a file size limit "
                       f"reached; free space and run again")


def _nifti_data_offset(path: Path, compressed: bool) -> int:
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
        header = stream.read(540)
    for order in "<>":
        if len(header) >= 348 and int(np.frombuffer(header[:4], order + "i4")[0]) == 348:
            offset = float(np.frombuffer(header[108:112], order + "f4")[0])
            if not np.isfinite(offset):
                raise ValueError("the NIfTI data offset is not a number")
            return max(348, int(offset))
        if len(header) >= 540 and int(np.frombuffer(header[:4], order + "i4")[0]) == 540:
            return max(540, int(np.frombuffer(header[168:176], order + "i8")[0]))
    raise ValueError("no NIfTI header")


def _gzip_size(path: Path) -> int:
    """Uncompressed bytes of a gzip file, read to its end (EOFError or BadGzipFile when cut short
    or damaged: gzip checks the length and CRC of every member)."""
    total = 0
    with gzip.open(path, "rb") as stream:
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                return total
            total += len(chunk)


def _text_header_end(path: Path, nrrd: bool) -> Tuple[int, Optional[str]]:
    """(byte offset of the data, its compression: "gzip", "zlib" or None) of an attached NRRD or
    MetaImage file as ITK writes them."""
    with open(path, "rb") as stream:
        head = stream.read(1 << 20)
    if nrrd:
        end = head.find(b"\n\n")
        if end < 0:
            raise ValueError("no end of the NRRD header")
        fields = head[:end].decode("latin-1").lower()
        gzipped = any(line.replace(" ", "") in ("encoding:gzip", "encoding:gz") for line in fields.split("\n"))
        return end + 2, "gzip" if gzipped else None
    marker = head.find(b"ElementDataFile")
    end = head.find(b"\n", marker)
    if marker < 0 or end < 0:
        raise ValueError("no ElementDataFile line in the MetaImage header")
    fields = head[:marker].decode("latin-1").lower().replace(" ", "")
    return end + 1, "zlib" if "compresseddata=true" in fields else None


def _stream_size(path: Path, offset: int, compression: str) -> int:
    """Uncompressed bytes of the complete zlib or gzip stream from ``offset`` (EOFError if it ends early)."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS if compression == "gzip" else zlib.MAX_WBITS)
    total = 0
    with open(path, "rb") as stream:
        stream.seek(offset)
        while not decompressor.eof:
            data = stream.read(_CHUNK)
            if not data:
                pending = decompressor.decompress(b"", _CHUNK)  # output zlib still holds
                if not pending:
                    raise EOFError("the compressed data ends before its end marker")
                total += len(pending)
                continue
            while data and not decompressor.eof:  # bounded output: labelmaps compress 1000-fold
                total += len(decompressor.decompress(data, _CHUNK))
                data = decompressor.unconsumed_tail
    return total
