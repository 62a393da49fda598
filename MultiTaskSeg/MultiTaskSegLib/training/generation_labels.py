"""Generation labels: the finer label map that synthesis paints images from (SynthSeg's idea).

The network learns six brain classes, but an image has many more tissues with their own
intensities: hippocampus and amygdala (grey matter that the six classes call background),
extra-cerebral CSF, skull, diploe, scalp fat, muscle, eyes, neck. Synthesis paints each
generation label with its own random intensity, so the image looks like a head while the
training labels say background wherever the tissue is not one of the six classes.

Each label carries the training class it counts as (index into the brain dataset's classes:
0 background, 1 white matter, 2 cortical grey matter, 3 basal ganglia and thalami,
4 ventricular CSF, 5 cerebellum, 6 brain stem) and the range of its T1 intensity relative to
cerebral white matter, used when a synthetic head is painted around a real T1 brain
(T1-weighted gradient echo at 1.5-3 T: fat and diploe marrow bright, cortical bone and air
dark, CSF and vitreous dark grey, muscle between CSF and grey matter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np


@dataclass(frozen=True)
class GenerationLabel:
    code: int
    name: str
    training_class: int
    t1_range: Tuple[float, float]  # T1 intensity relative to cerebral white matter (low, high)
    brain: bool                    # inside the brain proper (never painted over by a synthetic head)


GENERATION_LABELS: Tuple[GenerationLabel, ...] = (
    GenerationLabel(0, "air", 0, (0.0, 0.03), False),
    # the brain (from FreeSurfer aparc+aseg codes, see data/atlas_labels.py)
    GenerationLabel(1, "cerebral white matter", 1, (0.95, 1.05), True),
    GenerationLabel(2, "cerebral cortex", 2, (0.55, 0.72), True),
    GenerationLabel(3, "thalamus", 3, (0.75, 0.9), True),
    GenerationLabel(4, "caudate", 3, (0.62, 0.75), True),
    GenerationLabel(5, "putamen", 3, (0.65, 0.8), True),
    GenerationLabel(6, "pallidum", 3, (0.8, 0.92), True),
    GenerationLabel(7, "accumbens", 3, (0.6, 0.72), True),
    GenerationLabel(8, "lateral ventricles", 4, (0.15, 0.35), True),
    GenerationLabel(9, "third and fourth ventricles", 4, (0.15, 0.35), True),
    GenerationLabel(10, "cerebellar white matter", 5, (0.9, 1.02), True),
    GenerationLabel(11, "cerebellar cortex", 5, (0.55, 0.72), True),
    GenerationLabel(12, "brain stem", 6, (0.82, 0.95), True),
    GenerationLabel(13, "hippocampus", 0, (0.55, 0.7), True),
    GenerationLabel(14, "amygdala", 0, (0.58, 0.72), True),
    GenerationLabel(15, "ventral diencephalon", 0, (0.8, 0.92), True),
    GenerationLabel(16, "other brain structures", 0, (0.5, 0.85), True),
    GenerationLabel(17, "unlabelled brain tissue", 0, (0.3, 0.65), True),
    # around the brain: synthetic heads (training/head_synthesis.py)
    GenerationLabel(20, "extra-cerebral CSF", 0, (0.12, 0.32), False),
    GenerationLabel(21, "cortical bone", 0, (0.02, 0.12), False),
    GenerationLabel(22, "diploe", 0, (0.45, 0.9), False),
    GenerationLabel(23, "scalp fat", 0, (0.95, 1.4), False),
    GenerationLabel(24, "muscle", 0, (0.45, 0.65), False),
    GenerationLabel(25, "skin", 0, (0.5, 0.8), False),
    GenerationLabel(26, "vitreous", 0, (0.1, 0.25), False),
    GenerationLabel(27, "orbital fat", 0, (0.95, 1.35), False),
    GenerationLabel(28, "neck soft tissue", 0, (0.55, 1.1), False),
    GenerationLabel(29, "vertebral marrow", 0, (0.6, 1.0), False),
    GenerationLabel(30, "spinal cord", 0, (0.75, 0.92), False),
    GenerationLabel(31, "air cavities", 0, (0.0, 0.08), False),
    GenerationLabel(32, "optic nerve", 0, (0.8, 0.95), False),
    # a real whole head (data/whole_head.py): its non-brain tissue in three intensity groups
    GenerationLabel(40, "head tissue, dark", 0, (0.02, 0.3), False),
    GenerationLabel(41, "head tissue, intermediate", 0, (0.4, 0.75), False),
    GenerationLabel(42, "head tissue, bright", 0, (0.85, 1.35), False),
)

BY_CODE: Dict[int, GenerationLabel] = {label.code: label for label in GENERATION_LABELS}
BY_NAME: Dict[str, GenerationLabel] = {label.name: label for label in GENERATION_LABELS}
MAX_CODE = max(BY_CODE)


def code(name: str) -> int:
    """The generation code of a label name (KeyError for a name the table lacks)."""
    return BY_NAME[name].code


def training_lookup() -> np.ndarray:
    """uint8 array: generation code -> training class (unknown codes -> background)."""
    lookup = np.zeros(256, np.uint8)
    for label in GENERATION_LABELS:
        lookup[label.code] = label.training_class
    return lookup


def brain_lookup() -> np.ndarray:
    """bool array: generation code -> is it brain (a synthetic head never paints there)."""
    lookup = np.zeros(256, bool)
    for label in GENERATION_LABELS:
        lookup[label.code] = label.brain
    return lookup


def training_labels(generation: np.ndarray) -> np.ndarray:
    """The training classes (uint8, 0..6) of a generation label map."""
    return training_lookup()[np.asarray(generation, dtype=np.uint8)]


def t1_ranges() -> np.ndarray:
    """(256, 2) float32: per code, the relative T1 intensity range (0 for unknown codes)."""
    table = np.zeros((256, 2), np.float32)
    for label in GENERATION_LABELS:
        table[label.code] = label.t1_range
    return table
