"""The device path (everything on the GPU from the read to the labelmap) computes what the host path
computes: same canonical grid, the same resampled voxels to float rounding, the same masks,
normalisation, labelmap rule and, in the end, the same probabilities and labels.

Stated tolerances, on small volumes with oblique and flipped direction matrices and anisotropic
spacing: canonical intensities within 1e-5 of the image's largest magnitude; uint8 probabilities
brought back within 1 (255 = 1) everywhere; end to end in fp32, probabilities within 1 and labels
equal on >= 99.9% of voxels; in bf16 (chaotic random network, inputs differing by float rounding)
labels equal on >= 99.5%. CI runs them on the CPU (the same torch code); they run on a GPU too
where PyTorch sees one.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from MultiTaskSegLib.engine import device_segmentation, segmenter as segmenter_module
from MultiTaskSegLib.engine.device_segmentation import (argmax_labels_on_device, background_outside_on_device,
                                                        normalize_on_device)
from MultiTaskSegLib.engine.geometry import Volume, from_canonical, to_canonical
from MultiTaskSegLib.engine.labelmap_rule import ProbabilityMaps, background_outside
from MultiTaskSegLib.engine.network import dense_logits
from MultiTaskSegLib.engine.normalization import DEFAULT_NORMALIZATION, PERCENTILE_RULE, normalize
from MultiTaskSegLib.engine.prepared_model import inference_model
from MultiTaskSegLib.engine.samples import NOISE_FLOOR, sample_voxels, zero_interpolation_noise
from MultiTaskSegLib.engine.segmenter import Segmenter
from MultiTaskSegLib.engine.slab_loop import dense_probabilities, dense_probabilities_on_device
from MultiTaskSegLib.engine.slab_sizing import DenseOptions
from MultiTaskSegLib.engine.torch_resampling import canonical_grid, from_canonical_on_device, to_canonical_on_device

from conftest import rotation, small_random_bundle, synthetic_volume

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLIPPED_PERMUTATION = np.diag([-1.0, 1.0, -1.0])[:, [1, 0, 2]]
GEOMETRIES = {  # direction, spacing (x, y, z)
    "oblique, anisotropic": (rotation(2, 30) @ rotation(0, 20), (1.3, 0.9, 2.1)),
    "oblique, flipped, anisotropic": (rotation(1, 35) @ np.diag([1.0, -1.0, -1.0]), (0.7, 0.7, 1.5)),
    "flipped, anisotropic": (np.diag([-1.0, 1.0, -1.0]), (0.8, 0.8, 1.6)),
    "flipped permutation, isotropic (exact)": (FLIPPED_PERMUTATION, (1.0, 1.0, 1.0)),
}


def volume_for(name: str, shape=(17, 26, 23)) -> Volume:
    direction, spacing = GEOMETRIES[name]
    return synthetic_volume(shape=shape, spacing=spacing, direction=direction)


def varied_bundle(volume: Volume, seed: int = 3):
    """A random 4-layer bundle whose output bias is centred on ``volume``, so that every class wins
    somewhere (a random network's raw output is one class nearly everywhere: agreement would be
    trivial)."""
    bundle = small_random_bundle(seed)
    logits = dense_logits(bundle.model, normalize(volume.array, "MR"))
    with torch.no_grad():
        bundle.model.head[-1].bias.sub_(torch.from_numpy(logits[:, volume.array > 0].mean(axis=1)))
    return bundle


@pytest.mark.parametrize("name", GEOMETRIES)
def test_the_canonical_grid_is_geometrys(name):
    volume = volume_for(name)
    _, expected = to_canonical(volume)
    grid = canonical_grid(volume)
    assert grid.canonical_shape == expected.canonical_shape
    np.testing.assert_allclose(grid.canonical_origin, expected.canonical_origin, rtol=0, atol=1e-9)
    assert grid.canonical_spacing == expected.canonical_spacing
    assert (grid.axis_permutation, grid.axis_flips) == (expected.axis_permutation, expected.axis_flips)
    assert grid.is_exact == name.endswith("(exact)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GEOMETRIES)
def test_resampling_both_ways_matches_simpleitk(name, device):
    volume = volume_for(name)
    volume = Volume((volume.array * 100).astype(np.int16), volume.spacing, volume.origin, volume.direction)
    expected, grid = to_canonical(volume)
    canonical = to_canonical_on_device(torch.from_numpy(volume.array).to(device), grid).cpu().numpy()
    assert canonical.shape == expected.array.shape
    if grid.is_exact:  # a transpose/flip: bit-identical, voxel type kept
        assert canonical.dtype == np.int16 and np.array_equal(canonical, expected.array)
    else:
        scale = np.abs(volume.array).max()
        assert np.abs(canonical - expected.array).max() <= 1e-5 * scale
        # float noise aside, the same voxels are > 0 (the sample rule reads that)
        denoised = zero_interpolation_noise(expected.array.copy())
        assert np.array_equal(zero_interpolation_noise(canonical) > 0, denoised > 0)
    maps = np.random.default_rng(0).integers(0, 256, (3,) + grid.canonical_shape).astype(np.uint8)
    back = from_canonical_on_device(torch.from_numpy(maps).to(device), grid).cpu().numpy()
    reference = from_canonical(maps, grid)
    assert back.dtype == np.uint8 and back.shape == reference.shape
    difference = np.abs(back.astype(int) - reference.astype(int))
    assert difference.max() <= 1  # exact ties between two levels may round either way
    assert (difference == 0).mean() >= 0.999


def test_interpolation_noise_counts_as_zero_and_the_mask_grows_by_one_voxel():
    canonical = np.zeros((5, 5, 5), np.float32)
    canonical[2, 2, 2] = 100.0
    canonical[0, 0, 0] = 100.0 * NOISE_FLOOR / 2  # float noise beside an air voxel
    canonical[4, 4, 4] = -3e-13
    zero_interpolation_noise(canonical)
    assert canonical[0, 0, 0] == 0 and canonical[4, 4, 4] == 0 and canonical[2, 2, 2] == 100
    assert sample_voxels(canonical, interpolated=False).sum() == 1
    grown = sample_voxels(canonical, interpolated=True)
    assert grown.sum() == 27 and grown[1:4, 1:4, 1:4].all()
    on_torch = sample_voxels(torch.from_numpy(canonical), interpolated=True).numpy()
    assert np.array_equal(on_torch, grown)


@pytest.mark.parametrize("device", DEVICES)
def test_normalisation_on_the_device_is_the_hosts(device):
    rng = np.random.default_rng(1)
    mr = np.where(rng.random((20, 24, 22)) < 0.8, rng.normal(500, 150, (20, 24, 22)), 0).astype(np.float32)
    ct = rng.normal(-200, 700, (12, 14, 16)).astype(np.float32)
    settings = dict(DEFAULT_NORMALIZATION, percentile=PERCENTILE_RULE)
    for modality, image in (("MR", mr), ("CT", ct), ("percentile", mr)):
        on_device = normalize_on_device(torch.from_numpy(image).to(device), modality, settings).cpu().numpy()
        np.testing.assert_allclose(on_device, normalize(image, modality, settings), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_dense_pass_on_the_device_is_the_hosts(device, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 means fp32 on Ampere and later too
    model = small_random_bundle(seed=5).model
    volume = np.random.default_rng(2).normal(0.4, 0.5, (9, 12, 10)).astype(np.float32)
    mask = volume > 0
    host = dense_probabilities(inference_model(model, "fp32", "cpu"), volume, mask, "cpu", DenseOptions())
    prepared = inference_model(model, "fp32", device)
    on_device = dense_probabilities_on_device(prepared, torch.from_numpy(volume).to(device),
                                              torch.from_numpy(mask).to(device), DenseOptions())
    assert on_device.device.type == device
    assert np.abs(on_device.cpu().numpy().astype(int) - host.astype(int)).max() <= (0 if device == "cpu" else 2)


@pytest.mark.parametrize("device", DEVICES)
def test_labelmap_rule_on_the_device_is_the_hosts(device):
    classes = small_random_bundle(seed=0).classes  # six argmax classes, two thresholded ones
    rng = np.random.default_rng(3)
    data = rng.integers(0, 6, (len(classes), 7, 8, 9)).astype(np.uint8) * 51  # coarse levels: many ties
    inside = rng.random((7, 8, 9)) < 0.7
    on_device = background_outside_on_device(torch.from_numpy(data).to(device), torch.from_numpy(inside).to(device))
    data = background_outside(data, inside)
    assert np.array_equal(on_device.cpu().numpy(), data)
    for selected in (None, [2], [1, 3, 7], [8]):
        expected = ProbabilityMaps(data, classes, selected).argmax_labels()
        labels = argmax_labels_on_device(on_device, classes, ProbabilityMaps(data, classes, selected).selected)
        labels = labels.cpu().numpy()
        assert np.array_equal(labels, expected), selected


@pytest.mark.parametrize("name, precision, agreement, shape", [
    # this one's canonical voxels on the air border's zeros come out of SimpleITK as ~1e-13
    ("oblique, flipped, anisotropic", "fp32", 0.999, (17, 26, 23)),
    ("oblique, anisotropic", "bf16", 0.995, (13, 18, 16)),
    ("flipped permutation, isotropic (exact)", "fp32", 1.0, (13, 18, 16)),
])
def test_the_device_path_segments_as_the_host_path(name, precision, agreement, shape):
    volume = volume_for(name, shape)
    bundle = varied_bundle(volume)
    for device in DEVICES:
        host = Segmenter(bundle, "cpu", precision=precision, keep_on_device=False).predict(volume)
        on_device = Segmenter(bundle, device, precision=precision if device == "cpu" else "fp16",
                              keep_on_device=True).predict(volume)
        labels = host.labelmap()
        assert len(np.unique(labels)) >= 5, "a near-constant output would make agreement meaningless"
        assert (on_device.labelmap() == labels).mean() >= (agreement if device == "cpu" else 0.99)
        assert np.array_equal(on_device.argmax_labels(), ProbabilityMaps(on_device.data, bundle.classes).argmax_labels())
        difference = np.abs(on_device.data.astype(int) - host.data.astype(int))
        if precision == "fp32" and device == "cpu":
            assert difference.max() <= 1
        assert np.all(on_device.data[0][volume.array <= 0] == 255)


def test_the_device_path_is_taken_on_gpus_only_unless_asked_for():
    bundle = small_random_bundle(seed=1)
    assert not Segmenter(bundle, "cpu").keep_on_device
    assert Segmenter(bundle, "cpu", keep_on_device=True).keep_on_device
    if torch.cuda.is_available():
        assert Segmenter(bundle, "cuda").keep_on_device


def test_running_out_of_gpu_memory_falls_back_to_the_host_path(monkeypatch):
    volume = volume_for("oblique, anisotropic")
    bundle = small_random_bundle(seed=1)
    expected = Segmenter(bundle, "cpu", precision="fp32").predict(volume)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(segmenter_module, "predict_on_device", out_of_memory)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = Segmenter(bundle, "cpu", precision="fp32", keep_on_device=True).predict(volume)
    assert any("GPU memory" in str(w.message) for w in caught)
    assert np.array_equal(maps.data, expected.data)
    assert device_segmentation.predict_on_device is not out_of_memory  # the module itself untouched


def test_the_device_path_takes_any_voxel_type_and_memory_layout():
    """uint16 (common in MR DICOM; CUDA kernels mostly lack it), big-endian and reversed-stride arrays
    go up as types and layouts torch computes with, and segment as the host path does."""
    volume = volume_for("oblique, anisotropic", shape=(9, 12, 11))
    counts = np.clip(volume.array * 40, 0, None).astype(np.uint16)
    bundle = small_random_bundle(seed=2)
    expected = Segmenter(bundle, "cpu", precision="fp32").predict(
        Volume(counts, volume.spacing, volume.origin, volume.direction))
    for array in (counts, counts.astype(">u2"), np.ascontiguousarray(counts[::-1])[::-1]):
        maps = Segmenter(bundle, "cpu", precision="fp32", keep_on_device=True).predict(
            Volume(array, volume.spacing, volume.origin, volume.direction))
        assert np.abs(maps.data.astype(int) - expected.data.astype(int)).max() <= 1
