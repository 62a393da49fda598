"""Reading a DICOM series folder, refusing a series whose slices do not form one regular grid.

ITK stacks a series' slices on an evenly spaced grid whatever their positions: a missing slice,
two slices at one position, slices of several orientations or a tilted gantry would be
segmented on a grid that misplaces them, with only a warning. Here every slice header is read
first and the series is refused, saying which slices, unless its positions are complete and
regular along the slice normal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .file_types import READABLE_SUFFIXES
from .image_headers import component_bytes, file_kind
from .itk_paths import itk_file_names, itk_folder_name, itk_reason

POSITION_TAG, ORIENTATION_TAG, TRANSFER_SYNTAX_TAG = "0020|0032", "0020|0037", "0002|0010"
_UNCOMPRESSED_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
_ORIENTATION_TOLERANCE = 1e-3  # direction cosines as scanners round them
_SPACING_RELATIVE_TOLERANCE = 0.01
_SPACING_ABSOLUTE_TOLERANCE_MM = 1e-3

# check_size(first slice file as ITK opens it, number of slices, description of the series)
SeriesCheck = Callable[[str, int, str], None]


def read_dicom_folder(folder: Path, series_uid: Optional[str], check_size: SeriesCheck) -> sitk.Image:
    """The series ``series_uid`` (or the only one) of ``folder``, checked slice by slice.

    ``check_size(first_file, slices, source)`` refuses, from the first header, a series too large
    to read.
    """
    _refuse_special_entries(folder)
    with itk_folder_name(folder) as listed:
        uids: List[str] = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(listed))
        if not uids:
            raise InputError(f"No DICOM series found in folder {folder}. Give a folder that directly "
                             f"contains the DICOM files of one series, or an image file "
                             f"({', '.join(READABLE_SUFFIXES)}).")
        if series_uid is None and len(uids) > 1:
            listing = "; ".join(_series_summary(listed, uid) for uid in uids)
            raise InputError(f"Folder {folder} holds {len(uids)} DICOM series: {listing}. Pick one "
                             f"with --series-uid UID (Python: read_volume(path, series_uid=UID)).")
        uid = series_uid if series_uid is not None else uids[0]
        if uid not in uids:
            listing = "; ".join(_series_summary(listed, known) for known in uids)
            raise InputError(f"DICOM series {uid} is not in folder {folder}; it holds: {listing}.")
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(listed, uid))
        names = [Path(folder) / Path(f).name for f in files]  # for messages: the user's paths
        with itk_file_names(files) as readable:
            if len(readable) > 1:
                try:
                    order = check_slice_grid(readable, names, f"DICOM series {uid} in {folder}")
                except InputError as error:
                    raise InputError(f"{error}{_unreadable_files_note(folder, listed, uids)}") from None
                readable = [readable[i] for i in order]
            check_size(readable[0], len(readable), f"DICOM series {uid} in {folder}")
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(readable)
            try:
                return reader.Execute()
            except RuntimeError as error:
                raise InputError(f"Cannot read DICOM series {uid} in {folder}: {itk_reason(error)}. "
                                 f"Check that no slice file is missing or corrupt.") from None


def _refuse_special_entries(folder: Path) -> None:
    """GDCM opens every file of the folder to look for series: a named pipe would block it."""
    try:
        entries = list(os.scandir(folder))
    except OSError as error:
        raise InputError(f"Cannot list the folder {folder}: {error.strerror}.") from None
    for entry in entries:
        try:
            mode = entry.stat().st_mode
        except OSError:
            continue  # a dangling link: GDCM skips what it cannot open
        if not (entry.is_file() or entry.is_dir()):
            raise InputError(f"The DICOM folder {folder} holds {entry.name!s}, {file_kind(mode)}; reading the "
                             f"folder could block forever. Move it out of the folder.")


def _unreadable_files_note(folder: Path, listed: str, uids: Sequence[str]) -> str:
    """" (Not DICOM or unreadable: ...)" for the folder's files in no series: a corrupt slice is
    one GDCM leaves out, so it shows as a gap."""
    in_series = {Path(f).name for uid in uids for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(listed, uid)}
    others = sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.name not in in_series)
    if not others:
        return ""
    shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
    return f" The folder also holds files that are not readable DICOM (a corrupt slice?): {shown}."


def _series_summary(folder: str, uid: str) -> str:
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid)
    description = ""
    try:
        with itk_file_names(files[:1]) as first:
            reader = sitk.ImageFileReader()
            reader.SetFileName(first[0])
            reader.ReadImageInformation()
            if reader.HasMetaDataKey("0008|103e"):
                description = reader.GetMetaData("0008|103e").strip()
    except (RuntimeError, InputError):
        pass  # the description is a courtesy; the UID and slice count identify the series
    return f'{uid} ("{description}", {len(files)} slices)'


def _numbers(reader: sitk.ImageFileReader, tag: str, count: int) -> Optional[np.ndarray]:
    if not reader.HasMetaDataKey(tag):
        return None
    try:
        values = np.array([float(v) for v in reader.GetMetaData(tag).strip().split("\\")], dtype=np.float64)
    except ValueError:
        return None
    return values if values.size == count and np.all(np.isfinite(values)) else None


def check_slice_grid(files: Sequence[str], names: Sequence[Path], source: str) -> List[int]:
    """Refuse slices that cannot be read or do not form one regular grid (see module docstring);
    returns the slices' order along the slice normal (the order ITK must read them in)."""
    positions, orientations, sizes = [], [], []
    for file, name in zip(files, names):
        reader = sitk.ImageFileReader()
        reader.SetFileName(file)
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise InputError(f"Cannot read {source}: slice {name} is corrupt ({itk_reason(error)}). "
                             f"Export the series again.") from None
        position, orientation = _numbers(reader, POSITION_TAG, 3), _numbers(reader, ORIENTATION_TAG, 6)
        if position is None or orientation is None:
            raise InputError(f"Cannot read {source}: slice {name} has no valid position or orientation "
                             f"(tags {POSITION_TAG}, {ORIENTATION_TAG}), so it cannot be placed. Export the series "
                             f"again, or convert it to NIfTI/NRRD with a tool that knows its geometry.")
        _check_slice_complete(reader, file, name, source)
        positions.append(position)
        orientations.append(orientation)
        sizes.append(tuple(reader.GetSize()[:2]))
    for name, orientation, size in zip(names, orientations, sizes):
        if np.max(np.abs(orientation - orientations[0])) > _ORIENTATION_TOLERANCE:
            raise InputError(f"Cannot read {source}: its slices have different orientations ({names[0].name}: "
                             f"{_text(orientations[0])}, {name.name}: {_text(orientation)}); one series must be "
                             f"one stack. Separate the stacks into their own folders.")
        if size != sizes[0]:
            raise InputError(f"Cannot read {source}: slice {name.name} is {size[0]} x {size[1]} pixels, "
                             f"{names[0].name} {sizes[0][0]} x {sizes[0][1]}; one series must be one stack.")
    return _check_positions(np.array(positions), orientations[0], names, source)


def _check_slice_complete(reader: sitk.ImageFileReader, file: str, name: Path, source: str) -> None:
    """An uncompressed slice shorter than its pixels is truncated (ITK would read zeros)."""
    syntax = reader.GetMetaData(TRANSFER_SYNTAX_TAG).strip("\0 ") if reader.HasMetaDataKey(TRANSFER_SYNTAX_TAG) else ""
    if syntax not in _UNCOMPRESSED_SYNTAXES:
        return
    width, height = reader.GetSize()[:2]
    components = reader.GetNumberOfComponents()
    needed = width * height * components * component_bytes(reader.GetPixelID(), components)
    if os.path.getsize(file) < needed:
        raise InputError(f"Cannot read {source}: slice {name} is truncated (it holds "
                         f"{os.path.getsize(file):,} bytes, its {width} x {height} pixels need {needed:,}). "
                         f"Copy or export the series again.")


def _check_positions(positions: np.ndarray, orientation: np.ndarray, names: Sequence[Path], source: str) -> List[int]:
    normal = np.cross(orientation[:3], orientation[3:])
    order = [int(i) for i in np.argsort(positions @ normal, kind="stable")]
    positions, names = positions[order], [names[i] for i in order]
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    listing = "; ".join(f"{name.name} at {p:.4g} mm" for name, p in zip(names, positions @ normal))
    for index, distance in enumerate(along):
        if abs(distance) <= _SPACING_ABSOLUTE_TOLERANCE_MM:
            raise InputError(f"Cannot read {source}: slices {names[index].name} and {names[index + 1].name} are at "
                             f"the same position ({distance:.4g} mm apart); the series holds duplicate slices. "
                             f"Remove the duplicates (or separate the stacks into their own folders).")
    typical = float(np.median(along))  # sorted: every step is positive
    tolerance = max(_SPACING_RELATIVE_TOLERANCE * typical, _SPACING_ABSOLUTE_TOLERANCE_MM)
    for index, distance in enumerate(along):
        if abs(distance - typical) > tolerance:
            missing = int(round(abs(distance) / typical)) - 1 if typical > 0 else 0
            what = (f"about {missing} slice(s) are missing there" if missing >= 1
                    else "the slices are not evenly spaced")
            raise InputError(f"Cannot read {source}: slices {names[index].name} and {names[index + 1].name} are "
                             f"{abs(distance):.4g} mm apart, the others {typical:.4g} mm: {what}. MultiTaskSeg "
                             f"segments only complete, evenly spaced series (slice positions: {_short(listing)}). "
                             f"Export the complete series.")
    in_plane = steps - np.outer(along, normal)
    if np.max(np.linalg.norm(in_plane, axis=1)) > tolerance:
        raise InputError(f"Cannot read {source}: each slice is shifted within its plane from the previous one "
                         f"(a tilted gantry or a sheared stack), which a regular grid cannot place. Resample the "
                         f"series onto an orthogonal grid first (e.g. Slicer's 'Gantry tilt correction').")
    return order


def _text(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."
