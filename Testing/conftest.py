"""Shared fixtures: model bundle files with random weights and small synthetic images on disk.

Two bundles: ``random_bundle_file`` has the paper's architecture (25 layers), for tests of the
bundle format; ``small_bundle_file`` has the same classes, tasks and head but only 4 conv layers
(a 9x9 patch), so tests that run the whole pipeline stay fast on 2 CPU cores. The pipeline does
not depend on the depth (the halo is read from the architecture).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from MultiTaskSegLib.engine.bundle import ModelBundle, make_random_bundle
from MultiTaskSegLib.engine.geometry import Volume
from MultiTaskSegLib.engine.image_writing import write_volume


def small_random_bundle(seed: int = 0) -> ModelBundle:
    """A 4-layer random bundle (see ``make_random_bundle``): the paper's head on a shallow stack, fast."""
    return make_random_bundle(seed, n_layers=4)


@pytest.fixture(scope="session")
def random_bundle_file(tmp_path_factory) -> Path:
    """The paper's architecture with random weights, saved as a .safetensors bundle."""
    return make_random_bundle(seed=1).save(tmp_path_factory.mktemp("models") / "random.safetensors")


@pytest.fixture(scope="session")
def small_bundle_file(tmp_path_factory) -> Path:
    return small_random_bundle(seed=2).save(tmp_path_factory.mktemp("models") / "small.safetensors")


def rotation(axis: int, degrees: float) -> np.ndarray:
    """A rotation matrix about LPS axis 0, 1 or 2."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def synthetic_volume(shape=(9, 14, 12), spacing=(1.3, 0.9, 2.1), direction=None, seed: int = 0) -> Volume:
    """A small anisotropic image: smooth positive intensities with a zero (air) border and a
    zero block inside, so the "intensity > 0" rule has something to do."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    array = (100 + 60 * np.sin(3 * x + 2 * y) * np.cos(2 * z) + rng.normal(0, 5, shape)).astype(np.float32)
    array[:, :2] = 0
    array[1:4, 5:8, 3:6] = -10  # negative values count as outside too
    if direction is None:
        direction = rotation(2, 30) @ rotation(0, 20)
    return Volume(array, spacing, (-20.0, 15.0, 7.5), direction)


@pytest.fixture
def oblique_volume() -> Volume:
    return synthetic_volume()


@pytest.fixture
def image_files(tmp_path) -> list:
    """Three small images on disk: two NIfTI (one oblique), one NRRD."""
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [folder / "case01.nii.gz", folder / "case02.nii.gz", folder / "case03.nrrd"]
    directions = [None, np.eye(3), np.diag([-1.0, 1.0, 1.0])]
    for seed, (path, direction) in enumerate(zip(paths, directions)):
        write_volume(synthetic_volume(direction=direction, seed=seed), path)
    return paths
