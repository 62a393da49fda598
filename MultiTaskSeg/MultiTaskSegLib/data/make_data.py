"""Build the three training datasets of the default bundle as nnU-Net v2 folders.

- ``Dataset001_BrainAtlas``: the MNI152 T1 template (imagesTr) and the ICBM 2009a T1
  template (imagesTs/labelsTs), with approximate atlas labels (see ``brain_data``).
- ``Dataset002_BreastPhantom``: breast MRI phantoms, label "pectoral muscle".
- ``Dataset003_CoronaryPhantom``: cardiac CTA phantoms, label "coronary arteries".

The phantoms are procedural stand-ins (see ``phantoms``), reproducible from ``seed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from . import brain_templates

from ..engine.errors import OutputError
from ..engine.progress import CancelCheck, ProgressCallback, check_cancel, sub_progress
from ..training.datasets import TaskDataset, write_dataset
from . import phantoms

TASKS = ("brain", "breast", "coronary")
BRAIN_DATASET = "Dataset001_BrainAtlas"
BREAST_DATASET = "Dataset002_BreastPhantom"
CORONARY_DATASET = "Dataset003_CoronaryPhantom"


def build_training_data(out_dir, n_breast_train: int = 8, n_breast_test: int = 3, n_coronary_train: int = 8,
                        n_coronary_test: int = 3, seed: int = 0, progress: Optional[ProgressCallback] = None,
                        overwrite: bool = False, cancel: Optional[CancelCheck] = None,
                        tasks: Sequence[str] = TASKS) -> List[TaskDataset]:
    """Write the brain, breast-phantom and coronary-phantom datasets (or those of ``tasks``) under ``out_dir``.

    Phantom case ``i`` of a task uses seed ``seed * 1000 + i`` (training cases first, then
    test cases), so the same arguments give the same files. Existing dataset folders
    raise OutputError unless ``overwrite``. Returns the datasets written, as loaded back.
    Takes about a minute with the defaults.
    """
    unknown = set(tasks) - set(TASKS)
    if unknown or not tasks:
        raise OutputError(f"Unknown or no task(s) {sorted(unknown)}: choose one or more of {', '.join(TASKS)}.")
    chosen = [task for task in TASKS if task in tasks]
    names = {"brain": BRAIN_DATASET, "breast": BREAST_DATASET, "coronary": CORONARY_DATASET}
    out = Path(out_dir).expanduser()
    if not overwrite:
        existing = [names[task] for task in chosen if (out / names[task]).exists()]
        if existing:
            raise OutputError(f"{', '.join(existing)} exist(s) in {out} already: choose another folder or overwrite.")
    for count in (n_breast_train, n_breast_test, n_coronary_train, n_coronary_test):
        if count < 0:
            raise OutputError("Case counts must be zero or more.")
    check_cancel(cancel)
    writers = {
        "brain": lambda part: write_dataset(
            out, BRAIN_DATASET, "MR", _labels(brain_templates.BRAIN_CLASSES), _brain_cases(), task="brain",
            overwrite=overwrite, description="MNI152 (train) and ICBM 2009a (test) T1 templates with approximate "
            "Desikan-Killiany atlas labels grouped into six tissue classes.",
            progress=part, cancel=cancel, expected_cases=2),
        "breast": lambda part: write_dataset(
            out, BREAST_DATASET, "MR", _labels(("background", "pectoral muscle")),
            _phantom_cases(phantoms.breast_mri_phantom, "breast", n_breast_train, n_breast_test, seed),
            task="breast", overwrite=overwrite, description="Procedural breast MRI phantoms (T1, no fat suppression).",
            progress=part, cancel=cancel, expected_cases=n_breast_train + n_breast_test),
        "coronary": lambda part: write_dataset(
            out, CORONARY_DATASET, "CT", _labels(("background", "coronary arteries")),
            _phantom_cases(phantoms.cardiac_cta_phantom, "coronary", n_coronary_train, n_coronary_test, seed),
            task="coronary", overwrite=overwrite, description="Procedural cardiac CTA phantoms (Hounsfield units).",
            progress=part, cancel=cancel, expected_cases=n_coronary_train + n_coronary_test),
    }
    # each task's share of the progress bar, about as long as it takes
    spans = {"brain": 0.1, "breast": 0.4, "coronary": 0.5}
    total = sum(spans[task] for task in chosen)
    start, datasets = 0.0, []
    for task in chosen:
        datasets.append(writers[task](sub_progress(progress, start / total, (start + spans[task]) / total)))
        start += spans[task]
    return datasets


def _labels(class_names) -> dict:
    return {name: index for index, name in enumerate(class_names)}


def _brain_cases() -> Iterator[tuple]:
    image, labels = brain_templates.mni152_brain_case()
    yield "mni152", image, labels, "train"
    image, labels = brain_templates.icbm2009a_brain_case()
    yield "icbm2009a", image, labels, "test"


def _phantom_cases(make_phantom, prefix: str, n_train: int, n_test: int, seed: int) -> Iterator[tuple]:
    for index in range(n_train + n_test):
        image, labels = make_phantom(seed * 1000 + index)
        yield f"{prefix}_{index:03d}", image, labels, "train" if index < n_train else "test"
