"""Reliability, round 2 (issue 16): the command. Every argument and environment variable is
validated with one line and exit 2; every exception a library raises comes out as one line too.

Classes of the issue covered here: 11 (evaluate with a label that never occurs; train with
negative steps), 13 (devices, environment variables, output parents, bad train/evaluate
arguments, library exceptions).
"""

from __future__ import annotations

import numpy as np
import pytest

from MultiTaskSegLib.cli import program
from MultiTaskSegLib.engine import bundle as bundle_module
from MultiTaskSegLib.engine.geometry import Volume
from MultiTaskSegLib.engine.segmenter import Segmenter
from MultiTaskSegLib.training import evaluation, loop
from MultiTaskSegLib.training.datasets import write_dataset

from support import assert_one_error_line, run

BRAIN_LABELS = {"background": 0, "white matter": 1, "cortical grey matter": 2, "basal ganglia and thalami": 3,
                "ventricular cerebrospinal fluid": 4, "cerebellum": 5, "brain stem": 6}


@pytest.fixture
def no_network(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the network ran although the command should have stopped before")
    monkeypatch.setattr(Segmenter, "predict", forbidden)
    monkeypatch.setattr(evaluation, "evaluate_cases", forbidden)
    monkeypatch.setattr(loop, "train", forbidden)


# ---- devices and environment variables --------------------------------------------------------------


@pytest.mark.parametrize("device, message", [
    ("mps", "Unknown or unsupported device 'mps'"),
    ("tpu", "use auto, cpu, cuda or cuda:N"),
    ("cuda:abc", "use auto, cpu, cuda or cuda:N"),
    ("cuda:7", "cuda"),  # no GPU here: "finds none"; on a machine with fewer GPUs: "has N GPU(s)"
])
def test_a_device_the_machine_lacks_is_a_one_line_error(capsys, tmp_path, image_files, small_bundle_file, no_network,
                                                      device, message):
    code, _, err = run(capsys, "segment", image_files[0], "-o", tmp_path / "x.nii.gz", "--model", small_bundle_file,
                       "--device", device)
    assert code == 2
    assert_one_error_line(err, message)


@pytest.mark.parametrize("variable, value", [
    ("MULTITASKSEG_THREADS", "eight"), ("MULTITASKSEG_THREADS", "0"), ("MULTITASKSEG_THREADS", "1e9"),
    ("MULTITASKSEG_MEMORY_BUDGET", "lots"), ("MULTITASKSEG_MEMORY_BUDGET", "-5"),
])
def test_a_bad_environment_variable_is_a_one_line_error(capsys, tmp_path, image_files, small_bundle_file, no_network,
                                                        monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    code, _, err = run(capsys, "segment", image_files[0], "-o", tmp_path / "x.nii.gz", "--model", small_bundle_file)
    assert code == 2
    assert_one_error_line(err, variable, repr(value))


def test_a_model_path_in_the_environment_that_is_a_folder_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MULTITASKSEG_MODEL", str(tmp_path))
    code, _, err = run(capsys, "info")
    assert code == 2
    assert_one_error_line(err, str(tmp_path), "folder")


# ---- segment arguments and outputs ------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--spacing", "1e-5"], "more than 2**31"),
    (["--spacing", "inf"], "argument --spacing: must be a positive finite number"),
    (["--spacing", "nan"], "argument --spacing"),
    (["--spacing", "-1"], "argument --spacing"),
    (["--component", "-1"], "argument --component: must be a whole number of at least 0"),
    (["--format", "png"], "argument --format"),
    (["--modality", "PET"], "argument --modality"),
])
def test_bad_segment_arguments_are_one_line_errors(capsys, tmp_path, image_files, small_bundle_file, monkeypatch,
                                                   argv, message):
    monkeypatch.setattr("MultiTaskSegLib.engine.segmenter.dense_probabilities",
                        lambda *a, **k: pytest.fail("the network ran"))
    code, _, err = run(capsys, "segment", image_files[0], "-o", tmp_path / "x.nii.gz", "--model", small_bundle_file,
                       *argv)
    assert code == 2
    assert_one_error_line(err, message)


def test_an_output_folder_that_is_a_file_is_a_one_line_error(capsys, tmp_path, image_files, small_bundle_file,
                                                            no_network):
    (tmp_path / "taken").write_text("a file")
    code, _, err = run(capsys, "segment", image_files[0], "-o", tmp_path / "taken" / "x.nii.gz", "--model",
                       small_bundle_file)
    assert code == 2
    assert_one_error_line(err, "is a file, not a folder")


def test_an_output_folder_that_takes_no_files_is_a_one_line_error(capsys, tmp_path, image_files, small_bundle_file,
                                                                  no_network, monkeypatch):
    """A read-only place is found by creating a probe file there before the network runs; /proc
    refuses new files even to root (who passes every permission check)."""
    target = "/proc/x.nii.gz" if __import__("os").path.isdir("/proc/self") else None
    if target is None:
        pytest.skip("needs /proc")
    code, _, err = run(capsys, "segment", image_files[0], "-o", target, "--model", small_bundle_file)
    assert code == 2
    assert_one_error_line(err, "does not take new files")


def test_argparse_errors_are_one_line(capsys):
    assert program.main(["segment", "x.nii.gz"]) == 2
    assert_one_error_line(capsys.readouterr().err, "segment:", "-o/--output", "--help")
    assert program.main(["no-such-command"]) == 2
    assert_one_error_line(capsys.readouterr().err, "invalid choice")


# ---- train and evaluate -----------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--steps", "-5"], "argument --steps: must be a whole number of at least 1"),
    (["--steps", "0"], "argument --steps"),
    (["--steps", "ten"], "argument --steps"),
    (["--lr", "nan"], "argument --lr: must be a positive finite number"),
    (["--lr", "-1e-3"], "argument --lr"),
    (["--layers", "1000"], "argument --layers: must be at most 100"),
    (["--block", "0"], "argument --block"),
    (["--blocks-per-task", "-2"], "argument --blocks-per-task"),
    (["--workers", "-1"], "argument --workers"),
    (["--time-limit", "0"], "argument --time-limit"),
    (["--seed", "-3"], "argument --seed"),
    (["--device", "mps"], "Unknown or unsupported device"),
])
def test_bad_train_arguments_are_one_line_errors_and_train_nothing(capsys, tmp_path, no_network, argv, message):
    dataset = tmp_path / "Dataset001_Brain"
    dataset.mkdir()
    code, _, err = run(capsys, "train", dataset, "-o", tmp_path / "model.safetensors", "--work-dir", tmp_path / "work",
                       *argv)
    assert code == 2
    assert_one_error_line(err, message)
    assert not (tmp_path / "model.safetensors").exists()


def test_train_output_that_is_a_dataset_file_is_refused(capsys, tmp_path, no_network):
    dataset = tmp_path / "Dataset001_Brain"
    dataset.mkdir()
    (dataset / "dataset.json").write_text("{}")
    code, _, err = run(capsys, "train", dataset, "-o", dataset / "dataset.json", "--work-dir", tmp_path / "work",
                       "--overwrite")
    assert code == 2
    assert_one_error_line(err, "is the input")
    assert (dataset / "dataset.json").read_text() == "{}"


@pytest.mark.parametrize("argv, message", [
    (["--blocks-per-batch", "0"], "argument --blocks-per-batch"),
    (["--steps-per-task", "-1"], "argument --steps-per-task"),
    (["--minutes-per-task", "inf"], "argument --minutes-per-task"),
])
def test_bad_experiment_arguments_are_one_line_errors(capsys, tmp_path, argv, message):
    code, _, err = run(capsys, "experiments", tmp_path, "--work-dir", tmp_path / "work", *argv)
    assert code == 2
    assert_one_error_line(err, message)


def _brain_dataset(root, present_labels):
    """A brain dataset: one training case with every label, one test case with only ``present_labels``."""
    shape = (8, 10, 14)
    image = Volume(np.random.default_rng(0).uniform(50, 150, shape).astype(np.float32))

    def labelmap(values):
        labels = np.zeros(shape, np.uint8)
        for number, value in enumerate(values):
            labels[:, :, 2 * number:2 * number + 2] = value
        return labels

    cases = [("t0", image, labelmap(range(1, 7)), "train"), ("b0", image, labelmap(present_labels), "test")]
    return write_dataset(root, "Dataset001_Brain", "MR", BRAIN_LABELS, cases, task="brain")


def test_evaluate_refuses_a_label_that_never_occurs_instead_of_reporting_dice_0(capsys, tmp_path, small_bundle_file,
                                                                                no_network):
    dataset = _brain_dataset(tmp_path, present_labels=[1, 2, 3, 4, 5])  # no brain stem (6)
    code, _, err = run(capsys, "evaluate", dataset.root, "--model", small_bundle_file, "-o", tmp_path / "report",
                       "--device", "cpu")
    assert code == 2
    assert_one_error_line(err, "'brain stem' (value 6)", "occur in none", "meaningless")
    assert not (tmp_path / "report.md").exists()


def test_evaluate_report_over_its_model_is_refused(capsys, tmp_path, small_bundle_file, no_network):
    dataset = _brain_dataset(tmp_path, present_labels=[1, 2, 3, 4, 5, 6])
    model = tmp_path / "model.json"
    model.write_bytes(small_bundle_file.read_bytes())
    code, _, err = run(capsys, "evaluate", dataset.root, "--model", model, "-o", tmp_path / "model", "--overwrite")
    assert code == 2
    assert_one_error_line(err, "is the input")


# ---- library exceptions at the boundary -------------------------------------------------------------


@pytest.mark.parametrize("error, fragments", [
    (RuntimeError("CUDA error: an illegal memory access"), ["unexpected RuntimeError", "illegal memory access",
                                                           "MULTITASKSEG_DEBUG=1"]),
    (PermissionError(13, "Permission denied", "/data/model.safetensors"), ["/data/model.safetensors",
                                                                            "Permission denied"]),
    (MemoryError(), ["out of memory"]),
    (RecursionError("maximum recursion depth exceeded"), ["unexpected RecursionError"]),
])
def test_library_exceptions_are_one_line_errors_with_exit_2(capsys, tmp_path, image_files, monkeypatch, error,
                                                            fragments):
    def failing(*args, **kwargs):
        raise error
    monkeypatch.setattr(bundle_module, "load_bundle", failing)
    code, _, err = run(capsys, "segment", image_files[0], "-o", tmp_path / "x.nii.gz")
    assert code == 2
    assert_one_error_line(err, *fragments)


def test_the_debug_variable_shows_the_traceback(tmp_path, image_files, monkeypatch):
    monkeypatch.setattr(bundle_module, "load_bundle", lambda *a, **k: 1 / 0)
    monkeypatch.setenv("MULTITASKSEG_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        program.main(["segment", str(image_files[0]), "-o", str(tmp_path / "x.nii.gz")])
