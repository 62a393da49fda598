"""Reliability and security (issue 6): bad input, bad models, safe outputs, faults, determinism.

One test per case of the issue, named after it; each docstring says which behaviour it guards.
Where a test elsewhere already covers a case, a comment names it instead of repeating it here:

Inputs
- 2D image array: test_geometry::test_validate_volume_rejects[2D]; Slicer: test_logic::test_2d_volume_is_a_clear_error
- 4D / vector image, a component picked in Python: test_volume_io::test_vector_and_4d_images_need_a_component
- constant volume: test_pipeline::test_constant_image_is_refused_with_advice, test_logic::test_constant_volume_is_a_clear_error
- NaN/Inf counted: test_geometry::test_validate_volume_counts_nan_and_inf
- volume smaller than one patch, dense path: test_dense::test_dense_equals_patch_formulation[shape2]
- huge arrays already in memory: test_geometry::test_validate_volume_rejects_absurd_sizes_with_the_memory_needed
- missing paths: test_volume_io::test_missing_path_is_named, test_cli::test_missing_input_is_one_line_and_exit_2_from_a_real_process
- truncated / garbage files: test_volume_io::test_truncated_file_is_an_input_error, ::test_garbage_file_is_an_input_error
- DICOM folder with several series (Python): test_volume_io::test_folder_with_two_series_needs_a_choice
Models
- missing file: test_bundle::test_missing_model_file_says_so
- truncated / corrupt safetensors: test_bundle::test_truncated_files_are_refused, ::test_corrupt_header_is_refused,
  test_cli::test_corrupt_model_is_one_line_error
- metadata not matching the weights: test_bundle::test_weights_of_another_number_of_classes_are_refused,
  ::test_missing_tensor_is_refused, ::test_architecture_and_class_list_must_agree
- pickle checkpoints refused, never unpickled: test_bundle::test_pickle_checkpoints_are_refused_without_unpickling,
  test_cli::test_info_refuses_a_pickle
- unknown class names: test_bundle::test_class_names_resolve_case_insensitively_and_unknown_names_list_the_valid_ones,
  test_pipeline::test_unknown_or_background_classes_are_refused, test_thresholds::test_threshold_for_argmax_class_or_unknown_class_raises
- thresholds outside [0, 1]: test_bundle::test_default_thresholds_outside_0_1_are_refused,
  test_thresholds::test_invalid_threshold_raises, test_cli::test_bad_thresholds_are_one_line_errors
Outputs
- never overwritten without --overwrite: test_cli::test_existing_outputs_are_never_overwritten_without_overwrite,
  ::test_existing_probability_maps_count_as_outputs, test_volume_io::test_no_overwrite_without_the_flag,
  test_bundle::test_save_refuses_to_overwrite_unless_asked
- atomic writes: test_volume_io::test_atomic_write_leaves_nothing_after_an_exception, ::test_atomic_write_replaces_only_on_success,
  test_cli::test_ctrl_c_while_writing_exits_130_and_leaves_no_partial_file
- Slicer segments replaced only when asked (logic): test_logic::test_same_name_segment_is_replaced_only_when_asked
Faults
- Cancel in Slicer leaves the scene unchanged: test_logic::test_cancel_leaves_the_scene_unchanged,
  ::test_cancel_after_the_network_still_leaves_the_scene_unchanged; pipeline: test_pipeline::test_cancel_stops_before_anything_is_returned
- a batch goes on past a bad file, exit 1: test_cli::test_batch_goes_past_a_bad_file_and_exits_1
Determinism
- same segmenter twice: test_pipeline::test_the_same_input_twice_gives_the_identical_labelmap
Property test of the physical round trip of to_canonical/from_canonical: test_geometry::test_marked_region_survives_the_round_trip

Round 2 (issue 16), one file per kind, one or more tests per class of the issue:
- 1 full disk, 2 outputs that are inputs, 3 class names as file names, 4 names not UTF-8, 5 a file appearing
  meanwhile, 8 clashing outputs, 12 modes and SIGTERM/SIGHUP, 14 "-o O.MHA": test_reliability_outputs.py
- 6 DICOM slice grids, 7 scaled/sheared directions, 10 inputs that block, 13/14 impossible voxels, spacings and
  origins: test_reliability_inputs.py
- 9 model metadata schema and weights (3: class names with paths; 14: '|' in terminology): test_reliability_models.py
- 11 evaluate/train arguments, 13 devices, environment variables, output parents, library exceptions:
  test_reliability_cli.py
- random mutations of bundle metadata and image headers give only the project's errors: test_reliability_properties.py
"""

from __future__ import annotations

import ast
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from MultiTaskSegLib.engine import slab_loop, slab_sizing
from MultiTaskSegLib.engine.prepared_model import inference_model

from MultiTaskSegLib.engine import segmenter as pipeline

from MultiTaskSegLib.engine import image_reading
from MultiTaskSegLib.engine.bundle import load_bundle
from MultiTaskSegLib.engine.errors import InputError
from MultiTaskSegLib.engine.geometry import Volume, to_canonical
from MultiTaskSegLib.engine.segmenter import Segmenter
from MultiTaskSegLib.engine.image_reading import check_size_from_header, read_volume
from MultiTaskSegLib.engine.image_writing import write_volume

from conftest import small_random_bundle, synthetic_volume
from support import assert_one_error_line, random_direction, run, write_dicom_series

MODULE_FILE = Path(__file__).resolve().parents[1] / "MultiTaskSeg" / "MultiTaskSeg.py"


@pytest.fixture(scope="module")
def segmenter(small_bundle_file):
    return Segmenter(load_bundle(small_bundle_file), device="cpu")


@pytest.fixture
def no_network_pass(monkeypatch):
    """Fail the test if the network runs: for inputs that must be refused before it."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the network ran on an input that should have been refused")
    monkeypatch.setattr(pipeline, "dense_probabilities", forbidden)


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# ---- inputs ------------------------------------------------------------------------------------


def test_2d_image_file(tmp_path):
    """A 2D file (one slice exported on its own) is refused with advice, not segmented as junk."""
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(30, dtype=np.int16).reshape(5, 6)), str(path))
    with pytest.raises(InputError, match="is 2D; a 3D volume is needed"):
        read_volume(path)


def test_4d_and_multi_component_images_on_the_command_line(capsys, tmp_path, small_bundle_file):
    """Without --component a vector image is a one-line error that names the flag; with
    --component N the CLI segments component N exactly as if it had been its own file."""
    base = synthetic_volume(shape=(6, 9, 8), seed=3)
    parts = [base.array + 40 * c for c in range(3)]
    sitk.WriteImage(sitk.Compose([base.with_array(p).to_sitk() for p in parts]), str(tmp_path / "vector.nrrd"))
    write_volume(base.with_array(parts[2]), tmp_path / "third.nrrd")

    code, _, err = run(capsys, "segment", tmp_path / "vector.nrrd", "-o", tmp_path / "a.nii.gz",
                       "--model", small_bundle_file)
    assert code == 2
    assert_one_error_line(err, "3 components", "--component N")
    assert not (tmp_path / "a.nii.gz").exists()

    for source, output, extra in [("vector.nrrd", "picked.nrrd", ["--component", "2"]), ("third.nrrd", "alone.nrrd", [])]:
        code, _, err = run(capsys, "segment", tmp_path / source, "-o", tmp_path / output, "--model", small_bundle_file,
                           *extra)
        assert code == 0, err
    assert np.array_equal(read_volume(tmp_path / "picked.nrrd").array, read_volume(tmp_path / "alone.nrrd").array)

    code, _, err = run(capsys, "segment", tmp_path / "vector.nrrd", "-o", tmp_path / "b.nii.gz",
                       "--model", small_bundle_file, "--component", "3")
    assert code == 2
    assert_one_error_line(err, "out of range")


def test_multi_component_volume_in_slicer():
    """In Slicer a colour/vector volume node is refused with the module that converts it."""
    slicer = pytest.importorskip("slicer")
    from MultiTaskSegLib.slicer.logic import volume_from_node

    node = slicer.vtkMRMLScene().AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(node, np.ones((4, 5, 6, 3), np.uint8))
    with pytest.raises(InputError, match="3 components.*Vector to Scalar Volume"):
        volume_from_node(node)


def test_empty_all_zero_volume(segmenter, no_network_pass):
    """An all-zero image (e.g. a blank export) is refused before the network with advice."""
    with pytest.raises(InputError, match="empty or constant"):
        segmenter.predict(Volume(np.zeros((4, 5, 6), np.uint8)))


def test_nan_and_inf_voxels(segmenter, no_network_pass):
    """The Segmenter itself refuses NaN/Inf voxels (they would poison the normalisation)."""
    array = synthetic_volume(shape=(5, 6, 7)).array
    array[2, 3, 4] = np.nan
    array[1, 1, 1] = -np.inf
    with pytest.raises(InputError, match="2 NaN or infinite"):
        segmenter.predict(Volume(array))


def test_single_slice(segmenter):
    """A 3D volume of one slice is segmented: labels on its own 1 x Y x X grid, the intensity > 0
    rule applied, and foreground labelled."""
    volume = synthetic_volume(shape=(1, 20, 24), spacing=(0.8, 0.8, 3.0))
    labels = segmenter.predict(volume).labelmap()
    assert labels.shape == (1, 20, 24)
    assert np.all(labels[volume.array <= 0] == 0)
    assert np.all(labels[volume.array > 0] > 0)


def test_volume_smaller_than_one_patch(segmenter):
    """A 3 x 4 x 5 volume, smaller than the network's patch along every axis, is segmented."""
    assert 2 * segmenter.bundle.architecture.halo + 1 > 5
    volume = Volume(np.arange(1, 61, dtype=np.float32).reshape(3, 4, 5), (1.0, 1.0, 1.0))
    maps = segmenter.predict(volume)
    assert maps.labelmap().shape == (3, 4, 5)
    assert np.all(maps.labelmap() > 0)
    # Probabilities of the selected classes still vary between voxels: the network really ran.
    assert len(np.unique(maps.data[1:].reshape(maps.data.shape[0] - 1, -1), axis=1)) > 1


@pytest.mark.parametrize("suffix", [".nii", ".nrrd"])
def test_huge_dimensions(tmp_path, monkeypatch, suffix):
    """A header announcing an absurd size (damaged or hostile) is refused from the header alone,
    with the memory it would need, before any voxel is read or allocated."""
    path = tmp_path / f"huge{suffix}"
    if suffix == ".nii":  # NIfTI-1 stores dims as int16: 30000^3 is the most it can claim
        sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkInt16), str(path))
        header = bytearray(path.read_bytes())
        header[40:48] = np.array([3, 30000, 30000, 30000], "<i2").tobytes()
        path.write_bytes(bytes(header))
    else:  # a detached NRRD header claiming 100000^3 over a tiny data file
        (tmp_path / "huge.raw").write_bytes(b"\0" * 64)
        path = tmp_path / "huge.nhdr"
        path.write_text("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
                        "sizes: 100000 100000 100000\nencoding: raw\nendian: little\n"
                        "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\ndata file: huge.raw\n")

    def no_voxels(*args, **kwargs):
        raise AssertionError("voxels were read although the header already shows the image is too large")

    monkeypatch.setattr(sitk, "ReadImage", no_voxels)
    with pytest.raises(InputError, match=r"too large.*would need at least [\d.e+]+ [GT]iB.*nothing was read"):
        read_volume(path)


def test_huge_dimensions_over_this_machines_memory():
    """Below the voxel limit, an image whose reading and float32 copy exceed the RAM is refused."""
    check_size_from_header((512, 512, 300), 1, 2, "ok.nii", memory_bytes=2 ** 30)  # fits in 1 GiB
    with pytest.raises(InputError, match=r"1\.0 GiB of memory"):
        check_size_from_header((1024, 1024, 400), 1, 2, "scan.nii", memory_bytes=2 ** 30)
    with pytest.raises(InputError, match="2048 x 2048 x 300 x 10"):  # a 4D file is read whole
        check_size_from_header((2048, 2048, 300, 10), 1, 4, "series.nii", memory_bytes=2 ** 34)


def test_huge_dicom_series(tmp_path, monkeypatch):
    """A DICOM series is sized from its first file's header times its slice count and refused
    before the series is read when it would not fit (here: a machine with 2 KiB of memory)."""
    volume = Volume(np.arange(5 * 9 * 8, dtype=np.int16).reshape(5, 9, 8))
    uid = "1.2.826.0.1.3680043.2.1125.2.303"
    write_dicom_series(tmp_path / "series", volume, uid, "T1")
    monkeypatch.setattr(image_reading, "physical_memory_bytes", lambda: 2048)  # the series needs 2160 bytes
    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", lambda self: pytest.fail("the series was read"))
    with pytest.raises(InputError, match=rf"DICOM series {uid} .* 8 x 9 x 5 voxels.*nothing was read"):
        read_volume(tmp_path / "series")


def test_huge_canonical_grid():
    """Very anisotropic voxels would explode on the isotropic grid: refused before resampling."""
    flat = np.broadcast_to(np.float32(1), (1, 1000, 1000))  # a view: no memory
    with pytest.raises(InputError, match=r"10000 x 1000 x 1000 = .*--spacing"):
        to_canonical(Volume(flat, (0.01, 0.01, 100.0)))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float64])
def test_integer_float_and_unsigned_types(tmp_path, segmenter, dtype):
    """The same intensities stored as uint8, int16, uint16, int32 or float64 (read back from a
    file) give exactly the probabilities of the float32 image."""
    base = synthetic_volume(shape=(8, 12, 10), seed=1)
    values = np.clip(np.rint(base.array), 0, 255)
    path = write_volume(base.with_array(values.astype(dtype)), tmp_path / "image.nrrd")
    stored = read_volume(path)
    assert stored.array.dtype == dtype
    reference = segmenter.predict(base.with_array(values.astype(np.float32)))
    assert np.array_equal(segmenter.predict(stored).data, reference.data)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="needs a user that file permissions apply to (root reads everything)")
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_unreadable_file(tmp_path, suffix):
    """A file without read permission is an InputError naming it, not a crash."""
    path = write_volume(synthetic_volume(shape=(4, 5, 6)), tmp_path / f"private{suffix}")
    path.chmod(0)
    try:
        with pytest.raises(InputError, match="Cannot read .*private"):
            read_volume(path)
    finally:
        path.chmod(0o600)


def test_dicom_folder_with_several_series_on_the_command_line(capsys, tmp_path, small_bundle_file):
    """The CLI lists the series of a folder and segments the one picked with --series-uid."""
    volume = synthetic_volume(shape=(5, 9, 8), direction=np.eye(3))
    volume = volume.with_array(np.rint(volume.array).astype(np.int16))
    first, second = "1.2.826.0.1.3680043.2.1125.2.101", "1.2.826.0.1.3680043.2.1125.2.202"
    folder = tmp_path / "study"
    write_dicom_series(folder, volume, first, "T1")
    write_dicom_series(folder, volume.with_array(volume.array[:3]), second, "scout")
    code, _, err = run(capsys, "segment", folder, "-o", tmp_path / "a.nii.gz", "--model", small_bundle_file)
    assert code == 2
    assert_one_error_line(err, first, second, "--series-uid")
    code, _, err = run(capsys, "segment", folder, "-o", tmp_path / "b.nii.gz", "--model", small_bundle_file,
                       "--series-uid", second)
    assert code == 0, err
    assert read_volume(tmp_path / "b.nii.gz").array.shape == (3, 9, 8)


# ---- outputs -------------------------------------------------------------------------------------


def test_slicer_widget_asks_before_replacing_segments():
    """The Segment button looks for name clashes and asks (OK/Cancel) before the network runs; only
    an OK sets replaceExisting, and the result is applied with that answer."""
    tree = ast.parse(MODULE_FILE.read_text())
    method = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "onSegmentButton")
    calls = sorted((node for node in ast.walk(method) if isinstance(node, ast.Call)),
                   key=lambda call: (call.lineno, call.col_offset))  # in source order
    names = [getattr(call.func, "attr", getattr(call.func, "id", "")) for call in calls]
    assert "existing_segment_names" in names and "confirmOkCancelDisplay" in names
    assert names.index("existing_segment_names") < names.index("confirmOkCancelDisplay") < names.index("start")
    ask = next(node for node in ast.walk(method) if isinstance(node, ast.If)
               and any(isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "confirmOkCancelDisplay"
                       for n in ast.walk(node.test)))
    assert isinstance(ask.body[0], ast.Return), "Cancel must stop the run"
    finish = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "_finishRun")
    apply = next(node for node in ast.walk(finish) if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "apply_result")
    assert "replace_existing" in [keyword.arg for keyword in apply.keywords]


# ---- faults --------------------------------------------------------------------------------------


def test_ctrl_c_during_the_network(capsys, tmp_path, image_files, small_bundle_file, monkeypatch):
    """Ctrl-C while the network runs on the second input of a batch: exit 130, the first output
    (complete) stays, nothing at all of the second, no temporary files."""
    real = pipeline.dense_probabilities
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "dense_probabilities", interrupted)
    results = tmp_path / "results"
    code, _, err = run(capsys, "segment", *image_files, "-o", results, "--model", small_bundle_file,
                       "--probabilities", tmp_path / "probs")
    assert code == 130 and "cancelled" in err and "Traceback" not in err
    assert sorted(p.name for p in results.iterdir()) == ["case01.nii.gz"]
    assert all(p.name.startswith("case01_") for p in (tmp_path / "probs").iterdir())
    assert leftovers(results) == [] and leftovers(tmp_path / "probs") == []


def _dense_inputs(seed: int = 0):
    model = inference_model(small_random_bundle(seed).model, "fp32", "cpu")
    volume = np.random.default_rng(seed).normal(0.5, 1.0, (6, 11, 10)).astype(np.float32)
    return model, volume, volume > 0


def test_cuda_out_of_memory_falls_back_to_smaller_slabs(monkeypatch):
    """A slab that runs out of device memory is split and retried until it fits; the result is
    the same as without the fault."""
    model, volume, mask = _dense_inputs()
    options = slab_sizing.DenseOptions(precision="fp32")
    expected = slab_loop.dense_probabilities(model, volume, mask, "cpu", options)
    real = slab_loop.slab_probabilities
    thicknesses = []

    def out_of_memory_above_two_planes(model, volume, box, options, device):
        thicknesses.append(box[1] - box[0])
        if box[1] - box[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, volume, box, options, device)

    monkeypatch.setattr(slab_loop, "slab_probabilities", out_of_memory_above_two_planes)
    assert np.array_equal(slab_loop.dense_probabilities(model, volume, mask, "cpu", options), expected)
    assert max(thicknesses) > 2 and thicknesses[-1] <= 2


def test_cuda_out_of_memory_falls_back_to_the_cpu_with_a_message(monkeypatch):
    """When the GPU runs out of memory even for the thinnest slabs, the pass continues on the CPU,
    warns, and says so through progress; the result matches a CPU run."""
    model, volume, mask = _dense_inputs()
    expected = slab_loop.dense_probabilities(model, volume, mask, "cpu", slab_sizing.DenseOptions(precision="fp32"))
    real = slab_loop.iter_dense_probabilities
    devices = []

    def gpu_without_memory(model, volume, mask, device, options, progress=None, cancel=None):
        devices.append(torch.device(device).type)
        if torch.device(device).type == "cuda":  # this machine has no GPU: play one that fills up
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")
        return real(model, volume, mask, device, options, progress, cancel)

    monkeypatch.setattr(slab_loop, "iter_dense_probabilities", gpu_without_memory)
    stages = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = slab_loop.dense_probabilities(model, volume, mask, torch.device("cuda"),
                                           slab_sizing.DenseOptions(precision="fp16"),
                                           progress=lambda fraction, stage: stages.append(stage))
    assert devices == ["cuda", "cpu"]
    assert any("CPU" in str(w.message) for w in caught)
    assert any("out of memory" in stage and "CPU" in stage for stage in stages)
    # The CPU pass may use reduced precision: the decision is what must agree.
    assert (result.argmax(axis=0) == expected.argmax(axis=0)).mean() > 0.97


# ---- determinism ---------------------------------------------------------------------------------


def test_same_input_and_model_file_give_identical_labelmaps(small_bundle_file):
    """Two independent loads of the same bundle file segment the same image bit-identically."""
    volume = synthetic_volume(shape=(7, 10, 9))
    first = Segmenter(load_bundle(small_bundle_file), device="cpu").predict(volume)
    second = Segmenter(load_bundle(small_bundle_file), device="cpu").predict(volume)
    assert np.array_equal(first.data, second.data)
    assert np.array_equal(first.labelmap(), second.labelmap())


# ---- property: the Segmenter's whole geometric path ---------------------------------------------


@settings(max_examples=15, deadline=None)
@given(spacing=st.tuples(*[st.floats(0.8, 1.6)] * 3),
       origin=st.tuples(*[st.floats(-100, 100)] * 3),
       direction=random_direction(),
       shape=st.tuples(*[st.integers(10, 16)] * 3))
def test_segmenter_round_trip_over_random_geometries(spacing, origin, direction, shape):
    """Through Segmenter.predict (canonical grid, network, back to the input grid), a bright
    off-centre block is labelled where it is in the input, whatever the geometry. The network is
    replaced by a rule on its input (bright -> class 1), so only the geometry is tested."""
    array = np.full(shape, 50.0, np.float32)
    block = tuple(slice(n // 5, n // 2 + 2) for n in shape)  # off centre: a flip or transpose moves it
    array[block] = 200.0
    inside = np.zeros(shape, bool)
    inside[tuple(slice(s.start + 1, s.stop - 1) for s in block)] = True  # one voxel in from the edge
    outside = np.ones(shape, bool)
    outside[tuple(slice(max(0, s.start - 2), s.stop + 2) for s in block)] = False

    def bright_is_class_1(model, network_input, mask, device, options, progress=None, cancel=None, out=None):
        level = (network_input[mask].min() + network_input[mask].max()) / 2
        probabilities = np.zeros((model.arch.num_classes,) + network_input.shape, np.uint8)
        probabilities[1] = np.where(network_input > level, 255, 0)
        probabilities[0] = 255 - probabilities[1]
        if out is not None:  # an interpolated grid: Segmenter passes one array per class to fill
            for channel, values in zip(out, probabilities):
                channel[...] = values
            return out
        return probabilities

    segmenter = _geometry_segmenter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "dense_probabilities", bright_is_class_1)
        labels = segmenter.predict(Volume(array, spacing, origin, direction), classes=["white matter"]).labelmap()
    assert labels.shape == shape
    assert np.all(labels[inside] == 1)
    assert np.all(labels[outside] == 0)


_GEOMETRY_SEGMENTER = []


def _geometry_segmenter() -> Segmenter:
    """One Segmenter for all examples (hypothesis cannot use function-scoped fixtures)."""
    if not _GEOMETRY_SEGMENTER:
        _GEOMETRY_SEGMENTER.append(Segmenter(small_random_bundle(0), device="cpu"))
    return _GEOMETRY_SEGMENTER[0]
