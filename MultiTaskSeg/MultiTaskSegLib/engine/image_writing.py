"""Writing volumes, labelmaps and Slicer segmentations (.seg.nrrd), atomically and checked.

Every output goes through ``atomic_files.atomic_write_path``: a hidden temporary file in the target
folder, read back (``written_image_check``) and renamed over the target only when complete, so an
interrupted or failed write (a full disk) never leaves a damaged file under the final name nor
replaces a good one. Geometry is LPS, as in the rest of the engine; .seg.nrrd tags are in
Slicer's RAS. A geometry a format cannot hold (a sheared direction matrix in NIfTI) is refused,
never silently changed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from .atomic_files import atomic_write_path
from .errors import OutputError
from .file_types import WRITABLE_SUFFIXES, PathLike, full_suffix
from .geometry import Volume
from .itk_paths import itk_can_open, itk_reason
from .volume_checks import is_orthonormal
from .written_image_check import check_written_image

__all__ = ["atomic_write_path", "check_format_holds", "write_volume", "write_labelmap", "write_segmentation_nrrd"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def check_format_holds(volume: Volume, path: PathLike) -> None:
    """Refuse to write ``volume``'s geometry to a format that would change it: NIfTI holds only
    rotations (ITK "coerces" a sheared direction matrix, moving the image)."""
    if full_suffix(path) in _NIFTI_SUFFIXES and not is_orthonormal(volume.direction):
        raise OutputError(f"Cannot write {Path(path).name}: the image's direction matrix is sheared (its axes are "
                          f"not perpendicular), which NIfTI cannot store without moving the image. Write "
                          f".nrrd, .mha or .seg.nrrd instead (--format nrrd, or that suffix).")


@contextlib.contextmanager
def _itk_write_name(temporary: Path) -> Iterator[str]:
    """A name ITK can write ``temporary`` through (a link when the folder's name is not UTF-8)."""
    if itk_can_open(temporary):
        yield str(temporary)
        return
    with tempfile.TemporaryDirectory(prefix="multitaskseg-itk-") as folder:
        alias = Path(folder) / f"output{full_suffix(temporary)}"
        try:
            os.symlink(os.path.abspath(temporary), alias)
        except OSError:
            raise OutputError(f"Cannot write in {temporary.parent!s}: its name is not valid UTF-8, which ITK "
                              f"cannot open; choose another folder.") from None
        yield str(alias)


def _check_writable_suffix(path: Path, allowed=WRITABLE_SUFFIXES) -> None:
    if full_suffix(path) not in allowed:
        raise OutputError(f"Cannot write {path.name}: use one of {', '.join(allowed)} "
                          f"(single-file formats, written atomically).")


def _write_image(image: sitk.Image, path: PathLike, overwrite: bool) -> Path:
    path = Path(path)
    _check_writable_suffix(path)
    with atomic_write_path(path, overwrite, check=check_written_image) as temporary:
        with _itk_write_name(temporary) as name:
            try:
                sitk.WriteImage(image, name, useCompression=True)
            except RuntimeError as error:  # ITK names the temporary file: name the target instead
                reason = itk_reason(error).replace(Path(name).name, path.name)
                raise OutputError(f"Cannot write {path}: {reason} (the previous content, if any, is "
                                  f"unchanged).") from None
    return path


def write_volume(volume: Volume, path: PathLike, overwrite: bool = False) -> Path:
    """Write `volume` (any voxel type) to .nii, .nii.gz, .nrrd or .mha; returns the path."""
    check_format_holds(volume, path)
    return _write_image(volume.to_sitk(), path, overwrite)


def _labelmap_as_uint8(labelmap: np.ndarray, reference: Volume) -> np.ndarray:
    labelmap = np.asarray(labelmap)
    if labelmap.shape != reference.array.shape:
        raise ValueError(f"labelmap shape {labelmap.shape} differs from the reference image "
                         f"shape {reference.array.shape}")
    if labelmap.size and (labelmap.min() < 0 or labelmap.max() > 255):
        raise ValueError(f"labels must be in 0..255, got {labelmap.min()}..{labelmap.max()}")
    return labelmap.astype(np.uint8, copy=False)


def write_labelmap(labelmap: np.ndarray, reference: Volume, path: PathLike,
                   overwrite: bool = False) -> Path:
    """Write a (z, y, x) labelmap as uint8 in exactly the reference image's geometry."""
    labels = _labelmap_as_uint8(labelmap, reference)
    check_format_holds(reference, path)
    return _write_image(reference.with_array(labels).to_sitk(), path, overwrite)


# ---------------------------------------------------------------------------------------------
# Slicer segmentation (.seg.nrrd)


def _segment_extent(bounding_box) -> str:
    """Slicer's "i0 i1 j0 j1 k0 k1" voxel extent; "0 -1 0 -1 0 -1" for an empty segment."""
    if bounding_box is None:
        return "0 -1 0 -1 0 -1"
    z, y, x = bounding_box
    return " ".join(str(v) for v in (x.start, x.stop - 1, y.start, y.stop - 1,
                                     z.start, z.stop - 1))


def _reference_geometry_string(reference: Volume) -> str:
    """The reference grid as Slicer serialises it: IJK-to-RAS matrix (16) then extent (6)."""
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = _LPS_TO_RAS @ reference.index_to_physical_matrix
    ijk_to_ras[:3, 3] = _LPS_TO_RAS @ np.asarray(reference.origin)
    nz, ny, nx = reference.array.shape
    values = [f"{v:.10g}" for v in ijk_to_ras.reshape(16)] + \
        [str(v) for v in (0, nx - 1, 0, ny - 1, 0, nz - 1)]
    return "".join(f"{v};" for v in values)


def _conversion_parameters(reference: Volume) -> str:
    """Slicer's "name|value|description&" list: the labelmap is the reference image grid."""
    parameters = [
        ("Collapse labelmaps", "1", "Merge segment labelmaps into as few shared layers as possible."),
        ("Crop to reference image geometry", "0", "Do not crop the labelmap to the reference image."),
        ("Oversampling factor", "1", "No oversampling of the reference image geometry."),
        ("Reference image geometry", _reference_geometry_string(reference),
         "Geometry of the image that was segmented."),
    ]
    return "".join(f"{name}|{value}|{description}&" for name, value, description in parameters)


def _color_string(color) -> str:
    rgb = [float(c) for c in color]
    if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
        raise ValueError(f"segment colour must be (r, g, b) in 0..1, got {color!r}")
    return " ".join(f"{c:.6g}" for c in rgb)


def _header_text(value, what: str, forbidden: str = "") -> str:
    """A segment field as a NRRD header value: one line of valid UTF-8 without the separators
    Slicer parses the field by ("|" between a segment's tags)."""
    text = str(value)
    if not text.isprintable() or any(c in text for c in forbidden) or not itk_can_open(text):
        raise ValueError(f"segment {what} {text!r} contains a control character, invalid UTF-8 or one of "
                         f"{forbidden!r}; it would corrupt the .seg.nrrd header")
    return text


def write_segmentation_nrrd(labelmap: np.ndarray, reference: Volume, path: PathLike,
                            segments: Sequence[dict], overwrite: bool = False) -> Path:
    """Write a Slicer segmentation (.seg.nrrd): one shared labelmap layer, one segment per label.

    `segments`: dicts with "name", "color" (r, g, b in 0..1), "label_value" (1..255) and
    "terminology" (a Slicer terminology entry string, or ""). Every non-zero label in
    `labelmap` needs a segment. The labelmap is stored in the reference image's geometry; the
    header carries the segment metadata as Slicer's own storage node writes it.
    """
    path = Path(path)
    _check_writable_suffix(path, (".nrrd",))
    labels = _labelmap_as_uint8(labelmap, reference)
    label_values = [int(segment["label_value"]) for segment in segments]
    if len(set(label_values)) != len(label_values) or not all(1 <= v <= 255 for v in label_values):
        raise ValueError(f"segment label values must be distinct and in 1..255, got {label_values}")
    present = set(np.unique(labels).tolist()) - {0}
    missing = sorted(present - set(label_values))
    if missing:
        raise ValueError(f"labels {missing} occur in the labelmap but have no segment")

    image = reference.with_array(labels).to_sitk()
    from scipy import ndimage  # here, not at the top: see normalization.tissue_mode

    bounding_boxes = ndimage.find_objects(labels)  # one C pass for all labels
    metadata = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        "Segmentation_ConversionParameters": _conversion_parameters(reference),
    }
    for index, (segment, value) in enumerate(zip(segments, label_values)):
        terminology = _header_text(segment.get("terminology") or "", "terminology", "|")
        box = bounding_boxes[value - 1] if value <= len(bounding_boxes) else None
        prefix = f"Segment{index}_"
        metadata.update({
            prefix + "ID": f"Segment_{value}",
            prefix + "Name": _header_text(segment["name"], "name"),
            prefix + "NameAutoGenerated": "0",
            prefix + "Color": _color_string(segment["color"]),
            prefix + "ColorAutoGenerated": "0",
            prefix + "LabelValue": str(value),
            prefix + "Layer": "0",
            prefix + "Extent": _segment_extent(box),
            prefix + "Tags": f"TerminologyEntry:{terminology}|" if terminology else "",
        })
    for key, value in metadata.items():
        image.SetMetaData(key, value)
    return _write_image(image, path, overwrite)
