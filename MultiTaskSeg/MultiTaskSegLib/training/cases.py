"""Training and evaluation cases prepared exactly as segmentation prepares an image, and cached.

A prepared case is on the canonical grid (axis-aligned LPS, isotropic at the in-plane spacing or
the bundle's target spacing), normalised with the modality's rule, with its labels mapped to the
bundle's class indices (every task's background becomes the shared class 0) and the paper's sample
mask, raw intensity > 0 (section 3.2). Preparing is deterministic, so the result is cached as
``.npz`` keyed by the files' size and modification time and the settings.

A training case with generation labels (``generationTr/<case><file_ending>`` beside
``labelsTr/``, written by ``multitaskseg make-data`` for the brain) also carries what synthesis
needs (``PreparedCase.synthesis``: its raw canonical image, generation labels and the settings of
dataset.json's ``"multitaskseg": {"synthesis": {...}}``); the sampler then trains on volumes
synthesised from it (synthetic_cases) instead of on the image itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..engine.errors import InputError
from ..engine.geometry import to_canonical
from ..engine.image_reading import read_volume
from ..engine.normalization import normalize
from . import generation_labels as gen
from .datasets import DATASET_JSON, TASK_CLASS_NAMES, Case, TaskDataset
from .synthetic_cases import SynthesisSettings, SynthesisSource

GENERATION_DIR = "generationTr"
# generation labels' training classes are these, in this order (generation_labels.py)
GENERATION_CLASSES = ("background",) + TASK_CLASS_NAMES["brain"]


@dataclass
class PreparedCase:
    case_id: str
    task: str
    image: np.ndarray   # float32 (z, y, x), normalised network input
    labels: np.ndarray  # uint8 (z, y, x), bundle class indices
    mask: np.ndarray    # bool (z, y, x), raw intensity > 0: the voxels that are samples
    spacing: float
    synthesis: Optional[SynthesisSource] = None  # set when training synthesises volumes from this case

    def class_voxels(self, class_index: int) -> np.ndarray:
        """Flat indices of the sample voxels of one class (computed once, then kept)."""
        cache = self.__dict__.setdefault("_class_voxels", {})
        if class_index not in cache:
            # int32 halves the memory of a whole head's background (10 million voxels) in every worker
            index_type = np.int32 if self.labels.size < 2 ** 31 else np.int64
            cache[class_index] = np.flatnonzero(self.mask & (self.labels == class_index)).astype(index_type)
        return cache[class_index]


def _cache_key(case: Case, mapping: Mapping[int, int], modality: str, normalization: Mapping,
               target_spacing: Optional[float], generation: Optional[Path] = None) -> str:
    parts = [case.case_id, modality, json.dumps(normalization, sort_keys=True), str(target_spacing),
             json.dumps(sorted(mapping.items()))]
    for path in (case.image_path, case.label_path) + ((generation,) if generation else ()):
        stat = os.stat(path)
        parts += [str(Path(path).resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def generation_path(case: Case, dataset: TaskDataset) -> Optional[Path]:
    """The case's generation labels (``generationTr/<case><file_ending>``), if the dataset has them."""
    path = dataset.root / GENERATION_DIR / f"{case.case_id}{dataset.file_ending}"
    return path if path.is_file() else None


def synthesis_settings(dataset: TaskDataset) -> SynthesisSettings:
    """dataset.json's ``"multitaskseg": {"synthesis": {...}}``, defaults where it says nothing."""
    try:
        extra = json.loads((dataset.root / DATASET_JSON).read_text()).get("multitaskseg") or {}
    except (OSError, ValueError):
        extra = {}
    return SynthesisSettings.from_mapping(extra.get("synthesis") if isinstance(extra, dict) else None)


def _class_of_code(dataset: TaskDataset, mapping: Mapping[int, int]) -> np.ndarray:
    """Generation code -> bundle class index, through the dataset's label of each training class."""
    by_name = {name.strip().lower(): value for name, value in dataset.labels.items()}
    missing = [name for name in GENERATION_CLASSES if name not in by_name]
    if missing:
        raise InputError(f"{dataset.root} has {GENERATION_DIR}/ but no label(s) {missing} in {DATASET_JSON}: "
                         f"generation labels are for the brain task's classes {list(GENERATION_CLASSES)}.")
    bundle_index = np.array([mapping[by_name[name]] for name in GENERATION_CLASSES], np.uint8)
    return bundle_index[gen.training_lookup()]


def _prepared(arrays: Mapping[str, np.ndarray], case: Case, dataset: TaskDataset, mapping, normalization,
              with_synthesis: bool) -> PreparedCase:
    synthesis = None
    if with_synthesis:
        synthesis = SynthesisSource(arrays["raw"], arrays["generation"], _class_of_code(dataset, mapping),
                                    dataset.modality, dict(normalization), synthesis_settings(dataset))
    return PreparedCase(case.case_id, dataset.task, arrays["image"], arrays["labels"], arrays["mask"],
                        float(arrays["spacing"]), synthesis)


def prepare_case(case: Case, dataset: TaskDataset, mapping: Mapping[int, int], normalization: Mapping,
                 target_spacing: Optional[float] = None, cache_dir: Optional[Path] = None,
                 synthesis: bool = False) -> PreparedCase:
    """Read, canonicalise, normalise and label-map one case (from the cache when possible); with
    ``synthesis`` and generation labels on disk, keep what synthesis needs as well."""
    if case.label_path is None:
        raise InputError(f"Case {case.case_id} of {dataset.name} has no label file; training needs one.")
    generation_file = generation_path(case, dataset) if synthesis else None
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(case, mapping, dataset.modality, normalization, target_spacing, generation_file)
        cache_file = Path(cache_dir) / dataset.name / f"{case.case_id}-{key}.npz"
        if cache_file.exists():
            with np.load(cache_file) as data:
                return _prepared(dict(data), case, dataset, mapping, normalization, generation_file is not None)
    image = read_volume(case.image_path)
    labels = read_volume(case.label_path)
    if labels.array.shape != image.array.shape:
        raise InputError(f"{case.label_path} has shape {labels.array.shape} but its image {case.image_path} has "
                         f"{image.array.shape}: labels must be on the image's grid.")
    canonical, grid = to_canonical(image, target_spacing)
    canonical_labels, _ = to_canonical(labels.with_array(labels.array.astype(np.int32)), grid.canonical_spacing,
                                       interpolation="nearest")
    lookup = np.zeros(int(max(max(mapping), canonical_labels.array.max())) + 1, dtype=np.uint8)
    for value, index in mapping.items():
        lookup[value] = index
    raw = canonical.array
    arrays = {"image": normalize(raw, dataset.modality, normalization),
              "labels": lookup[np.clip(canonical_labels.array, 0, None)], "mask": raw > 0,
              "spacing": np.float64(grid.canonical_spacing)}
    if generation_file is not None:
        generation = read_volume(generation_file)
        if generation.array.shape != image.array.shape:
            raise InputError(f"{generation_file} has shape {generation.array.shape} but its image has "
                             f"{image.array.shape}: generation labels must be on the image's grid.")
        arrays["raw"] = raw.astype(np.float32)
        arrays["generation"] = to_canonical(generation.with_array(generation.array.astype(np.int32)),
                                            grid.canonical_spacing, interpolation="nearest")[0].array.astype(np.uint8)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.stem + f".tmp-{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, cache_file)
    return _prepared(arrays, case, dataset, mapping, normalization, generation_file is not None)


def prepare_dataset(dataset: TaskDataset, class_names: Sequence[str], normalization: Mapping, split: str = "training",
                    target_spacing: Optional[float] = None, cache_dir: Optional[Path] = None) -> List[PreparedCase]:
    """All cases of one split ("training" or "test") of a dataset, prepared; training cases with
    generation labels carry what synthesis needs."""
    mapping = dataset.label_mapping(class_names)
    cases = dataset.training if split == "training" else [c for c in dataset.test if c.label_path is not None]
    return [prepare_case(c, dataset, mapping, normalization, target_spacing, cache_dir, synthesis=split == "training")
            for c in cases]


def group_by_task(cases: Sequence[PreparedCase]) -> Dict[str, List[PreparedCase]]:
    grouped: Dict[str, List[PreparedCase]] = {}
    for case in cases:
        grouped.setdefault(case.task, []).append(case)
    return grouped
