"""File types: which image suffixes are read and written, and the case name a file stands for.

One home for the suffix lists, so the CLI, the batch planner and the Slicer logic agree on what an
image file is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, Path]

READABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Formats with a detached data file (.nhdr, .mhd) cannot be renamed into place as one file.
WRITABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
# Labelmap outputs by suffix (a Slicer segmentation or a plain labelmap); a folder output gets the
# suffix of --format.
LABELMAP_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd", "seg.nrrd": ".seg.nrrd"}
SEGMENTATION_SUFFIX = ".seg.nrrd"
PROBABILITY_SUFFIX = ".nii.gz"


def full_suffix(path: PathLike) -> str:
    """The format suffix of `path`: ".nii.gz" for gzipped NIfTI, else the last suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_image_file(path: PathLike) -> bool:
    """A readable image file by its suffix (Slicer segmentations are outputs, not inputs)."""
    name = Path(path).name.lower()
    return full_suffix(name) in READABLE_SUFFIXES and not name.endswith(SEGMENTATION_SUFFIX)


def labelmap_suffix(path: PathLike) -> Optional[str]:
    """The labelmap format a file name asks for (".seg.nrrd", ".nii.gz", ...), or None."""
    name = Path(path).name.lower()
    return next((s for s in LABELMAP_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def case_name(path: PathLike) -> str:
    """The case id an input's outputs are named after: the file name without its image suffix, or
    the folder name of a DICOM series."""
    path = Path(path)
    name = path.resolve().name if path.is_dir() else path.name
    for suffix in (SEGMENTATION_SUFFIX,) + READABLE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name
