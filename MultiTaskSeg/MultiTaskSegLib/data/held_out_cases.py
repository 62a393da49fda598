"""Held-out case sets built in memory, prepared as training prepares its cases: for calibrating a
trained model's probabilities and for evaluating it without writing dataset folders.

- Calibration set: phantoms with seeds from 1000 on (``make_data`` draws case ``i`` with seed
  ``1000 * seed + i``, so its default seed 0 uses 0..10) and the MNI152 brain. The MNI152 brain is
  the brain the shipped model trained on: the only labelled brain besides the ICBM 2009a test brain,
  which must stay out of anything that is fitted.
- Test set of the shipped model's report: phantom seeds 8, 9, 10 (``make_data``'s test cases) and
  the ICBM 2009a brain.
"""

from __future__ import annotations

from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..engine.bundle import ModelBundle
from ..engine.geometry import Volume, to_canonical
from ..engine.normalization import normalize
from ..training.cases import PreparedCase
from . import brain_templates, phantoms

CALIBRATION_SEEDS = (1000, 1001, 1002, 1003)
REPORT_TEST_SEEDS = (8, 9, 10)

_PHANTOMS = {"breast": (phantoms.breast_mri_phantom, "pectoral muscle", "MR"),
             "coronary": (phantoms.cardiac_cta_phantom, "coronary arteries", "CT")}
_BRAINS = {"mni152": brain_templates.mni152_brain_case, "icbm2009c": brain_templates.icbm2009c_brain_case,
           "icbm2009a": brain_templates.icbm2009a_brain_case}


def prepared_case(case_id: str, task: str, image: Volume, labels: np.ndarray, modality: str,
                  normalization: Mapping, target_spacing: Optional[float] = None) -> PreparedCase:
    """An in-memory image with labels (already bundle class indices) prepared like ``cases.prepare_case``:
    canonical grid, the bundle's normalisation, sample mask raw intensity > 0."""
    canonical, grid = to_canonical(image, target_spacing)
    canonical_labels, _ = to_canonical(image.with_array(np.asarray(labels).astype(np.int32)), grid.canonical_spacing,
                                       interpolation="nearest")
    raw = canonical.array
    return PreparedCase(case_id, task, normalize(raw, modality, normalization),
                        canonical_labels.array.astype(np.uint8), raw > 0, grid.canonical_spacing)


def brain_labels_to_bundle(labels: np.ndarray, bundle: ModelBundle) -> np.ndarray:
    """Brain template labels (0..6 in ``brain_templates.BRAIN_CLASSES`` order) -> bundle class indices."""
    lookup = np.array([0] + [bundle.class_index(name) for name in brain_templates.BRAIN_CLASSES[1:]], np.uint8)
    return lookup[labels]


def brain_case(bundle: ModelBundle, name: str) -> PreparedCase:
    """``name`` "mni152", "icbm2009c" (training brains) or "icbm2009a" (held-out brain), prepared for ``bundle``."""
    image, labels = _BRAINS[name]()
    return prepared_case(name, "brain", image, brain_labels_to_bundle(labels, bundle), "MR",
                         bundle.normalization, bundle.target_spacing_mm)


def phantom_case(bundle: ModelBundle, task: str, seed: int) -> PreparedCase:
    """The ``task`` ("breast" or "coronary") phantom of ``seed``, its label 1 mapped to the bundle's class."""
    make: Callable[[int], Tuple[Volume, np.ndarray]]
    make, class_name, modality = _PHANTOMS[task]
    image, labels = make(seed)
    mapped = np.where(labels > 0, bundle.class_index(class_name), 0).astype(np.uint8)
    return prepared_case(f"{task}_seed{seed}", task, image, mapped, modality, bundle.normalization,
                         bundle.target_spacing_mm)


def case_set(bundle: ModelBundle, seeds: Sequence[int], brains: Sequence[str],
             tasks: Sequence[str] = ("brain", "breast", "coronary")) -> List[PreparedCase]:
    """The brains named and one phantom per seed of each phantom task, for the bundle's tasks among ``tasks``."""
    model_tasks = {t.name for t in bundle.tasks}
    cases = [brain_case(bundle, name) for name in brains if "brain" in tasks and "brain" in model_tasks]
    for task in _PHANTOMS:
        if task in tasks and task in model_tasks:
            cases += [phantom_case(bundle, task, seed) for seed in seeds]
    return cases


def calibration_cases(bundle: ModelBundle, seeds: Sequence[int] = CALIBRATION_SEEDS) -> List[PreparedCase]:
    return case_set(bundle, seeds, ["mni152"])


def report_test_cases(bundle: ModelBundle, seeds: Sequence[int] = REPORT_TEST_SEEDS) -> List[PreparedCase]:
    return case_set(bundle, seeds, ["icbm2009a"])
