"""Memory of the host segmentation path, in multiples of the volume (issue 15: a 512^2 x 300 CT within
2 GB on the CPU; benchmarks/bench_memory.py measures that size).

What held the peak: the features of every voxel of a slab's box (192 bytes a voxel in bf16) where
the head reads only the samples', a float32 copy of the whole input, a whole-volume sample mask,
and whole-channel temporaries when probabilities go back to the input grid. The pieces that
replaced them (``NormalizedVolume``, ``SampleMask``) must give the same values, bit for bit.
"""

from __future__ import annotations

import inspect
import json
import platform
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from MultiTaskSegLib.engine import geometry, segmenter as segmenter_module
from MultiTaskSegLib.engine.bundle import make_random_bundle
from MultiTaskSegLib.engine.geometry import Volume, from_canonical, to_canonical
from MultiTaskSegLib.engine.normalization import PERCENTILE_RULE, NormalizedVolume, normalize
from MultiTaskSegLib.engine.openvino_backend import openvino_available
from MultiTaskSegLib.engine.prepared_model import inference_model
from MultiTaskSegLib.engine.samples import SampleMask, sample_voxels
from MultiTaskSegLib.engine.segmenter import Segmenter
from MultiTaskSegLib.engine.slab_loop import dense_probabilities
from MultiTaskSegLib.engine.slab_sizing import DenseOptions

from conftest import rotation


def body(shape):
    """A CT-like trunk in Hounsfield units: air around it, fat (below 0: not a sample) and organs
    and vessels spread through it, so the samples (~14% of the voxels) span most of each plane,
    as a CT's soft tissue does."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    hu = np.full(shape, -1000, np.int16)
    trunk = y ** 2 + (x / 1.1) ** 2 < 0.95
    hu[trunk] = -100
    organs = trunk & (np.sin(7 * x) * np.cos(6 * y) * np.cos(5 * z) > 0.25)
    hu[organs] = 40
    hu[organs & (np.cos(11 * x + 3 * z) > 0.8)] = 300
    return Volume(hu, (0.8,) * 3, (0.0, 0.0, 0.0), np.eye(3))


# run in a fresh interpreter (glibc's heap settings and the peak are process-wide), with the same phantom
PEAK_SCRIPT = r"""
import json, sys
import numpy as np
from MultiTaskSegLib.engine.bundle import make_random_bundle
from MultiTaskSegLib.engine.geometry import Volume
from MultiTaskSegLib.engine.segmenter import Segmenter
""" + inspect.getsource(body) + r"""

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

shape, backend = tuple(json.loads(sys.argv[1])), sys.argv[2]
segmenter = Segmenter(make_random_bundle(seed=0, n_layers=2), device="cpu", backend=backend,
                      memory_budget_bytes=1 << 30)
segmenter.predict(body((6, 40, 40)))  # kernels built, thread pools up: not the volume's memory
volume = body(shape)
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the resident size now
maps = segmenter.predict(volume)
print(json.dumps({"voxels": volume.array.size, "growth": status("VmHWM") - before,
                  "samples": int((volume.array > 0).sum())}))
"""

# Resident growth while predicting, per input voxel. 64 x 256 x 256 measured 69 (PyTorch) and 73
# (OpenVINO) bytes a voxel, and 231 and 238 before the features were kept for the samples only:
# the bound sits between them. It holds the result (9 classes: 9 bytes a voxel), a slab's
# features for its samples, and fixed costs (head chunks, conv batches, heap) of ~35 bytes a voxel
# at this size.
PEAK_BYTES_PER_VOXEL = 120


def _peak_is_measurable() -> bool:
    """Linux lets a process reset its own peak resident size (VmHWM) since 4.0."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
                    or not _peak_is_measurable(), reason="measures VmHWM after resetting it (Linux, glibc heap)")
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_predicting_a_ct_takes_a_bounded_multiple_of_its_size(backend):
    """A fresh interpreter segments a 4-megavoxel CT on the CPU, with a slab budget that puts the
    whole volume in one slab; its resident memory must grow by at most PEAK_BYTES_PER_VOXEL a voxel."""
    if backend == "openvino" and not openvino_available():
        pytest.skip("the optional openvino package is not installed")
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, "[64, 256, 256]", backend],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.1 < measured["samples"] / measured["voxels"] < 0.2  # the phantom is what the bound assumes
    per_voxel = measured["growth"] / measured["voxels"]
    assert per_voxel <= PEAK_BYTES_PER_VOXEL, f"{per_voxel:.0f} bytes a voxel"


def _numpy_peak(function):
    """(result, peak bytes of numpy's allocations while ``function`` ran): numpy reports its
    buffers to tracemalloc, torch and ITK do not."""
    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_predict_makes_no_whole_volume_copy_besides_its_result(monkeypatch):
    """Thin slabs and small plane ranges (as a CTA-sized volume has relative to its size): numpy
    holds the result and about a byte a voxel more, where a float32 input copy alone was four."""
    monkeypatch.setattr(segmenter_module, "BACKGROUND_CHUNK_VOXELS", 1 << 16)
    segmenter = Segmenter(make_random_bundle(seed=0, n_layers=2), device="cpu", backend="torch",
                          memory_budget_bytes=16 << 20)
    segmenter.predict(body((6, 20, 20)))
    volume = body((64, 128, 128))
    maps, peak = _numpy_peak(lambda: segmenter.predict(volume))
    extra = (peak - maps.data.nbytes) / volume.array.size
    assert extra <= 2, f"{extra:.2f} bytes a voxel besides the result"


def test_probabilities_go_back_to_the_input_grid_without_whole_channel_float_copies(monkeypatch):
    """Each channel is rounded from ITK's float output plane range by plane range into the result:
    a copy of the output and the rounding's temporaries took ~13 bytes an input voxel."""
    monkeypatch.setattr(geometry, "_ROUNDING_CHUNK_VOXELS", 1 << 14)
    volume = Volume(np.ones((40, 64, 60), np.float32), (0.9, 0.8, 1.3), (0, 0, 0), rotation(2, 25))
    _, grid = to_canonical(volume, 1.0)
    probabilities = np.random.default_rng(0).integers(0, 256, (4,) + grid.canonical_shape, dtype=np.uint8)
    on_input, peak = _numpy_peak(lambda: from_canonical(probabilities, grid))
    assert on_input.shape == (4,) + volume.array.shape
    # ITK's copy of one canonical channel is the one whole-channel buffer left (it was ~13 bytes per input voxel)
    assert peak <= on_input.nbytes + probabilities[0].nbytes + volume.array.size


@pytest.mark.parametrize("exact", [False, True])
def test_channels_go_back_one_by_one_and_are_let_go(monkeypatch, exact):
    """``channels_from_canonical`` gives ``from_canonical``'s result and drops each canonical channel
    once resampled: numpy then never holds both stacks whole (the result, one canonical channel and
    the rounding's plane ranges at most, besides the channels not yet done)."""
    monkeypatch.setattr(geometry, "_ROUNDING_CHUNK_VOXELS", 1 << 14)
    direction = np.eye(3)[:, [1, 0, 2]] * [1, -1, 1] if exact else rotation(2, 25)
    volume = Volume(np.ones((40, 64, 60), np.float32), (1.0, 1.0, 1.0) if exact else (0.9, 0.8, 1.3), (0, 0, 0),
                    direction)
    _, grid = to_canonical(volume, 1.0)
    assert grid.is_exact == exact
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 256, (4,) + grid.canonical_shape, dtype=np.uint8)
    expected = from_canonical(stack, grid)
    channels = [channel.copy() for channel in stack]
    del stack
    channel_bytes = channels[0].nbytes
    on_input, peak = _numpy_peak(lambda: geometry.channels_from_canonical(channels, grid))
    assert np.array_equal(on_input, expected)
    assert channels == [None] * 4
    # tracemalloc counts only what is allocated while it runs: the canonical channels came before
    assert peak <= on_input.nbytes + channel_bytes + volume.array.size


@pytest.mark.parametrize("modality, rules", [("CT", None), ("MR", None), ("MR", {"MR": PERCENTILE_RULE})])
def test_a_normalized_volume_reads_as_the_normalised_array(modality, rules):
    rng = np.random.default_rng(1)
    array = (rng.normal(300, 400, (9, 14, 12)) if modality == "CT" else rng.gamma(2, 100, (9, 14, 12)))
    array = array.astype(np.int16 if modality == "CT" else np.float32)
    settings = {} if rules is None else {"settings": rules}
    whole = normalize(array, modality, **settings)
    lazy = NormalizedVolume(array, modality, **settings)
    assert lazy.shape == array.shape and lazy.dtype == np.float32
    for index in [(slice(2, 7),), (slice(0, 9), slice(3, 11), slice(1, 5)), (4,), (Ellipsis,)]:
        assert np.array_equal(lazy[index], whole[index])
    assert np.array_equal(np.asarray(lazy), whole)


@pytest.mark.parametrize("interpolated", [False, True])
def test_a_sample_mask_reads_as_the_whole_mask(interpolated):
    rng = np.random.default_rng(2)
    array = rng.normal(0, 1, (11, 9, 8)).astype(np.float32)
    whole = sample_voxels(array, interpolated)
    lazy = SampleMask(array, interpolated)
    assert lazy.shape == array.shape
    for index in [slice(0, 3), slice(4, 11), slice(10, 20), slice(5, 5), (slice(2, 8), slice(1, 6), slice(2, 7)),
                  3, -1, (0, slice(2, 5))]:
        assert np.array_equal(lazy[index], whole[index]), index
    assert np.array_equal(np.asarray(lazy), whole)
    with pytest.raises(TypeError):
        lazy[::2]


def test_the_dense_pass_reads_volume_and_mask_lazily_to_the_same_result():
    """Over several slabs, a ``NormalizedVolume`` and a ``SampleMask`` give the probabilities the
    whole arrays give, bit for bit."""
    hu = body((14, 30, 28)).array
    model = inference_model(make_random_bundle(seed=3, n_layers=2).model, "fp32", "cpu", channels_last=True)
    options = DenseOptions(memory_budget_bytes=1 << 20, channels_last=True)
    for interpolated in (False, True):
        arrays = dense_probabilities(model, normalize(hu, "CT"), sample_voxels(hu, interpolated), "cpu", options)
        lazy = dense_probabilities(model, NormalizedVolume(hu, "CT"), SampleMask(hu, interpolated), "cpu", options)
        assert np.array_equal(lazy, arrays)
        assert (arrays[0] < 255).any()  # something was classified
