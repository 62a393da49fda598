"""Per-modality intensity normalisation: the bundle's rule exactly, the caller's array untouched (it is
computed in place on one copy), and the tissue-mode rule giving the brain the same scale with or
without a head around it."""

import numpy as np
import pytest
from scipy import ndimage

from MultiTaskSegLib.data.phantoms import breast_mri_phantom
from MultiTaskSegLib.engine.bundle import load_bundle, make_random_bundle
from MultiTaskSegLib.engine.errors import InputError
from MultiTaskSegLib.engine.normalization import (
    DEFAULT_NORMALIZATION,
    PERCENTILE_RULE,
    TISSUE_MODE_RULE,
    normalize,
    otsu_threshold,
    tissue_mode,
)

OLD_RULES = {"MR": PERCENTILE_RULE, "CT": DEFAULT_NORMALIZATION["CT"]}


def test_ct_window_maps_hounsfield_units_and_leaves_the_input_alone():
    rule = DEFAULT_NORMALIZATION["CT"]
    hu = np.array([[[-3000, rule["low"], 0, 40, rule["high"], 5000]]], dtype=np.int16)
    before = hu.copy()
    out = normalize(hu, "CT")
    expected = (np.clip(hu.astype(np.float64), rule["low"], rule["high"]) - rule["low"]) / rule["scale"]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32 and np.array_equal(hu, before)


def test_mr_percentile_of_older_bundles_scales_the_foreground_and_leaves_a_float32_input_alone():
    rng = np.random.default_rng(0)
    mr = rng.uniform(1, 1000, (10, 20, 20)).astype(np.float32)
    mr[0] = -5.0  # below zero: clipped to 0, not a sample
    before = mr.copy()
    out = normalize(mr, "MR", OLD_RULES)
    scale = np.percentile(mr[mr > 0], PERCENTILE_RULE["percentile"])
    np.testing.assert_allclose(out, np.clip(mr, 0, None) / scale, rtol=1e-5)
    assert np.array_equal(mr, before) and out is not mr and (out[0] == 0).all()


@pytest.mark.parametrize("rules", [DEFAULT_NORMALIZATION, OLD_RULES])
def test_an_image_without_positive_voxels_is_refused(rules):
    with pytest.raises(InputError, match="no voxel above 0"):
        normalize(np.zeros((3, 3, 3), np.float32), "MR", rules)


def test_new_bundles_use_the_tissue_mode_rule_and_a_bundle_keeps_the_rule_it_was_saved_with(tmp_path):
    assert DEFAULT_NORMALIZATION["MR"]["method"] == "tissue-mode"
    bundle = make_random_bundle(0, n_layers=2)
    assert bundle.normalization["MR"] == TISSUE_MODE_RULE
    bundle.normalization = {"MR": dict(PERCENTILE_RULE), "CT": dict(DEFAULT_NORMALIZATION["CT"])}
    loaded = load_bundle(bundle.save(tmp_path / "old.safetensors"))
    mr = np.random.default_rng(1).uniform(1, 100, (8, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(normalize(mr, "MR", loaded.normalization),
                               mr / np.percentile(mr, PERCENTILE_RULE["percentile"]), rtol=1e-5)


def test_otsu_splits_two_clusters():
    values = np.concatenate([np.full(500, 10.0), np.full(300, 200.0)])
    assert 10.0 < otsu_threshold(values) <= 200.0


def synthetic_brain(size: int = 72, seed: int = 0):
    """A skull-stripped 'brain': a white-matter ellipsoid (intensity ~200) in a grey-matter rind (~160)
    with dark ventricles, zero outside. Returns (image, white matter mask, brain mask)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij")
    radius = np.sqrt((z / 0.7) ** 2 + (y / 0.8) ** 2 + (x / 0.65) ** 2)
    brain, white = radius < 0.8, radius < 0.62
    image = np.where(white, 200.0, np.where(brain, 160.0, 0.0))
    image[(np.abs(x) < 0.08) & (np.abs(y) < 0.25) & (np.abs(z) < 0.15)] = 60.0
    image = image * (1 + 0.03 * rng.standard_normal(image.shape)) * brain
    return image.astype(np.float32), white, brain


def with_head(image, brain):
    """The brain inside a simple head shell: dark CSF and skull, bright scalp fat (1.4x white
    matter), skin; plus faint noise in the air, as scanners deliver it."""
    outside = ndimage.distance_transform_edt(~brain)
    head = image.copy()
    for start, stop, value in [(0, 2, 50), (2, 6, 15), (6, 11, 280), (11, 13, 110)]:
        head[(outside > start) & (outside <= stop)] = value
    rng = np.random.default_rng(5)
    head *= 1 + 0.03 * rng.standard_normal(head.shape).astype(np.float32) * (outside > 0)
    head += rng.uniform(0, 6, head.shape).astype(np.float32) * (outside > 13)
    return head


def test_white_matter_keeps_its_scale_with_a_head_where_the_percentile_rule_darkens_it():
    image, white, brain = synthetic_brain()
    head = with_head(image, brain)
    stripped_wm = np.median(normalize(image, "MR")[white])
    head_wm = np.median(normalize(head, "MR")[white])
    assert stripped_wm == pytest.approx(TISSUE_MODE_RULE["target"], rel=0.03)
    assert head_wm == pytest.approx(stripped_wm, rel=0.02)
    old_stripped, old_head = (np.median(normalize(a, "MR", OLD_RULES)[white]) for a in (image, head))
    assert old_head < 0.85 * old_stripped  # what the new rule is for: the fat sets the old scale


def test_tissue_mode_is_scale_free_and_resolution_free():
    image, white, _ = synthetic_brain(64)
    mode = tissue_mode(image)
    assert tissue_mode(image * 37.0) == pytest.approx(37.0 * mode, rel=1e-3)
    finer = ndimage.zoom(image, 2, order=0)  # 128^3: subsampled to find the mode
    assert tissue_mode(finer) == pytest.approx(mode, rel=0.03)


def test_breast_fat_is_the_reference_tissue_of_a_t1_breast():
    """Fat is the brightest major tissue of a T1 breast; the rule must not switch to the glandular
    tissue from case to case (the most frequent mode did, on dense phantoms)."""
    image, labels = breast_mri_phantom(1002)
    array = image.array.astype(np.float32)
    out = normalize(array, "MR")
    fat = out[(labels == 0) & (array > 700)]
    muscle = out[labels == 1]
    assert np.median(fat) == pytest.approx(TISSUE_MODE_RULE["target"], rel=0.1)
    assert 0.25 < np.median(muscle) < 0.55


def test_tiny_and_two_valued_images_get_a_finite_positive_scale():
    tiny = np.random.default_rng(2).uniform(1, 50, (3, 4, 5)).astype(np.float32)
    two = np.zeros((6, 6, 6), np.float32)
    two[1:5, 1:5, 1:5] = 80.0
    two[2:4, 2:4, 2:4] = 120.0
    for array in (tiny, two):
        out = normalize(array, "MR")
        assert np.isfinite(out).all() and out.max() > 0
