"""File names handed to ITK, made safe.

ITK (through SimpleITK's SWIG layer) aborts the whole process in C++ when given a file name that
is not valid UTF-8 (Python keeps such POSIX names as lone surrogates), picks its reader from a
lower-case suffix (it cannot read "scan.MHA", and writes "O.MHA" as a detached "O.mhd"), and its
NIfTI reader takes "x.nii" when asked for "x.nii.gz" beside it. For all of these ITK gets a
symbolic link with a plain name in a private temporary folder instead; the real file is never
renamed or copied when links are possible.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List, Sequence

from .errors import InputError
from .file_types import PathLike, full_suffix

# Formats whose header names a separate data file by a relative path: a link elsewhere would
# point ITK at the wrong folder.
DETACHED_SUFFIXES = (".nhdr", ".mhd")


def itk_can_open(path: PathLike) -> bool:
    """True when ITK can be given the name ``path`` without aborting: valid UTF-8, no NUL."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in text


def _needs_alias(path: Path) -> bool:
    if not itk_can_open(path):
        return True
    suffix = full_suffix(path)
    if suffix and not path.name.endswith(suffix):  # "scan.MHA": ITK finds no reader for it
        return True
    # ITK's NIfTI library reads x.nii when asked for x.nii.gz and both exist.
    return suffix == ".nii.gz" and path.with_name(path.name[:-3]).exists()


@contextlib.contextmanager
def itk_file_name(path: PathLike) -> Iterator[str]:
    """A name under which ITK reads (or writes through to) the file ``path``."""
    path = Path(path)
    if not _needs_alias(path):
        yield str(path)
        return
    if full_suffix(path) in DETACHED_SUFFIXES:
        raise InputError(f"Cannot read {path!s}: a detached header ({', '.join(DETACHED_SUFFIXES)}) needs a "
                         f"plain file name (valid UTF-8, lower-case suffix) for ITK to find its data file; "
                         f"rename it and its data file.")
    with itk_file_names([path]) as names:
        yield names[0]


@contextlib.contextmanager
def itk_file_names(paths: Sequence[PathLike]) -> Iterator[List[str]]:
    """Names ITK can open for each of ``paths``: the paths themselves where possible, links with
    plain names (the same lower-case suffix) in one temporary folder for the others."""
    paths = [Path(p) for p in paths]
    if not any(_needs_alias(p) for p in paths):
        yield [str(p) for p in paths]
        return
    with tempfile.TemporaryDirectory(prefix="multitaskseg-itk-") as folder:
        names = []
        for number, path in enumerate(paths):
            if not _needs_alias(path):
                names.append(str(path))
                continue
            alias = Path(folder) / f"file{number:06d}{full_suffix(path)}"
            _link_or_copy(path, alias)
            names.append(str(alias))
        yield names


@contextlib.contextmanager
def itk_folder_name(folder: PathLike) -> Iterator[str]:
    """A name under which ITK (GDCM) can list the folder ``folder``."""
    folder = Path(folder)
    if itk_can_open(folder):
        yield str(folder)
        return
    with tempfile.TemporaryDirectory(prefix="multitaskseg-itk-") as temporary:
        alias = Path(temporary) / "folder"
        try:
            os.symlink(os.path.abspath(folder), alias, target_is_directory=True)
        except OSError:
            raise InputError(f"Cannot read the folder {folder!s}: its name is not valid UTF-8, which ITK cannot "
                             f"open; rename it.") from None
        yield str(alias)


def _link_or_copy(path: Path, alias: Path) -> None:
    try:
        os.symlink(os.path.abspath(path), alias)
    except OSError:  # no symbolic links here (e.g. Windows without the privilege): a copy reads the same
        shutil.copyfile(path, alias)


def itk_reason(error: Exception) -> str:
    """The informative line of an ITK exception (they come with file/line noise)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
    for line in lines:
        if "ITK ERROR" in line or "Description:" in line or "sitk::ERROR" in line:
            reason = re.split(r"ITK ERROR:|Description:|sitk::ERROR:", line)[-1]
            break
    reason = re.sub(r"^\s*\w+\(0x[0-9a-fA-F]+\):\s*", "", reason)  # "NrrdImageIO(0x55..): "
    return reason.strip().rstrip(".:")
