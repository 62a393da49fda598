"""The breast MRI and cardiac CTA phantoms: reproducible, varied, and anatomically sane."""

import numpy as np
import pytest
from scipy import ndimage

from MultiTaskSegLib.data.phantoms import breast_mri_phantom, cardiac_cta_phantom

SMALL_BREAST = (40, 96, 128)
SMALL_CARDIAC = (72, 112, 112)


@pytest.fixture(scope="module")
def breast():
    return breast_mri_phantom(3, shape=SMALL_BREAST)


@pytest.fixture(scope="module")
def cardiac():
    return cardiac_cta_phantom(5, shape=SMALL_CARDIAC, return_anatomy=True)


@pytest.mark.parametrize("make, shape", [(breast_mri_phantom, SMALL_BREAST), (cardiac_cta_phantom, SMALL_CARDIAC)])
def test_same_seed_same_case_other_seed_other_anatomy(make, shape):
    image_a, labels_a = make(11, shape=shape)
    image_b, labels_b = make(11, shape=shape)
    image_c, labels_c = make(12, shape=shape)
    np.testing.assert_array_equal(image_a.array, image_b.array)
    np.testing.assert_array_equal(labels_a, labels_b)
    overlap = 2 * (labels_a & labels_c).sum() / (labels_a.sum() + labels_c.sum())
    assert overlap < 0.8, "a different seed should draw different anatomy"


def test_breast_geometry_and_dtype(breast):
    image, labels = breast
    assert image.array.shape == labels.shape == SMALL_BREAST
    assert image.array.dtype == np.int16 and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1}
    np.testing.assert_allclose(image.direction, np.eye(3))
    assert image.spacing == pytest.approx((1.3, 1.3, 1.3))


def test_pectoral_band_thickness_in_range(breast):
    image, labels = breast
    spacing = image.spacing[1]
    # Thickness along y (anterior-posterior) of each column through the muscle, away from its tapered ends.
    column_thickness = labels.sum(axis=1) * spacing
    central = column_thickness[:, 20:-20][column_thickness[:, 20:-20] > 0]
    assert 5.0 <= np.median(central) <= 16.0
    assert central.max() <= 30.0  # along y a tilted band looks thicker than its normal thickness
    # One band per side, each a single piece.
    _, components = ndimage.label(labels)
    assert components <= 2


def test_pectoral_muscle_lies_behind_the_breasts_and_matches_glandular_intensity(breast):
    image, labels = breast
    array = image.array.astype(float)
    muscle_y = np.argwhere(labels)[:, 1].mean()
    bright_fat = array > 700
    assert np.argwhere(bright_fat)[:, 1].mean() < muscle_y, "breasts (fat) must be anterior (low y) of the muscle"
    muscle_median = np.median(array[labels == 1])
    assert 200 < muscle_median < 500
    # Tissue of similar intensity exists outside the label (glandular tissue, chest wall).
    similar = (np.abs(array - muscle_median) < 60) & (labels == 0)
    assert similar.sum() > labels.sum()


def test_breast_air_is_dark_but_not_zero(breast):
    image, _ = breast
    air = image.array[:, :3, :]  # the anterior rows are air
    assert np.median(air) < 80
    assert (air > 0).mean() > 0.9


def test_coronary_label_small_bright_and_on_the_heart(cardiac):
    image, labels, anatomy = cardiac
    array = image.array.astype(float)
    fraction = labels.mean()
    assert 2e-4 < fraction < 1e-2
    assert np.percentile(array[labels == 1], 90) > 280
    # The tubes run in epicardial fat: much of their immediate surroundings is fat, not blood or muscle.
    surroundings = ndimage.binary_dilation(labels, iterations=2) & ~labels.astype(bool)
    assert np.mean(array[surroundings] < 0) > 0.35
    # Nearly all coronary voxels run within a few mm of the epicardium.
    distance_mm = ndimage.distance_transform_edt(~anatomy["heart"], sampling=image.spacing[0])
    assert np.mean(distance_mm[labels == 1] < 6.0) > 0.9


def test_coronary_trees_start_at_the_aorta(cardiac):
    image, labels, anatomy = cardiac
    components, count = ndimage.label(labels, np.ones((3, 3, 3)))
    near_aorta = ndimage.binary_dilation(anatomy["aorta"], iterations=2)
    touching = np.unique(components[near_aorta & (components > 0)])
    sizes = np.bincount(components.ravel())
    # The left and right trees leave the aortic root; pieces cut off by the field of view are small.
    assert len(touching) >= 2
    assert sizes[touching].sum() > 0.8 * labels.sum()


def test_cardiac_intensities_are_hounsfield_units(cardiac):
    image, labels, anatomy = cardiac
    array = image.array.astype(float)
    assert -1100 < array.min() < -700
    aorta_core = ndimage.binary_erosion(anatomy["aorta"], iterations=3)  # away from partial-volume walls
    assert 320 < np.median(array[aorta_core]) < 480
    myocardium = anatomy["heart"] & ~anatomy["blood_pool"]
    assert 40 < np.median(array[myocardium]) < 160
    assert 10 < array[aorta_core].std() < 50  # the noise
