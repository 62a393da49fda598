"""Writing volumes, labelmaps and Slicer segmentations (.seg.nrrd), atomically.

Outputs are first written to a hidden temporary file in the target folder and renamed over the
target only when complete, so an interrupted run never leaves a half-written file under the final
name. Geometry is LPS, as in the rest of the engine; .seg.nrrd tags are in Slicer's RAS.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import OutputError
from .file_types import WRITABLE_SUFFIXES, PathLike, full_suffix
from .geometry import Volume
from .image_reading import itk_reason

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@contextlib.contextmanager
def atomic_write_path(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename it over `path` on success.

    The temporary file is removed if the body raises (KeyboardInterrupt included). An existing
    `path` without `overwrite` raises OutputError before anything is written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"Output {path} is a folder; give a file name.")
    if path.exists() and not overwrite:
        raise OutputError(f"Output {path} exists already; use --overwrite (Python: "
                          f"overwrite=True) to replace it, or choose another name.")
    if not path.parent.is_dir():
        raise OutputError(f"Output folder {path.parent} does not exist; create it first.")
    try:
        handle, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-",
                                                  suffix=full_suffix(path), dir=path.parent)
    except OSError as error:
        raise OutputError(f"Cannot write in {path.parent}: {error.strerror}. Choose a "
                          f"writable folder.") from None
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _check_writable_suffix(path: Path, allowed=WRITABLE_SUFFIXES) -> None:
    if full_suffix(path) not in allowed:
        raise OutputError(f"Cannot write {path.name}: use one of {', '.join(allowed)} "
                          f"(single-file formats, written atomically).")


def _write_image(image: sitk.Image, path: PathLike, overwrite: bool) -> Path:
    path = Path(path)
    _check_writable_suffix(path)
    with atomic_write_path(path, overwrite) as temporary:
        try:
            sitk.WriteImage(image, str(temporary), useCompression=True)
        except RuntimeError as error:
            raise OutputError(f"Cannot write {path}: {itk_reason(error)}.") from None
    return path


def write_volume(volume: Volume, path: PathLike, overwrite: bool = False) -> Path:
    """Write `volume` (any voxel type) to .nii, .nii.gz, .nrrd or .mha; returns the path."""
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
    bounding_boxes = ndimage.find_objects(labels)  # one C pass for all labels
    metadata = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        "Segmentation_ConversionParameters": _conversion_parameters(reference),
    }
    for index, (segment, value) in enumerate(zip(segments, label_values)):
        terminology = str(segment.get("terminology") or "")
        box = bounding_boxes[value - 1] if value <= len(bounding_boxes) else None
        prefix = f"Segment{index}_"
        metadata.update({
            prefix + "ID": f"Segment_{value}",
            prefix + "Name": str(segment["name"]),
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
