"""Canonical grid round trips with oblique, flipped and permuted geometry; input validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from MultiTaskSegLib.engine.errors import InputError
from MultiTaskSegLib.engine.geometry import (Volume, default_target_spacing, from_canonical,
                                      to_canonical, validate_volume)

from support import random_direction


def rotation(angle_x_deg: float, angle_y_deg: float, angle_z_deg: float = 0.0) -> np.ndarray:
    ax, ay, az = np.radians([angle_x_deg, angle_y_deg, angle_z_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = rotation(30, 25)
FLIPPED_PERMUTED = np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], dtype=float)  # i->-P, j->+S, k->-L


def voxel_centres(volume: Volume) -> np.ndarray:
    """LPS position of every voxel, shape (z, y, x, 3)."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in volume.array.shape], indexing="ij")
    return volume.index_to_physical(np.stack([i, j, k], axis=-1))


def physical_centroid(volume: Volume, weights=None) -> np.ndarray:
    weights = volume.array.astype(np.float64) if weights is None else weights
    points = voxel_centres(volume)
    return (points * weights[..., None]).sum(axis=(0, 1, 2)) / weights.sum()


def ball_volume(shape, spacing, direction, centre_lps, radius_mm, origin=None) -> Volume:
    """A volume whose voxels within `radius_mm` of `centre_lps` are 100, others 0."""
    empty = Volume(np.zeros(shape, np.float32), spacing, (0, 0, 0), direction)
    if origin is None:  # put the volume's centre at the physical origin
        centre_index = (np.array(shape[::-1]) - 1) / 2.0
        origin = -empty.index_to_physical(centre_index)
    empty = Volume(empty.array, spacing, origin, direction)
    distance = np.linalg.norm(voxel_centres(empty) - np.asarray(centre_lps), axis=-1)
    return empty.with_array(np.where(distance <= radius_mm, 100.0, 0.0).astype(np.float32))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED_PERMUTED], ids=["oblique", "flipped"])
def test_ball_stays_at_its_physical_place(direction):
    centre = np.array([6.0, -4.0, 3.0])
    volume = ball_volume((16, 40, 36), (0.8, 0.9, 2.5), direction, centre, radius_mm=7.0)
    assert np.linalg.norm(physical_centroid(volume) - centre) < 1.0  # the phantom is right

    canonical, grid = to_canonical(volume)
    assert not grid.is_exact
    np.testing.assert_allclose(canonical.direction, np.eye(3))
    assert canonical.spacing == (0.9, 0.9, 0.9)  # the median spacing
    assert canonical.array.dtype == np.float32
    shift = np.linalg.norm(physical_centroid(canonical) - physical_centroid(volume))
    assert shift < 0.5 * 0.9

    back = from_canonical(canonical.array, grid)
    assert back.shape == volume.array.shape and back.dtype == np.float32
    shift = np.linalg.norm(physical_centroid(volume.with_array(back)) - physical_centroid(volume))
    assert shift < 0.5 * 0.9

    labels = volume.with_array((volume.array > 0).astype(np.uint8))
    canonical_labels, label_grid = to_canonical(labels, interpolation="nearest")
    assert canonical_labels.array.dtype == np.uint8
    assert set(np.unique(canonical_labels.array)) == {0, 1}
    back_labels = from_canonical(canonical_labels.array, label_grid, interpolation="nearest")
    assert back_labels.dtype == np.uint8
    assert dice(back_labels > 0, labels.array > 0) > 0.9


def test_canonical_grid_covers_the_input_and_is_zero_outside():
    volume = Volume(np.ones((10, 12, 14), np.float32), (1.0, 1.0, 1.0), (0, 0, 0), rotation(0, 0, 45))
    canonical, _ = to_canonical(volume)
    # A square rotated by 45 degrees in the axial plane: a bigger box with empty corners.
    assert canonical.array.shape[0] == 10
    assert canonical.array.shape[1] > 12 and canonical.array.shape[2] > 14
    assert canonical.array[:, 0, 0].max() == 0.0
    assert canonical.array[5, canonical.array.shape[1] // 2, canonical.array.shape[2] // 2] == 1.0
    # Its voxel-corner box holds the input's, with less than one voxel to spare on each side.
    input_low, input_high = corner_box(volume)
    low, high = corner_box(canonical)
    assert np.all(low <= input_low + 1e-9) and np.all(high >= input_high - 1e-9)
    assert np.all(input_low - low < 1.0) and np.all(high - input_high < 1.0)


def corner_box(volume: Volume):
    """Physical bounding box of the voxel corners (index -0.5 .. size - 0.5)."""
    size = np.array(volume.array.shape[::-1])
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]) * size - 0.5
    points = volume.index_to_physical(corners)
    return points.min(axis=0), points.max(axis=0)


def test_fast_path_is_a_bit_exact_transpose():
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 3000, size=(7, 9, 11)).astype(np.int16)
    volume = Volume(array, (1.25, 1.25, 1.25), (3.0, -2.0, 40.0), FLIPPED_PERMUTED)
    canonical, grid = to_canonical(volume)
    assert grid.is_exact
    assert canonical.array.dtype == np.int16 and canonical.array.flags.c_contiguous
    # Every input voxel appears, unchanged, at the same physical place on the canonical grid.
    for k, j, i in rng.integers(0, [7, 9, 11], size=(20, 3)):
        point = volume.index_to_physical([i, j, k])
        ci, cj, ck = np.rint(canonical.physical_to_index(point)).astype(int)
        np.testing.assert_allclose(canonical.index_to_physical([ci, cj, ck]), point, atol=1e-9)
        assert canonical.array[ck, cj, ci] == array[k, j, i]
    back = from_canonical(canonical.array, grid)
    assert back.dtype == np.int16 and np.array_equal(back, array)

    channels = np.stack([canonical.array, canonical.array + 1]).astype(np.float32)
    back_channels = from_canonical(channels, grid)
    assert np.array_equal(back_channels[1], array.astype(np.float32) + 1)


def test_canonical_axes_are_superior_posterior_left():
    rng = np.random.default_rng(1)
    array = rng.random((5, 6, 7)).astype(np.float32)
    # RAS-like index axes: i runs to the right (-L), j anterior (-P), k superior.
    ras_like = Volume(array, (1.0, 1.0, 1.0), (0, 0, 0), np.diag([-1.0, -1.0, 1.0]))
    canonical, grid = to_canonical(ras_like)
    assert grid.is_exact
    assert np.array_equal(canonical.array, array[:, ::-1, ::-1])

    # Index axis i along +S, j along +L, k along +P: the array axes are permuted.
    permuted = Volume(array, (1.0, 1.0, 1.0), (0, 0, 0), np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float))
    canonical, _ = to_canonical(permuted)
    # input (k=P, j=L, i=S) -> canonical (z=S, y=P, x=L)
    assert np.array_equal(canonical.array, np.transpose(array, (2, 0, 1)))


def test_canonical_axes_with_resampling_follow_physical_axes():
    # Intensity = physical L coordinate; after resampling it must grow along array axis 2 (x).
    volume = ball_volume((12, 14, 16), (1.0, 1.0, 2.0), OBLIQUE, (0, 0, 0), 1.0)
    volume = volume.with_array(voxel_centres(volume)[..., 0].astype(np.float32) + 100.0)
    canonical, _ = to_canonical(volume)
    centres = voxel_centres(canonical)
    # Linear interpolation reproduces a linear function exactly between input voxel centres.
    ijk = volume.physical_to_index(centres)
    inside = np.all((ijk >= 0) & (ijk <= np.array(volume.array.shape[::-1]) - 1), axis=-1)
    assert inside.sum() > 1000
    np.testing.assert_allclose(canonical.array[inside], centres[..., 0][inside] + 100.0, atol=1e-3)


def test_uint8_probabilities_stay_uint8_and_close():
    volume = ball_volume((10, 20, 20), (1.0, 1.0, 2.0), np.eye(3), (0, 0, 0), 6.0)
    canonical, grid = to_canonical(volume)
    probabilities = np.stack([np.clip(canonical.array * 2.55, 0, 255).astype(np.uint8)] * 2)
    back = from_canonical(probabilities, grid)
    assert back.dtype == np.uint8 and back.shape == (2,) + volume.array.shape
    assert back.max() == 255 and back.min() == 0
    assert dice(back[0] > 127, volume.array > 0) > 0.9


def test_default_target_spacing_is_the_in_plane_size():
    assert default_target_spacing((0.7, 0.7, 3.0)) == pytest.approx(0.7)
    assert default_target_spacing((3.0, 0.5, 0.5)) == pytest.approx(0.5)
    assert default_target_spacing((0.5, 1.0, 2.0)) == pytest.approx(1.0)


@settings(max_examples=25, deadline=None)
@given(spacing=st.tuples(*[st.floats(0.4, 3.0)] * 3),
       origin=st.tuples(*[st.floats(-200, 200)] * 3),
       direction=random_direction(),
       shape=st.tuples(*[st.integers(5, 30)] * 3))
def test_marked_region_survives_the_round_trip(spacing, origin, direction, shape):
    array = np.zeros(shape, np.float32)
    marked = tuple(slice(n // 4, n - n // 4) for n in shape)  # the middle half of every axis
    array[marked] = 1.0
    volume = Volume(array, spacing, origin, direction)
    # The finest input spacing keeps every structure (no subsampling), bounded to keep it fast.
    target = max(min(spacing), (np.prod(np.array(shape) * spacing) * 3 / 2e6) ** (1 / 3))
    canonical, grid = to_canonical(volume, target_spacing=target)
    assert np.allclose(canonical.direction, np.eye(3))
    before = physical_centroid(volume)
    assert np.linalg.norm(physical_centroid(canonical) - before) < target
    back = from_canonical(canonical.array, grid)
    assert back.shape == array.shape
    assert np.linalg.norm(physical_centroid(volume.with_array(back)) - before) < max(spacing)


# ---------------------------------------------------------------------------------------------
# validate_volume


def good_volume(array=None) -> Volume:
    return Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4) if array is None else array)


def test_a_good_volume_passes():
    validate_volume(good_volume())
    validate_volume(good_volume(np.zeros((2, 3, 4), np.uint8)), allow_constant=True)


@pytest.mark.parametrize("array, expected", [
    (np.ones((5, 6), np.float32), "2D"),
    (np.random.default_rng(0).random((3, 5, 6, 7)), "4D"),
    (np.random.default_rng(0).random((8, 9, 10, 3)), "3 components"),
    (np.zeros((0, 5, 6), np.float32), "at least one voxel"),
    (np.full((2, 3, 4), 7.0, np.float32), "constant"),
    (np.array([["a"]], dtype=object).reshape(1, 1, 1), "non-numeric"),
])
def test_validate_volume_rejects(array, expected):
    with pytest.raises(InputError, match=expected):
        validate_volume(good_volume(array))


def test_validate_volume_counts_nan_and_inf():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    array[0, 0, :3] = np.nan
    array[1, 2, 3] = np.inf
    with pytest.raises(InputError, match="contains 4 NaN or infinite"):
        validate_volume(good_volume(array))


def test_validate_volume_rejects_absurd_sizes_with_the_memory_needed():
    huge = np.broadcast_to(np.zeros(1, np.uint8), (2048, 2048, 1024))  # a view: no memory
    with pytest.raises(InputError, match=r"16\.0 GiB"):
        validate_volume(good_volume(huge))
    with pytest.raises(InputError, match=r"float32 copy alone needs 0\.1 MiB.*memory limit"):
        validate_volume(good_volume(np.random.default_rng(0).random((32, 32, 32))),
                        max_memory_bytes=1000)
