"""Training and evaluation cases prepared exactly as segmentation prepares an image, and cached.

A prepared case is on the canonical grid (axis-aligned LPS, isotropic at the in-plane spacing or
the bundle's target spacing), normalised with the modality's rule, with its labels mapped to the
bundle's class indices (every task's background becomes the shared class 0) and the paper's sample
mask, raw intensity > 0 (section 3.2). Preparing is deterministic, so the result is cached as
``.npz`` keyed by the files' size and modification time and the settings.
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
from .datasets import Case, TaskDataset


@dataclass
class PreparedCase:
    case_id: str
    task: str
    image: np.ndarray   # float32 (z, y, x), normalised network input
    labels: np.ndarray  # uint8 (z, y, x), bundle class indices
    mask: np.ndarray    # bool (z, y, x), raw intensity > 0: the voxels that are samples
    spacing: float

    def class_voxels(self, class_index: int) -> np.ndarray:
        """Flat indices of the sample voxels of one class (computed once, then kept)."""
        cache = self.__dict__.setdefault("_class_voxels", {})
        if class_index not in cache:
            cache[class_index] = np.flatnonzero(self.mask & (self.labels == class_index)).astype(np.int64)
        return cache[class_index]


def _cache_key(case: Case, mapping: Mapping[int, int], modality: str, normalization: Mapping,
               target_spacing: Optional[float]) -> str:
    parts = [case.case_id, modality, json.dumps(normalization, sort_keys=True), str(target_spacing),
             json.dumps(sorted(mapping.items()))]
    for path in (case.image_path, case.label_path):
        stat = os.stat(path)
        parts += [str(Path(path).resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def prepare_case(case: Case, dataset: TaskDataset, mapping: Mapping[int, int], normalization: Mapping,
                 target_spacing: Optional[float] = None, cache_dir: Optional[Path] = None) -> PreparedCase:
    """Read, canonicalise, normalise and label-map one case (from the cache when possible)."""
    if case.label_path is None:
        raise InputError(f"Case {case.case_id} of {dataset.name} has no label file; training needs one.")
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(case, mapping, dataset.modality, normalization, target_spacing)
        cache_file = Path(cache_dir) / dataset.name / f"{case.case_id}-{key}.npz"
        if cache_file.exists():
            with np.load(cache_file) as data:
                return PreparedCase(case.case_id, dataset.task, data["image"], data["labels"], data["mask"],
                                    float(data["spacing"]))
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
    prepared = PreparedCase(case.case_id, dataset.task, normalize(raw, dataset.modality, normalization),
                            lookup[np.clip(canonical_labels.array, 0, None)], raw > 0, grid.canonical_spacing)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.stem + f".tmp-{os.getpid()}.npz")
        np.savez(tmp, image=prepared.image, labels=prepared.labels, mask=prepared.mask, spacing=prepared.spacing)
        os.replace(tmp, cache_file)
    return prepared


def prepare_dataset(dataset: TaskDataset, class_names: Sequence[str], normalization: Mapping, split: str = "training",
                    target_spacing: Optional[float] = None, cache_dir: Optional[Path] = None) -> List[PreparedCase]:
    """All cases of one split ("training" or "test") of a dataset, prepared."""
    mapping = dataset.label_mapping(class_names)
    cases = dataset.training if split == "training" else [c for c in dataset.test if c.label_path is not None]
    return [prepare_case(c, dataset, mapping, normalization, target_spacing, cache_dir) for c in cases]


def group_by_task(cases: Sequence[PreparedCase]) -> Dict[str, List[PreparedCase]]:
    grouped: Dict[str, List[PreparedCase]] = {}
    for case in cases:
        grouped.setdefault(case.task, []).append(case)
    return grouped
