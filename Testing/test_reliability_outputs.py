"""Reliability, round 2 (issue 16): outputs. Nothing the user has is lost or changed, whatever
the disk, the file names, the model's class names or another process do.

Classes of the issue covered here: 1 (a full disk), 2 (an output that is an input), 3 (class
names as file names), 4 (file names that are not UTF-8), 5 (a file appearing at an output path),
8 (clashing output names), 12 (file modes, SIGTERM/SIGHUP), 14 (``-o O.MHA``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MultiTaskSegLib.engine import output_paths
from MultiTaskSegLib.engine.atomic_files import atomic_write_path
from MultiTaskSegLib.engine.batch import plan_jobs
from MultiTaskSegLib.engine.errors import OutputError
from MultiTaskSegLib.engine.image_reading import read_volume
from MultiTaskSegLib.engine.image_writing import write_labelmap, write_volume
from MultiTaskSegLib.engine.segmenter import Segmenter

from conftest import synthetic_volume
from support import assert_one_error_line, run

REPOSITORY = Path(__file__).resolve().parents[1]


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.fixture
def no_network(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the network ran although the problem was visible before")
    monkeypatch.setattr(Segmenter, "predict", forbidden)


def run_python(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (for what could abort or needs process-wide limits)."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "MultiTaskSeg"),
                                                                            str(REPOSITORY / "Testing")])})


# ---- 1: a full disk is never reported as success ------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_a_short_write_is_an_error_and_the_previous_file_stays(tmp_path, monkeypatch, suffix):
    """ITK's writers do not report a failed write: here the written file is cut short, as a full
    disk leaves it. The write is refused, the good file under the target name is untouched and no
    temporary file is left."""
    volume = synthetic_volume(shape=(12, 14, 16), seed=1)
    target = write_labelmap(np.ones(volume.array.shape, np.uint8), volume, tmp_path / f"labels{suffix}")
    before = target.read_bytes()
    real = sitk.WriteImage

    def short_write(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        data = Path(name).read_bytes()
        Path(name).write_bytes(data[: len(data) * 2 // 3])

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    with pytest.raises(OutputError, match="incomplete|Cannot write"):
        write_volume(volume, target, overwrite=True)
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_a_real_file_size_limit_is_an_error_with_exit_2(tmp_path, small_bundle_file):
    """A real failing write: RLIMIT_FSIZE makes the kernel refuse writes past 1000 bytes (EFBIG),
    as a full disk refuses them. Each format's write is refused with the previous file intact, and
    the command exits 2 with one line after the network ran, keeping the old labelmap."""
    code = f"""
import json, resource, signal
import numpy as np
from pathlib import Path
from conftest import synthetic_volume
from MultiTaskSegLib.engine.errors import OutputError
from MultiTaskSegLib.engine.image_writing import write_labelmap, write_volume
from MultiTaskSegLib.cli.program import main
volume = synthetic_volume(shape=(12, 14, 16), seed=1)
write_volume(volume, "input.nii")
results = {{}}
for suffix in (".nii", ".nii.gz", ".nrrd", ".mha"):
    write_labelmap(np.ones(volume.array.shape, np.uint8), volume, "old" + suffix)
results["before"] = {{s: Path("old" + s).read_bytes().hex() for s in (".nii", ".nii.gz", ".nrrd", ".mha")}}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
for suffix in (".nii", ".nii.gz", ".nrrd", ".mha"):
    try:
        write_volume(volume.with_array(np.random.default_rng(0).random(volume.array.shape)), "old" + suffix,
                     overwrite=True)
        results[suffix] = "written"
    except OutputError as error:
        results[suffix] = "refused: " + str(error)
results["exit"] = main(["segment", "input.nii", "-o", "old.nii", "--overwrite", "--model", "{small_bundle_file}",
                        "--device", "cpu", "--probabilities", "probs"])
results["after"] = {{s: Path("old" + s).read_bytes().hex() for s in (".nii", ".nii.gz", ".nrrd", ".mha")}}
print("RESULT" + json.dumps(results))
"""
    result = run_python(code, tmp_path)
    stdout, stderr = result.stdout.decode(), result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    results = json.loads(stdout.split("RESULT", 1)[1])
    for suffix in (".nii", ".nii.gz", ".nrrd", ".mha"):
        assert results[suffix].startswith("refused: Cannot write"), results[suffix]
    assert results["after"] == results["before"]
    assert results["exit"] == 2
    assert_one_error_line(stderr, "Cannot write", "unchanged")
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "probs") == []


# ---- 2: an input is never destroyed ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["same name", "other spelling", "hard link", "symbolic link"])
def test_an_output_that_is_an_input_is_refused_even_with_overwrite(capsys, tmp_path, image_files, small_bundle_file,
                                                                    no_network, how):
    source = image_files[0]
    before = source.read_bytes()
    if how == "same name":
        output = source
    elif how == "other spelling":
        output = source.parent / ".." / source.parent.name / source.name
    elif how == "hard link":
        output = tmp_path / "linked.nii.gz"
        os.link(source, output)
    else:
        output = tmp_path / "alias.nii.gz"
        output.symlink_to(source)
    code, _, err = run(capsys, "segment", source, "-o", output, "--overwrite", "--model", small_bundle_file)
    assert code == 2
    assert_one_error_line(err, "is the input", "destroy")
    assert source.read_bytes() == before


def test_a_probability_folder_holding_the_inputs_destroys_none(capsys, tmp_path, small_bundle_file, no_network):
    """An input whose name is that of another input's probability map: refused before anything
    runs, with --overwrite too; both inputs unchanged."""
    folder = tmp_path / "data"
    folder.mkdir()
    first = write_volume(synthetic_volume(seed=1), folder / "scan.nii.gz")
    second = write_volume(synthetic_volume(seed=2), folder / "scan_white_matter.nii.gz")
    before = [first.read_bytes(), second.read_bytes()]
    code, _, err = run(capsys, "segment", first, second, "-o", tmp_path / "labels", "--probabilities", folder,
                       "--overwrite", "--model", small_bundle_file)
    assert code == 2
    assert_one_error_line(err, "scan_white_matter.nii.gz", "is the input")
    assert [first.read_bytes(), second.read_bytes()] == before


def test_the_data_file_of_a_detached_header_counts_as_an_input(tmp_path):
    volume = synthetic_volume(shape=(4, 5, 6))
    header = tmp_path / "scan.nhdr"
    sitk.WriteImage(volume.to_sitk(), str(header))
    data = next(p for p in tmp_path.iterdir() if p != header)
    with pytest.raises(OutputError, match="is the input"):
        output_paths.check_output_paths([(data, None)], [header])


# ---- 3: class names from a model file never leave the chosen folder ---------------------------------


@pytest.mark.parametrize("name", ["../../escaped", "/etc/passwd", "a\\..\\b", "\0nul", ".hidden", "a b/c"])
def test_probability_map_names_stay_in_their_folder(tmp_path, name):
    """Whatever a class name holds (the bundle schema refuses these; this is the second line),
    its probability map is a plain file in the probability folder."""
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    jobs = plan_jobs([tmp_path / "scan.nii.gz"], tmp_path / "out" / "labels.nii.gz",
                     probability_dir=tmp_path / "probs", classes=[(1, name)])
    path = jobs[0].probabilities[0][1]
    assert path.parent == tmp_path / "probs"
    assert path.name.startswith("scan_") and not path.name.startswith(".") and "/" not in path.name
    assert "\0" not in path.name and "\\" not in path.name


# ---- 4: file names that are not UTF-8 ----------------------------------------------------------------


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs a file system that takes any bytes")
def test_file_names_that_are_not_utf8_are_read_and_written(tmp_path, small_bundle_file):
    """ITK aborts the process on such names (exit 134); they go through plain-named links. Run in
    a fresh process, so an abort would show as its exit code."""
    code = f"""
import os, numpy as np
from conftest import synthetic_volume
from MultiTaskSegLib.engine.image_writing import write_volume
from MultiTaskSegLib.engine.image_reading import read_volume
from MultiTaskSegLib.cli.program import main
folder = os.fsdecode(b"folder\\xff")
os.mkdir(folder)
source = os.path.join(folder, os.fsdecode(b"scan\\xfe.nii.gz"))
write_volume(synthetic_volume(seed=3), source)
assert read_volume(source).array.shape == (9, 14, 12)
output = os.path.join(folder, os.fsdecode(b"labels\\xfd.nrrd"))
code = main(["segment", source, "-o", output, "--model", "{small_bundle_file}", "--device", "cpu",
             "--probabilities", folder])
assert code == 0, code
assert read_volume(output).array.shape == (9, 14, 12)
print("OK", sorted(os.listdir(folder)))
"""
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert b"OK" in result.stdout
    names = os.listdir(tmp_path / os.fsdecode(b"folder\xff"))
    assert not [n for n in names if ".tmp-" in n]


# ---- 5: a file that appears at an output path after the start is not replaced ------------------------


def test_a_file_created_meanwhile_is_not_replaced(tmp_path, monkeypatch):
    target = tmp_path / "labels.nii.gz"
    real = sitk.WriteImage

    def other_process_writes_meanwhile(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        target.write_bytes(b"another process's file")

    monkeypatch.setattr(sitk, "WriteImage", other_process_writes_meanwhile)
    with pytest.raises(OutputError, match="exists already"):
        write_volume(synthetic_volume(), target)
    assert target.read_bytes() == b"another process's file"
    assert leftovers(tmp_path) == []


def test_the_command_does_not_replace_a_file_created_while_it_ran(capsys, tmp_path, image_files, small_bundle_file,
                                                                   monkeypatch):
    output = tmp_path / "labels.nii.gz"
    real = Segmenter.predict

    def predict_while_another_process_writes(self, *args, **kwargs):
        output.write_bytes(b"theirs")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "predict", predict_while_another_process_writes)
    code, _, err = run(capsys, "segment", image_files[0], "-o", output, "--model", small_bundle_file)
    assert code == 2
    assert_one_error_line(err, "exists already")
    assert output.read_bytes() == b"theirs"


# ---- 8: clashing output names are found before the network -------------------------------------------


def test_a_labelmap_named_like_a_probability_map_is_refused_before_the_network(capsys, tmp_path, image_files,
                                                                               small_bundle_file, no_network):
    probs = tmp_path / "probs"
    code, _, err = run(capsys, "segment", image_files[0], "-o", probs / "case01_white_matter.nii.gz",
                       "--probabilities", probs, "--overwrite", "--model", small_bundle_file)
    assert code == 2
    assert_one_error_line(err, "same file", "case01_white_matter.nii.gz")


def test_two_classes_whose_names_make_one_file_name_are_refused(tmp_path):
    with pytest.raises(OutputError, match="same file"):
        plan_jobs([tmp_path / "scan.nii.gz"], tmp_path / "labels.nii.gz", probability_dir=tmp_path / "p",
                  classes=[(1, "left lung"), (2, "left/lung")])


@pytest.mark.parametrize("insensitive", [True, False])
def test_names_differing_in_case_clash_where_the_file_system_ignores_case(tmp_path, monkeypatch, insensitive):
    """The file system is probed (a hidden file, looked up by its upper-case name); a probe that
    says "case-insensitive" (macOS, Windows) makes Scan and scan one output."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    inputs = [tmp_path / "one" / "Scan.nii.gz", tmp_path / "two" / "scan.nii.gz"]
    monkeypatch.setattr(output_paths, "_probe", lambda ancestor, folder: (None, insensitive))
    if insensitive:
        with pytest.raises(OutputError, match="differing only in case"):
            plan_jobs(inputs, tmp_path / "out")
    else:
        assert len(plan_jobs(inputs, tmp_path / "out")) == 2


def test_the_probe_tells_this_file_system_correctly(tmp_path):
    """On this machine's file system (case-sensitive ext4/tmpfs/overlay on Linux) the probe says so
    and leaves nothing behind."""
    problem, insensitive = output_paths._FolderProbe().probe(tmp_path / "not" / "yet")
    assert problem is None
    assert insensitive == (sys.platform in ("win32", "darwin"))
    assert list(tmp_path.iterdir()) == []


# ---- 12: file modes; SIGTERM and SIGHUP ---------------------------------------------------------------


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_outputs_get_the_umask_mode(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = write_volume(synthetic_volume(shape=(3, 4, 5)), tmp_path / "out.nii.gz")
        with atomic_write_path(tmp_path / "note.txt") as temporary:
            temporary.write_text("text")
    finally:
        os.umask(previous)
    for written in (path, tmp_path / "note.txt"):
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_while_writing_leaves_no_temporary_file(capsys, tmp_path, image_files, small_bundle_file,
                                                              monkeypatch, signal_name):
    """The signal arrives while ITK writes the temporary file: exit 128 + N, one message, neither
    the output nor a temporary file left, and the previous handler back in place afterwards."""
    number = getattr(signal, signal_name)
    real = sitk.WriteImage

    def write_then_get_signalled(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        os.kill(os.getpid(), number)

    monkeypatch.setattr(sitk, "WriteImage", write_then_get_signalled)
    before = signal.getsignal(number)
    results = tmp_path / "results"
    code, _, err = run(capsys, "segment", image_files[0], "-o", results / "labels.nii.gz", "--model",
                       small_bundle_file)
    assert code == 128 + number
    assert f"stopped by {signal_name}" in err and "Traceback" not in err
    assert list(results.iterdir()) == []
    assert signal.getsignal(number) == before


# ---- 14: an upper-case suffix ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["O.MHA", "O.NII.GZ", "O.Nrrd"])
def test_an_upper_case_suffix_gives_a_file_that_reads_back(capsys, tmp_path, image_files, small_bundle_file, name):
    code, _, err = run(capsys, "segment", image_files[0], "-o", tmp_path / name, "--model", small_bundle_file)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [name]  # one file, no detached .raw
    assert read_volume(tmp_path / name).array.shape == read_volume(image_files[0]).array.shape
