"""Per-modality intensity normalisation: the bundle's rule exactly, and the caller's array untouched
(it is computed in place on one copy)."""

import numpy as np
import pytest

from MultiTaskSegLib.engine.errors import InputError
from MultiTaskSegLib.engine.normalization import DEFAULT_NORMALIZATION, normalize


def test_ct_window_maps_hounsfield_units_and_leaves_the_input_alone():
    rule = DEFAULT_NORMALIZATION["CT"]
    hu = np.array([[[-3000, rule["low"], 0, 40, rule["high"], 5000]]], dtype=np.int16)
    before = hu.copy()
    out = normalize(hu, "CT")
    expected = (np.clip(hu.astype(np.float64), rule["low"], rule["high"]) - rule["low"]) / rule["scale"]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32 and np.array_equal(hu, before)


def test_mr_percentile_scales_the_foreground_and_leaves_a_float32_input_alone():
    rng = np.random.default_rng(0)
    mr = rng.uniform(1, 1000, (10, 20, 20)).astype(np.float32)
    mr[0] = -5.0  # below zero: clipped to 0, not a sample
    before = mr.copy()
    out = normalize(mr, "MR")
    scale = np.percentile(mr[mr > 0], DEFAULT_NORMALIZATION["MR"]["percentile"])
    np.testing.assert_allclose(out, np.clip(mr, 0, None) / scale, rtol=1e-5)
    assert np.array_equal(mr, before) and out is not mr and (out[0] == 0).all()


def test_an_image_without_positive_voxels_is_refused():
    with pytest.raises(InputError, match="no voxel above 0"):
        normalize(np.zeros((3, 3, 3), np.float32), "MR")
