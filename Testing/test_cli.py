"""The ``multitaskseg`` command, through ``main([...])`` and once as a real process.

Segmentation runs the 4-layer random bundle of conftest, so each call takes about a second.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MultiTaskSegLib.cli import program as cli, segment_command

from MultiTaskSegLib.data import make_data
from MultiTaskSegLib.engine.bundle import load_bundle
from MultiTaskSegLib.engine.network import parameter_count
from MultiTaskSegLib.engine.segmenter import Segmenter
from MultiTaskSegLib.engine.image_reading import read_volume

from support import assert_one_error_line, error_lines, run


@pytest.fixture
def no_network(monkeypatch):
    """Make any network run fail the test: for checks that must happen before it."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the network ran although the command should have stopped before")
    monkeypatch.setattr(Segmenter, "predict", forbidden)


# ---- info ------------------------------------------------------------------------------------


def test_info_json_is_parseable_and_complete(capsys, small_bundle_file):
    code, out, err = run(capsys, "info", small_bundle_file, "--json")
    assert code == 0, err
    info = json.loads(out)
    bundle = load_bundle(small_bundle_file)
    assert info["parameter_count"] == parameter_count(bundle.model)
    assert info["architecture"]["n_layers"] == 4
    assert [c["name"] for c in info["classes"]] == [c.name for c in bundle.classes]
    assert {t["name"]: t["modality"] for t in info["tasks"]} == {"brain": "MR", "breast": "MR", "coronary": "CT"}
    assert info["thresholds"] == {"pectoral muscle": 0.5, "coronary arteries": 0.5}
    assert set(info["normalization"]) == {"MR", "CT"}


def test_info_text_lists_classes_tasks_and_parameters(capsys, random_bundle_file):
    code, out, _ = run(capsys, "info", random_bundle_file)
    assert code == 0
    assert f"{parameter_count(load_bundle(random_bundle_file).model):,}" in out
    for text in ("25 shared 3x3 convolutions", "pectoral muscle", "threshold 0.5", "SCT 68523003",
                 "coronary   CT", "random weights"):
        assert text in out


def test_info_without_a_default_model_says_how_to_get_one(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MULTITASKSEG_MODEL", str(tmp_path / "absent.safetensors"))
    code, _, err = run(capsys, "info")
    assert code == 2
    assert_one_error_line(err, "absent.safetensors", "make demo")


def test_info_refuses_a_pickle(capsys, tmp_path):
    import torch
    path = tmp_path / "checkpoint.pt"
    torch.save({"w": torch.zeros(1)}, path)
    code, _, err = run(capsys, "info", path)
    assert code == 2
    assert_one_error_line(err, "pickle")


# ---- segment: outputs ------------------------------------------------------------------------


def test_segment_writes_class_indices_in_the_input_geometry_and_probabilities(capsys, tmp_path, image_files,
                                                                             small_bundle_file):
    source = image_files[0]
    output = tmp_path / "out" / "labels.nii.gz"
    code, _, err = run(capsys, "segment", source, "-o", output, "--model", small_bundle_file, "--device", "cpu",
                       "--threshold", "pectoral muscle=0.3", "--probabilities", tmp_path / "probs")
    assert code == 0, err
    image, labels = read_volume(source), read_volume(output)
    assert labels.array.dtype == np.uint8
    np.testing.assert_allclose(labels.spacing, image.spacing, rtol=1e-6)
    np.testing.assert_allclose(labels.origin, image.origin, atol=1e-4)
    np.testing.assert_allclose(labels.direction, image.direction, atol=1e-6)
    # The command gives what the engine's API gives (class indices, the threshold applied).
    maps = Segmenter(load_bundle(small_bundle_file), device="cpu").predict(image)
    assert np.array_equal(labels.array, maps.labelmap({"pectoral muscle": 0.3}))
    assert np.all(labels.array[image.array <= 0] == 0)
    probabilities = sorted(p.name for p in (tmp_path / "probs").iterdir())
    assert len(probabilities) == 8 and "case01_pectoral_muscle.nii.gz" in probabilities
    pectoral = read_volume(tmp_path / "probs" / "case01_pectoral_muscle.nii.gz")
    assert pectoral.array.shape == image.array.shape
    np.testing.assert_allclose(pectoral.array, maps.probability("pectoral muscle"), atol=1e-6)
    np.testing.assert_allclose(pectoral.origin, image.origin, atol=1e-4)


def test_segment_to_a_slicer_segmentation(capsys, tmp_path, image_files, small_bundle_file):
    output = tmp_path / "case.seg.nrrd"
    code, _, err = run(capsys, "segment", image_files[2], "-o", output, "--model", small_bundle_file,
                       "--classes", "white matter", "coronary arteries")
    assert code == 0, err
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(output))
    reader.ReadImageInformation()
    segments = {reader.GetMetaData(f"Segment{i}_Name"): int(reader.GetMetaData(f"Segment{i}_LabelValue"))
                for i in range(2)}
    assert segments == {"white matter": 1, "coronary arteries": 8}
    assert "68523003" in reader.GetMetaData("Segment0_Tags")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    assert set(np.unique(labels).tolist()) <= {0, 1, 8}


def test_batch_goes_past_a_bad_file_and_exits_1(capsys, tmp_path, image_files, small_bundle_file):
    bad = tmp_path / "images" / "broken.nii.gz"
    bad.write_bytes(b"this is not an image")
    inputs = [image_files[0], bad, image_files[2]]
    code, _, err = run(capsys, "segment", *inputs, "-o", tmp_path / "results", "--model", small_bundle_file,
                       "--format", "seg.nrrd")
    assert code == 1
    written = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert written == ["case01.seg.nrrd", "case03.seg.nrrd"]
    assert "1 of 3 inputs failed" in err
    assert any("broken.nii.gz" in line for line in error_lines(err))
    assert "Traceback" not in err


def test_batch_names_outputs_after_inputs_in_the_default_format(capsys, tmp_path, image_files, small_bundle_file):
    code, _, err = run(capsys, "segment", *image_files[:2], "-o", tmp_path / "results", "--model", small_bundle_file)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["case01.nii.gz", "case02.nii.gz"]


# ---- segment: refusals, all before the network runs ----------------------------------------------


def test_missing_input_is_one_line_and_exit_2_from_a_real_process(tmp_path, small_bundle_file):
    command = Path(sys.executable).with_name("multitaskseg")
    assert command.exists(), "the console script is installed with the package (pip install -e .)"
    result = subprocess.run([str(command), "segment", str(tmp_path / "nowhere.nii.gz"), "-o",
                             str(tmp_path / "out.nii.gz"), "--model", str(small_bundle_file)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "Input not found", "nowhere.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()


def test_existing_outputs_are_never_overwritten_without_overwrite(capsys, tmp_path, image_files, small_bundle_file,
                                                                 monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    existing = results / "case02.nii.gz"
    existing.write_bytes(b"precious")
    with monkeypatch.context() as patch:
        patch.setattr(Segmenter, "predict", lambda *a, **k: pytest.fail("ran before checking the outputs"))
        code, _, err = run(capsys, "segment", *image_files, "-o", results, "--model", small_bundle_file)
    assert code == 2
    assert_one_error_line(err, "case02.nii.gz", "--overwrite")
    assert existing.read_bytes() == b"precious"
    assert sorted(p.name for p in results.iterdir()) == ["case02.nii.gz"]  # nothing else started either
    code, _, err = run(capsys, "segment", *image_files, "-o", results, "--model", small_bundle_file, "--overwrite")
    assert code == 0, err
    assert read_volume(existing).array.shape == read_volume(image_files[1]).array.shape


def test_existing_probability_maps_count_as_outputs(capsys, tmp_path, image_files, small_bundle_file, no_network):
    probs = tmp_path / "probs"
    probs.mkdir()
    (probs / "case01_coronary_arteries.nii.gz").write_bytes(b"old")
    code, _, err = run(capsys, "segment", image_files[0], "-o", tmp_path / "x.nii.gz", "--model", small_bundle_file,
                       "--probabilities", probs)
    assert code == 2
    assert_one_error_line(err, "case01_coronary_arteries.nii.gz")


@pytest.mark.parametrize("threshold, message", [
    ("pectoral muscle", "CLASS=VALUE"),
    ("=0.4", "CLASS=VALUE"),
    ("pectoral muscle=high", "number in [0, 1]"),
    ("pectoral muscle=1.5", "in [0, 1]"),
    ("white matter=0.4", "not by a threshold"),
    ("liver=0.4", "no class 'liver'"),
])
def test_bad_thresholds_are_one_line_errors(capsys, tmp_path, image_files, small_bundle_file, no_network,
                                            threshold, message):
    code, _, err = run(capsys, "segment", image_files[0], "-o", tmp_path / "x.nii.gz", "--model", small_bundle_file,
                       "--threshold", threshold)
    assert code == 2
    assert_one_error_line(err, message)
    assert not (tmp_path / "x.nii.gz").exists()


def test_thresholds_parse_by_name_case_insensitively(small_bundle_file):
    bundle = load_bundle(small_bundle_file)
    assert segment_command.parse_thresholds(["Pectoral Muscle=0.25", "coronary arteries = 1"], bundle) == {7: 0.25, 8: 1.0}


@pytest.mark.parametrize("argv, message", [
    (["--classes", "liver"], "no class 'liver'"),
    (["--classes", "background"], "Background"),
    (["--spacing", "0"], "--spacing"),
    (["--format", "nrrd"], "contradicts"),
])
def test_other_bad_options_are_one_line_errors(capsys, tmp_path, image_files, small_bundle_file, no_network,
                                               argv, message):
    code, _, err = run(capsys, "segment", image_files[0], "-o", tmp_path / "x.nii.gz", "--model", small_bundle_file,
                       *argv)
    assert code == 2
    assert_one_error_line(err, message)


def test_output_without_a_known_suffix_is_refused(capsys, tmp_path, image_files, small_bundle_file, no_network):
    code, _, err = run(capsys, "segment", image_files[0], "-o", tmp_path / "labels.png", "--model", small_bundle_file)
    assert code == 2
    assert_one_error_line(err, ".seg.nrrd")


def test_two_inputs_with_the_same_case_name_are_refused(capsys, tmp_path, image_files, small_bundle_file, no_network):
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = other / image_files[0].name
    twin.write_bytes(image_files[0].read_bytes())
    code, _, err = run(capsys, "segment", image_files[0], twin, "-o", tmp_path / "results", "--model",
                       small_bundle_file)
    assert code == 2
    assert_one_error_line(err, "both be written")


def test_corrupt_model_is_one_line_error(capsys, tmp_path, image_files, random_bundle_file):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(random_bundle_file.read_bytes()[:1000])
    code, _, err = run(capsys, "segment", image_files[0], "-o", tmp_path / "x.nii.gz", "--model", corrupt)
    assert code == 2
    assert_one_error_line(err, "corrupt.safetensors")


# ---- Ctrl-C ------------------------------------------------------------------------------------


def test_ctrl_c_while_writing_exits_130_and_leaves_no_partial_file(capsys, tmp_path, image_files, small_bundle_file,
                                                                  monkeypatch):
    real_write = sitk.WriteImage

    def interrupted_write(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)  # the temporary file is complete on disk...
        raise KeyboardInterrupt                   # ...when the user presses Ctrl-C

    monkeypatch.setattr(sitk, "WriteImage", interrupted_write)
    results = tmp_path / "results"
    code, _, err = run(capsys, "segment", image_files[0], "-o", results / "labels.nii.gz", "--model",
                       small_bundle_file)
    assert code == 130
    assert "cancelled" in err and "Traceback" not in err
    assert list(results.iterdir()) == []  # neither the output nor its temporary file


# ---- make-data and the parser ------------------------------------------------------------------


def test_make_data_passes_its_options_on(capsys, tmp_path, monkeypatch):
    calls = []

    def fake_build(out_dir, seed=0, overwrite=False, progress=None, tasks=(), **kwargs):
        calls.append((Path(out_dir), seed, overwrite, list(tasks)))
        progress(0.5, "Writing phantoms")
        return []

    monkeypatch.setattr(make_data, "build_training_data", fake_build)
    code, _, err = run(capsys, "make-data", tmp_path / "data", "--seed", 5, "--overwrite")
    assert code == 0, err
    code, _, err = run(capsys, "make-data", tmp_path / "data", "--tasks", "breast", "coronary")
    assert code == 0, err
    assert calls == [(tmp_path / "data", 5, True, ["brain", "breast", "coronary"]),
                     (tmp_path / "data", 0, False, ["breast", "coronary"])]


def test_make_data_refuses_existing_datasets(capsys, tmp_path):
    (tmp_path / make_data.BREAST_DATASET).mkdir()
    code, _, err = run(capsys, "make-data", tmp_path)
    assert code == 2
    assert_one_error_line(err, make_data.BREAST_DATASET)


def test_usage_errors_exit_2_and_help_exits_0(capsys):
    assert cli.main([]) == 2
    assert cli.main(["segment", "a.nii.gz"]) == 2  # no -o
    assert cli.main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert "segment" in out and "info" in out and "make-data" in out
