"""Segmenter: image in, ProbabilityMaps on the image's own grid out.

Runs a 4-layer random bundle (see conftest) so every test takes well under a second or two;
what is tested (grids, the intensity > 0 rule, determinism, class selection) does not depend on
the depth of the network.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MultiTaskSegLib.engine.bundle import load_bundle
from MultiTaskSegLib.engine.errors import Cancelled, InputError
from MultiTaskSegLib.engine.geometry import Volume
from MultiTaskSegLib.engine.devices import resolve_device
from MultiTaskSegLib.engine.segmenter import Segmenter
from MultiTaskSegLib.engine.labelmap_rule import ProbabilityMaps

from conftest import synthetic_volume

# The smallest non-zero threshold: keeps every voxel with any probability of the class at all.
LOWEST_THRESHOLD = 1 / 255


@pytest.fixture(scope="module")
def segmenter(small_bundle_file):
    return Segmenter(load_bundle(small_bundle_file), device="cpu")


@pytest.fixture(scope="module")
def oblique_maps(segmenter):
    volume = synthetic_volume()
    return volume, segmenter.predict(volume)


def test_probabilities_come_back_on_the_input_grid_of_an_oblique_anisotropic_volume(oblique_maps):
    volume, maps = oblique_maps
    assert isinstance(maps, ProbabilityMaps)
    assert maps.data.dtype == np.uint8
    assert maps.data.shape == (9,) + volume.array.shape
    inside = volume.array > 0
    total = maps.data[:, inside].astype(np.int32).sum(axis=0)
    assert np.all(np.abs(total - 255) <= 9)  # probabilities sum to 1, up to rounding of 9 channels
    labels = maps.labelmap()
    assert labels.shape == volume.array.shape
    assert len(np.unique(labels[inside])) >= 2  # random weights still give varied answers


def test_voxels_with_intensity_zero_or_below_are_background(oblique_maps):
    volume, maps = oblique_maps
    outside = volume.array <= 0
    assert outside.sum() > 50 and (volume.array < 0).any()
    assert np.all(maps.data[0, outside] == 255)
    assert np.all(maps.data[1:, outside] == 0)
    low = {"pectoral muscle": LOWEST_THRESHOLD, "coronary arteries": LOWEST_THRESHOLD}
    for thresholds in (None, low):
        labels = maps.labelmap(thresholds)
        assert np.all(labels[outside] == 0)
        assert np.any(labels[~outside] != 0)


def test_the_same_image_stored_flipped_gives_the_same_physical_answer(segmenter):
    """Flipping the i axis of the array and the direction (origin at the other end) describes the
    same physical image: the probabilities must come back flipped, i.e. at the same places."""
    volume = synthetic_volume()
    nx = volume.array.shape[2]
    flipped_direction = volume.direction.copy()
    flipped_direction[:, 0] *= -1
    far_end = volume.index_to_physical([nx - 1, 0, 0])
    flipped = Volume(volume.array[:, :, ::-1].copy(), volume.spacing, far_end, flipped_direction)
    a = segmenter.predict(volume).data.astype(np.int16)
    b = segmenter.predict(flipped).data[:, :, :, ::-1].astype(np.int16)
    assert np.max(np.abs(a - b)) <= 2  # float rounding in resampling, then uint8 rounding


def test_the_same_input_twice_gives_the_identical_labelmap(segmenter, oblique_maps):
    volume, first = oblique_maps
    second = segmenter.predict(synthetic_volume())
    assert np.array_equal(first.data, second.data)
    assert np.array_equal(first.labelmap(), second.labelmap())


def test_a_subset_of_classes_labels_only_those(segmenter, oblique_maps):
    volume, everything = oblique_maps
    subset = segmenter.predict(volume, ["white matter", "Pectoral Muscle"])
    assert subset.selected == (1, 7)
    assert np.array_equal(subset.data, everything.data)  # selection changes labelling, not probabilities
    labels = subset.labelmap({"pectoral muscle": 0.3})
    assert set(np.unique(labels).tolist()) <= {0, 1, 7}
    # White matter only where it wins the argmax over all brain tissues (not grown into others),
    # and only where the pectoral muscle does not pass its threshold.
    argmax = everything.argmax_labels()
    assert np.all(argmax[labels == 1] == 1)
    assert np.all(subset.channel(7)[labels == 1] < round(0.3 * 255))
    assert np.all(subset.channel(7)[labels == 7] >= round(0.3 * 255))


def test_unknown_or_background_classes_are_refused(segmenter, oblique_maps):
    volume, _ = oblique_maps
    with pytest.raises(InputError, match="no class 'liver'"):
        segmenter.predict(volume, ["liver"])
    with pytest.raises(InputError, match="Background"):
        segmenter.predict(volume, ["background"])


def test_cancel_stops_before_anything_is_returned(segmenter):
    with pytest.raises(Cancelled):
        segmenter.predict(synthetic_volume(), cancel=lambda: True)


def test_progress_reports_stages_from_0_to_1(segmenter):
    reports = []
    segmenter.predict(synthetic_volume(shape=(5, 6, 7)), progress=lambda f, s: reports.append((f, s)))
    fractions = [f for f, _ in reports]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert all(isinstance(stage, str) and stage for _, stage in reports)


def test_constant_image_is_refused_with_advice(segmenter):
    with pytest.raises(InputError, match="constant"):
        segmenter.predict(Volume(np.full((4, 5, 6), 7.0, dtype=np.float32)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_says_what_to_do():
    with pytest.raises(InputError, match="--device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_dilated_by_one_voxel_is_the_3x3x3_cube_dilation():
    from scipy import ndimage

    from MultiTaskSegLib.engine.segmenter import dilated_by_one_voxel

    mask = np.random.default_rng(0).random((7, 9, 8)) > 0.93
    expected = ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool))
    np.testing.assert_array_equal(dilated_by_one_voxel(mask), expected)
    assert not dilated_by_one_voxel(np.zeros((3, 3, 3), bool)).any()
