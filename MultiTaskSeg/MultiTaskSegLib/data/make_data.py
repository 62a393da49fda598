"""Build the three training datasets of the default bundle as nnU-Net v2 folders.

- ``Dataset001_BrainAtlas``: training (imagesTr/labelsTr) the skull-stripped MNI152 and ICBM
  2009c T1 templates and pydeface's whole-head mean T1 (its brain labelled by registration,
  whole_head.py); held out (imagesTs/labelsTs) the ICBM 2009a T1 template. Labels are the
  Desikan-Killiany atlas's six classes (approximate references, see brain_templates). Beside
  them, ``generationTr/`` holds each training case's generation labels, from which training
  synthesises heads and random contrasts on the fly (training/synthetic_cases.py), with the
  settings in dataset.json's ``"multitaskseg": {"synthesis": {...}}``; nnU-Net ignores both.
- ``Dataset002_BreastPhantom``: breast MRI phantoms, label "pectoral muscle".
- ``Dataset003_CoronaryPhantom``: cardiac CTA phantoms, label "coronary arteries".

The phantoms are procedural stand-ins (see ``phantoms``), reproducible from ``seed``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from ..engine.errors import OutputError
from ..engine.progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress
from ..training.cases import GENERATION_DIR
from ..training.datasets import DATASET_JSON, DEFAULT_FILE_ENDING, TaskDataset, load_dataset, write_dataset
from ..training.synthetic_cases import SynthesisSettings
from . import brain_templates, phantoms

TASKS = ("brain", "breast", "coronary")
BRAIN_DATASET = "Dataset001_BrainAtlas"
BREAST_DATASET = "Dataset002_BreastPhantom"
CORONARY_DATASET = "Dataset003_CoronaryPhantom"


def build_training_data(out_dir, n_breast_train: int = 8, n_breast_test: int = 3, n_coronary_train: int = 8,
                        n_coronary_test: int = 3, seed: int = 0, progress: Optional[ProgressCallback] = None,
                        overwrite: bool = False, cancel: Optional[CancelCheck] = None,
                        tasks: Sequence[str] = TASKS, whole_head: bool = True,
                        synthesis: Optional[SynthesisSettings] = None) -> List[TaskDataset]:
    """Write the brain, breast-phantom and coronary-phantom datasets (or those of ``tasks``) under ``out_dir``.

    Phantom case ``i`` of a task uses seed ``seed * 1000 + i`` (training cases first, then
    test cases), so the same arguments give the same files. Existing dataset folders
    raise OutputError unless ``overwrite``. Returns the datasets written, as loaded back.
    ``whole_head`` adds pydeface's head to the brain's training cases (registered once, about a
    minute, then cached: whole_head.cache_dir()); ``synthesis`` overrides the brain dataset's
    synthesis settings. Takes about a minute with the defaults once the head is cached.
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
        "brain": lambda part: write_brain_dataset(out, overwrite, whole_head, synthesis or SynthesisSettings(),
                                                  part, cancel),
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
    spans = {"brain": 0.3, "breast": 0.3, "coronary": 0.4}
    total = sum(spans[task] for task in chosen)
    start, datasets = 0.0, []
    for task in chosen:
        datasets.append(writers[task](sub_progress(progress, start / total, (start + spans[task]) / total)))
        start += spans[task]
    return datasets


def _labels(class_names) -> dict:
    return {name: index for index, name in enumerate(class_names)}


def write_brain_dataset(out: Path, overwrite: bool, whole_head: bool, synthesis: SynthesisSettings,
                        progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None
                        ) -> TaskDataset:
    """The brain dataset with its generation labels (generationTr/) and synthesis settings."""
    generation: Dict[str, tuple] = {}
    names = ["mni152", "icbm2009c"] + (["pydeface_head"] if whole_head else []) + ["icbm2009a"]
    dataset = write_dataset(
        out, BRAIN_DATASET, "MR", _labels(brain_templates.BRAIN_CLASSES),
        _brain_cases(generation, whole_head, sub_progress(progress, 0.0, 0.8)), task="brain", overwrite=overwrite,
        description="T1 brains with approximate Desikan-Killiany atlas labels grouped into six tissue classes. "
        "Training: the skull-stripped MNI152 and ICBM 2009c templates" + (" and pydeface's whole-head mean T1, "
        "its brain labelled by registering MNI152 to it" if whole_head else "") + "; held out: the ICBM 2009a "
        "template. generationTr/ holds generation labels for on-the-fly synthesis (heads, contrasts).",
        progress=None, cancel=cancel, expected_cases=len(names))
    from ..engine import image_writing

    folder = dataset.root / GENERATION_DIR
    folder.mkdir(exist_ok=True)
    for index, (case_id, (reference, labels)) in enumerate(generation.items()):
        check_cancel(cancel)
        image_writing.write_labelmap(labels, reference, folder / f"{case_id}{DEFAULT_FILE_ENDING}", overwrite=True)
        report(progress, 0.8 + 0.2 * (index + 1) / len(generation), f"{BRAIN_DATASET}: generation labels of {case_id}")
    meta_path = dataset.root / DATASET_JSON
    meta = json.loads(meta_path.read_text())
    meta["multitaskseg"]["synthesis"] = asdict(synthesis)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")  # last: without it, training does not synthesise
    return load_dataset(dataset.root)


def _brain_cases(generation: Dict[str, tuple], whole_head: bool,
                 progress: Optional[ProgressCallback]) -> Iterator[tuple]:
    """The brain dataset's cases; training cases' generation labels go into ``generation``."""
    from . import whole_head as head_module

    report(progress, 0.0, "Brain templates")
    for case_id, make in (("mni152", brain_templates.mni152_brain_case),
                          ("icbm2009c", brain_templates.icbm2009c_brain_case)):
        image, labels = make()
        generation[case_id] = (image, brain_templates.generation_labels_on(image))
        yield case_id, _compact(image), labels, "train"
    if whole_head:
        image, labels, head_generation, _ = head_module.whole_head_case(progress=sub_progress(progress, 0.2, 0.9))
        generation["pydeface_head"] = (image, head_generation)
        yield "pydeface_head", _compact(image), labels, "train"
    image, labels = brain_templates.icbm2009a_brain_case()
    yield "icbm2009a", _compact(image), labels, "test"


def _compact(image):
    """Integer-valued templates are stored as int16 (a third of float32's size on disk)."""
    array = image.array
    if np.all(array == np.round(array)) and array.min() >= -32768 and array.max() <= 32767:
        return image.with_array(array.astype(np.int16))
    return image


def _phantom_cases(make_phantom, prefix: str, n_train: int, n_test: int, seed: int) -> Iterator[tuple]:
    for index in range(n_train + n_test):
        image, labels = make_phantom(seed * 1000 + index)
        yield f"{prefix}_{index:03d}", image, labels, "train" if index < n_train else "test"
