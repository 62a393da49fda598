"""Whole training volumes synthesised on the fly from a case's generation labels.

A case that carries generation labels (``PreparedCase.synthesis``, from a dataset's
``generationTr/`` folder) is not shown to the network as it is. Each time its turn comes, a new
volume is made from it:

1. if it is a brain without a head, a random synthetic head around it (``head_share`` of the
   time: users load skull-stripped brains too);
2. its contrast: its real T1 intensities (``real_share`` of the volumes, the head painted with
   T1 intensities relative to the brain's white matter), else every generation label painted
   from a random Gaussian (domain_randomization), T1-like or fully random;
3. a bias field, a gamma and noise; air that is 0 or noise; sometimes a field of view that cuts
   the head off at one side;
4. the bundle's normalisation on the whole volume, the sample mask (intensity > 0) and the
   training labels mapped to the bundle's classes.

The sampler then draws ``blocks_per_volume`` blocks from that volume (each through its own random
pose and resolution, spatial_randomization) before the case's next volume is made, which spreads
the seconds one volume takes over many blocks. Deterministic by the random generator given.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Mapping, Optional

import numpy as np

from ..engine.geometry import Volume
from ..engine.normalization import normalize
from . import generation_labels as gen
from .domain_randomization import ContrastSettings, corrupt, cut_field_of_view, paint_labels
from .head_synthesis import add_synthetic_head

# generation codes that only a head has (a brain-only label map has none of them)
_HEAD_CODES = np.array([label.code for label in gen.GENERATION_LABELS if label.code > gen.code("extra-cerebral CSF")])


@dataclass(frozen=True)
class SynthesisSettings:
    real_share: float = 0.5        # volumes in their real contrast (else painted from the labels)
    head_share: float = 0.7        # brains without a head that get a synthetic one
    fov_share: float = 0.25        # volumes cut by a field of view's edge
    blocks_per_volume: int = 24    # blocks drawn from one volume before the next is made

    @classmethod
    def from_mapping(cls, values: Optional[Mapping]) -> "SynthesisSettings":
        """Settings from a dataset.json entry; unknown keys are ignored, missing ones default."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})


@dataclass
class SynthesisSource:
    """What a case needs to be synthesised: its canonical raw image and generation labels, the
    bundle class of every generation code, and the normalisation it must end with."""

    raw: np.ndarray               # float32 (z, y, x), raw intensities on the canonical grid
    generation: np.ndarray        # uint8 (z, y, x), generation labels on the same grid
    class_of_code: np.ndarray     # (256,) uint8: generation code -> bundle class index
    modality: str
    normalization: Mapping
    settings: SynthesisSettings = SynthesisSettings()


def has_head(generation: np.ndarray) -> bool:
    present = np.flatnonzero(np.bincount(generation.ravel(), minlength=256))
    return bool(np.isin(present, _HEAD_CODES).any())


def synthesize(case, rng: np.random.Generator, contrast: ContrastSettings = ContrastSettings()):
    """A new random volume (a PreparedCase) from ``case``, which must carry ``synthesis``."""
    from .cases import PreparedCase

    source: SynthesisSource = case.synthesis
    settings = source.settings
    spacing = (case.spacing,) * 3
    generation, raw = source.generation, source.raw
    real = rng.random() < settings.real_share
    head_present = has_head(generation)
    if not head_present and rng.random() < settings.head_share:
        volume, _, generation = add_synthetic_head(Volume(raw, spacing), generation, int(rng.integers(2 ** 31)),
                                                   paint=real)
        raw, head_present = volume.array, True
    if real:
        image = np.array(raw, dtype=np.float32)
    else:
        kind = "random" if rng.random() < contrast.random_share else "t1"
        image = paint_labels(generation, spacing, rng, kind, contrast)
    air = None  # a real head keeps its own air
    if head_present and not (real and has_head(source.generation)):
        air = generation == gen.code("air")  # 0 or noise, at random
    image = corrupt(image, air, spacing, rng, contrast)
    if not head_present:
        image[generation == gen.code("air")] = 0.0  # a skull-stripped brain stays stripped
    if rng.random() < settings.fov_share:
        cut_field_of_view([image], rng)
    labels = source.class_of_code[generation]
    return PreparedCase(f"{case.case_id}~synthetic", case.task, normalize(image, source.modality, source.normalization),
                        labels, image > 0, case.spacing)


class SyntheticPool:
    """The current synthetic volume of every case that has one, remade every ``blocks_per_volume``
    draws. Cases without ``synthesis`` pass through unchanged."""

    def __init__(self) -> None:
        self._current: Dict[int, list] = {}

    def volume(self, case, rng: np.random.Generator):
        if getattr(case, "synthesis", None) is None:
            return case
        entry = self._current.get(id(case))
        if entry is None or entry[1] <= 0:
            entry = [synthesize(case, rng), case.synthesis.settings.blocks_per_volume]
            self._current[id(case)] = entry
        entry[1] -= 1
        return entry[0]
