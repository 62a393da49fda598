"""Reliability, round 2 (issue 16): inputs that block, misplace slices or carry impossible values
are refused with an InputError saying what is wrong, before anything is segmented.

Classes of the issue covered here: 6 (DICOM series that are not one regular grid), 7 (scaled
and sheared direction matrices), 10 (inputs that block), 13 (complex voxels, NaN and extreme
origins and spacings), 14 (float64 beyond float32, the infinite-spacing message, upper-case
suffixes on input).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MultiTaskSegLib.engine.errors import InputError, OutputError
from MultiTaskSegLib.engine.geometry import Volume, to_canonical, validate_volume
from MultiTaskSegLib.engine.image_reading import read_volume
from MultiTaskSegLib.engine.image_writing import write_labelmap, write_volume
from MultiTaskSegLib.engine.segmenter import Segmenter

from conftest import synthetic_volume
from support import assert_one_error_line, run, write_dicom_series

UID = "1.2.826.0.1.3680043.2.1125.2.404"


@pytest.fixture
def watchdog():
    """Turn a hang into a failure: SIGALRM interrupts a blocked open() or read()."""
    def hung(signum, frame):
        raise AssertionError("reading blocked: the input should have been refused before it was opened")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def mha(folder: Path, spacing="1 1 1", offset="0 0 0", matrix="1 0 0 0 1 0 0 0 1", data="LOCAL") -> Path:
    """A 5 x 4 x 3 MetaImage with the given header fields (raw data in a separate file unless LOCAL)."""
    values = (np.arange(60, dtype=np.int16) % 17 + 1).tobytes()
    header = (f"ObjectType = Image\nNDims = 3\nDimSize = 5 4 3\nElementType = MET_SHORT\n"
              f"ElementSpacing = {spacing}\nOffset = {offset}\nTransformMatrix = {matrix}\n")
    if data == "LOCAL":
        path = folder / "image.mha"
        path.write_bytes((header + "ElementDataFile = LOCAL\n").encode() + values)
    else:
        path = folder / "image.mhd"
        path.write_text(header + f"ElementDataFile = {data}\n")
        if not os.path.isabs(data):
            (folder / data).write_bytes(values)
    return path


# ---- 10: inputs that block are refused before they are opened ----------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_is_refused(capsys, tmp_path, watchdog, small_bundle_file):
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="named pipe"):
        read_volume(fifo)
    code, _, err = run(capsys, "segment", fifo, "-o", tmp_path / "out.nii.gz", "--model", small_bundle_file)
    assert code == 2
    assert_one_error_line(err, "named pipe", "not a regular file")


@pytest.mark.parametrize("data_file", ["/dev/stdin", "/dev/zero"])
def test_a_detached_header_whose_data_is_a_device_is_refused(tmp_path, watchdog, data_file):
    nhdr = tmp_path / "scan.nhdr"
    nhdr.write_text(f"NRRD0004\ntype: short\ndimension: 3\nsizes: 5 4 3\nencoding: raw\nendian: little\n"
                    f"data file: {data_file}\n")
    with pytest.raises(InputError, match="data file .*is a device"):
        read_volume(nhdr)
    with pytest.raises(InputError, match="is a device"):
        read_volume(mha(tmp_path, data=data_file))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_dicom_folder_holding_a_named_pipe_is_refused(tmp_path, watchdog):
    volume = Volume(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) % 40 + 1)
    write_dicom_series(tmp_path / "series", volume, UID, "T1")
    os.mkfifo(tmp_path / "series" / "pipe")
    with pytest.raises(InputError, match="pipe.*named pipe"):
        read_volume(tmp_path / "series")


# ---- 6: DICOM series that are not one regular grid ----------------------------------------------------


@pytest.fixture
def series(tmp_path):
    """A 6-slice series, 2 mm apart; returns its slice files in position order."""
    volume = Volume((np.arange(6 * 7 * 8).reshape(6, 7, 8) % 50 + 1).astype(np.int16), (0.8, 0.9, 2.0))
    write_dicom_series(tmp_path / "series", volume, UID, "T1")
    return sorted((tmp_path / "series").iterdir())


def _retag(source: Path, tag: str, value: str, target: Path = None, instance_uid: str = None) -> None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source))
    image = reader.Execute()
    for key in reader.GetMetaDataKeys():
        image.SetMetaData(key, reader.GetMetaData(key))
    image.SetMetaData(tag, value)
    if instance_uid:
        image.SetMetaData("0008|0018", instance_uid)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(target or source))
    writer.Execute(image)


def _position(path: Path) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData("0020|0032")


def test_a_complete_series_is_read(series):
    assert read_volume(series[0].parent).array.shape == (6, 7, 8)


def test_a_missing_slice_is_refused_naming_the_gap(series):
    series[3].unlink()
    with pytest.raises(InputError, match=r"404_002.dcm and 404_004.dcm are 4 mm apart, the others 2 mm: about 1 "
                                         r"slice\(s\) are missing"):
        read_volume(series[0].parent)


def test_duplicate_positions_are_refused(series):
    _retag(series[2], "0020|0032", _position(series[2]), series[0].parent / "copy.dcm", UID + ".99")
    with pytest.raises(InputError, match="same position.*duplicate"):
        read_volume(series[0].parent)


def test_mixed_orientations_are_refused(series):
    _retag(series[2], "0020|0037", "1\\0\\0\\0\\0\\-1")
    with pytest.raises(InputError, match="different orientations"):
        read_volume(series[0].parent)


def test_a_corrupt_slice_is_refused_and_named(series):
    series[3].write_bytes(b"not a DICOM file" * 20)
    with pytest.raises(InputError, match=r"missing there.*not readable DICOM.*404_003\.dcm"):
        read_volume(series[0].parent)


def test_a_slice_with_truncated_pixel_data_is_refused(series):
    data = series[3].read_bytes()
    series[3].write_bytes(data[:-40])  # header intact, the last pixels cut off
    with pytest.raises(InputError, match="404_003.dcm"):
        read_volume(series[0].parent)


def test_a_tilted_stack_is_refused(series):
    for number, path in enumerate(series):
        x, y, z = (float(v) for v in _position(path).split("\\"))
        _retag(path, "0020|0032", f"{x}\\{y + 0.5 * number}\\{z}")
    with pytest.raises(InputError, match="shifted within its plane"):
        read_volume(series[0].parent)


# ---- 7: scaled and sheared direction matrices -------------------------------------------------------


def test_a_scaled_direction_matrix_becomes_spacing_with_the_same_geometry(tmp_path):
    """MetaImage may store scaled direction columns; the volume holds unit columns and the scale in
    its spacing: every voxel stays at its physical place, in NIfTI too."""
    volume = read_volume(mha(tmp_path, spacing="1 1 1", matrix="2 0 0 0 1 0 0 0 3"))
    assert volume.spacing == (2.0, 1.0, 3.0)
    assert np.allclose(volume.direction, np.eye(3))
    back = read_volume(write_volume(volume, tmp_path / "copy.nii.gz"))
    assert np.allclose(back.index_to_physical([[4, 3, 2]]), [[8.0, 3.0, 6.0]])


def test_a_sheared_direction_matrix_is_kept_in_nrrd_and_refused_for_nifti(capsys, tmp_path, small_bundle_file,
                                                                         monkeypatch):
    shear = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    source = write_volume(synthetic_volume(direction=shear), tmp_path / "sheared.mha")
    volume = read_volume(source)
    with pytest.raises(OutputError, match="sheared.*NIfTI"):
        write_labelmap(np.zeros(volume.array.shape, np.uint8), volume, tmp_path / "labels.nii.gz")
    kept = read_volume(write_labelmap(np.zeros(volume.array.shape, np.uint8), volume, tmp_path / "labels.nrrd"))
    assert np.allclose(kept.index_to_physical_matrix, volume.index_to_physical_matrix, atol=1e-9)

    real = Segmenter.predict
    calls = []
    monkeypatch.setattr(Segmenter, "predict", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    code, _, err = run(capsys, "segment", source, "-o", tmp_path / "out.nii.gz", "--model", small_bundle_file)
    assert code == 2 and calls == []  # refused before the network
    assert_one_error_line(err, "sheared", ".nrrd")
    code, _, err = run(capsys, "segment", source, "-o", tmp_path / "out.seg.nrrd", "--model", small_bundle_file)
    assert code == 0, err


# ---- 13, 14: impossible voxel values, spacings and origins -------------------------------------------


def test_complex_voxels_are_refused(tmp_path):
    path = tmp_path / "complex.nrrd"
    sitk.WriteImage(sitk.Image([5, 4, 3], sitk.sitkComplexFloat32), str(path))
    with pytest.raises(InputError, match="complex-valued"):
        read_volume(path)
    with pytest.raises(InputError, match="complex-valued"):
        validate_volume(Volume(np.ones((3, 4, 5), np.complex64)))


@pytest.mark.parametrize("field, value, message", [
    ("spacing", "inf 1 1", "not finite"),
    ("spacing", "nan 1 1", "not finite"),
    ("spacing", "1e300 1 1", "outside"),
    ("spacing", "0 1 1", "zero, negative, infinite or not a number"),
    ("offset", "nan 0 0", "not finite"),
    ("offset", "1e308 0 0", "origin"),
])
def test_impossible_spacings_and_origins_in_a_header_are_refused(tmp_path, field, value, message):
    with pytest.raises(InputError, match=message):
        read_volume(mha(tmp_path, **{field: value}))


@pytest.mark.parametrize("spacing, origin, message", [
    ((np.nan, 1, 1), (0, 0, 0), "not finite"),
    ((np.inf, 1, 1), (0, 0, 0), "not finite"),
    ((1e-300, 1, 1), (0, 0, 0), "outside"),
    ((1, 1, 1), (1e300, 0, 0), "origin"),
    ((1, 1, 1), (0, np.nan, 0), "origin"),
])
def test_impossible_geometry_in_memory_is_refused(spacing, origin, message):
    volume = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 1, spacing, origin)
    with pytest.raises(InputError, match=message):
        validate_volume(volume)


def test_a_singular_direction_matrix_is_refused():
    direction = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(InputError, match="singular"):
        validate_volume(Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 1, direction=direction))


def test_float64_intensities_beyond_float32_are_refused_not_segmented_as_background():
    array = np.arange(24, dtype=np.float64).reshape(2, 3, 4) * 1e300
    with pytest.raises(InputError, match="beyond the float32 range"):
        validate_volume(Volume(array))


def test_a_very_fine_target_spacing_is_refused_without_overflow():
    volume = synthetic_volume(shape=(40, 40, 40))
    with pytest.raises(InputError, match=r"more than 2\*\*31.*TiB"):
        to_canonical(volume, 1e-5)
    with pytest.raises(InputError, match="positive finite"):
        to_canonical(volume, float("inf"))


@pytest.mark.parametrize("name", ["SCAN.MHA", "Scan.Nii.Gz", "scan.NRRD"])
def test_upper_case_suffixes_are_read(tmp_path, name):
    volume = synthetic_volume(shape=(4, 5, 6))
    path = write_volume(volume, tmp_path / ("x" + name[name.index("."):].lower()))
    shutil.move(path, tmp_path / name)
    assert np.array_equal(read_volume(tmp_path / name).array, volume.array)
