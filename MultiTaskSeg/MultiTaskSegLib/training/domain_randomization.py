"""Random contrast for whole volumes (the intensity half of SynthSeg's recipe, Billot et al.,
Medical Image Analysis 86:102789, 2023).

From a generation label map, every label gets a random intensity distribution (a Gaussian
mixture: one Gaussian per label, its mean and spread drawn per volume), with a smooth texture;
then a multiplicative bias field, a gamma, and noise. Two families of means are drawn:

- "t1": each label's mean within its T1 range relative to white matter (generation_labels),
  jittered, so images look like T1 scans with random tissue contrasts;
- "random": any mean for any label, so the network cannot rely on any one contrast and must
  use shape and context, as SynthSeg argues.

Air (label 0) is either exactly 0, as in zero-filled or skull-stripped images, or low noise,
as around every real head, which makes it a sample (intensity > 0) the network must call
background. Everything runs on the whole volume, so that the bundle's normalisation, which
looks at the whole image, sees what it will see at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from . import generation_labels as gen
from .random_fields import smooth_multiplier


@dataclass(frozen=True)
class ContrastSettings:
    random_share: float = 0.3                # of painted volumes: fully random means (else T1-like)
    spread: Tuple[float, float] = (0.01, 0.08)  # per-label standard deviation, relative to white matter
    texture: float = 0.05                    # smooth within-label variation, relative
    bias: float = 0.3                        # about +-30% multiplicative bias over the head
    bias_wavelength_mm: float = 120.0
    log_gamma: float = 0.25                  # gamma = exp(N(0, log_gamma))
    noise: Tuple[float, float] = (0.0, 0.04)  # noise standard deviation, relative to white matter
    air_noise_share: float = 0.6             # volumes whose air is noise rather than exactly 0


def label_means(codes: Sequence[int], rng: np.random.Generator, kind: str) -> np.ndarray:
    """(256,) mean intensity per generation code, white matter about 1: "t1" or "random"."""
    means = np.zeros(256, np.float32)
    ranges = gen.t1_ranges()
    for code in codes:
        if kind == "t1":
            low, high = ranges[code]
            means[code] = rng.uniform(low, high) * rng.uniform(0.9, 1.1)
        else:
            means[code] = rng.uniform(0.05, 1.3)
    if kind == "random":  # keep the brain's own labels' contrast family loose but white matter near 1
        means[gen.code("cerebral white matter")] = rng.uniform(0.5, 1.3)
    means[gen.code("air")] = 0.0
    return means


def paint_labels(generation: np.ndarray, spacing: Sequence[float], rng: np.random.Generator,
                 kind: str, settings: ContrastSettings = ContrastSettings()) -> np.ndarray:
    """A float32 image with every generation label drawn from its own random Gaussian."""
    codes = [int(c) for c in np.flatnonzero(np.bincount(generation.ravel(), minlength=256))]
    means = label_means(codes, rng, kind)
    spreads = np.zeros(256, np.float32)
    spreads[codes] = rng.uniform(*settings.spread, size=len(codes))
    spreads[gen.code("air")] = 0.0
    image = means[generation]
    image *= smooth_multiplier(rng, generation.shape, spacing, 10.0, settings.texture)
    noise = rng.standard_normal(generation.shape, dtype=np.float32)
    noise *= spreads[generation]
    image += noise
    np.maximum(image, 0.0, out=image)
    return image


def corrupt(image: np.ndarray, air: Optional[np.ndarray], spacing: Sequence[float], rng: np.random.Generator,
            settings: ContrastSettings = ContrastSettings()) -> np.ndarray:
    """Bias field, gamma and noise on a volume; ``air`` (or None) marks the voxels outside the
    head, which become 0 or low noise. float32, in place where it can."""
    out = np.asarray(image, dtype=np.float32)
    out *= smooth_multiplier(rng, out.shape, spacing, settings.bias_wavelength_mm, settings.bias / 2.0)
    np.maximum(out, 0.0, out=out)
    scale = float(np.percentile(out[::7, ::7, ::7], 99.5)) or 1.0
    gamma = float(np.exp(rng.normal(0.0, settings.log_gamma)))
    out /= np.float32(scale)
    np.power(out, np.float32(gamma), out=out)
    out *= np.float32(scale)
    sigma = rng.uniform(*settings.noise) * scale
    if sigma > 0:
        out += np.float32(sigma) * rng.standard_normal(out.shape, dtype=np.float32)
    if air is not None and rng.random() < settings.air_noise_share:
        level = max(sigma, 0.01 * scale) * rng.uniform(0.5, 1.5)
        out[air] = np.abs(np.float32(level) * rng.standard_normal(int(air.sum()), dtype=np.float32))
    elif air is not None:
        out[air] = 0.0
    np.maximum(out, 0.0, out=out)
    return out


def cut_field_of_view(arrays: Sequence[np.ndarray], rng: np.random.Generator, max_fraction: float = 0.25
                      ) -> None:
    """Zero a random slab at one face of the volume (in place): scans cut the neck, the vertex or
    the face off at their field of view's edge."""
    axis, side = int(rng.integers(3)), int(rng.integers(2))
    n = arrays[0].shape[axis]
    cut = int(rng.uniform(0.05, max_fraction) * n)
    index = [slice(None)] * 3
    index[axis] = slice(0, cut) if side == 0 else slice(n - cut, n)
    for array in arrays:
        array[tuple(index)] = 0
