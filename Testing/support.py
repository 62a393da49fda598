"""Helpers shared by several test files: running the command line, a random direction matrix,
a DICOM series writer. Test files import them from here, never from each other."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from hypothesis import strategies as st

from MultiTaskSegLib.cli import program as cli
from MultiTaskSegLib.engine.geometry import Volume


def run(capsys, *argv):
    """(exit code, stdout, stderr) of ``multitaskseg argv``."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str):
    return [line for line in err.splitlines() if line.startswith("multitaskseg: error:")]


def assert_one_error_line(err: str, *fragments: str) -> str:
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def random_direction():
    signed_permutation = st.tuples(st.permutations([0, 1, 2]),
                                   st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3))

    def permutation_matrix(drawn):
        order, signs = drawn
        matrix = np.zeros((3, 3))
        for column, row in enumerate(order):
            matrix[row, column] = signs[column]
        return matrix

    def rotation_matrix(quaternion):
        q = np.asarray(quaternion)
        w, x, y, z = q / np.linalg.norm(q)
        return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])

    quaternion = st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(
        lambda q: np.linalg.norm(q) > 0.1)
    return st.one_of(signed_permutation.map(permutation_matrix), quaternion.map(rotation_matrix))


def write_dicom_series(folder: Path, volume: Volume, series_uid: str, description: str) -> None:
    """One file per slice with the tags a scanner writes, as SimpleITK's DICOM series example."""
    folder.mkdir(exist_ok=True)
    image = volume.to_sitk()
    d = volume.direction
    shared = {
        "0008|0021": time.strftime("%Y%m%d"), "0008|0031": time.strftime("%H%M%S"),
        "0008|0008": "DERIVED\\SECONDARY", "0008|0060": "MR",
        "0020|000e": series_uid, "0008|103e": description,
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1.1",  # study instance UID
        "0020|0037": "\\".join(str(v) for v in (d[0, 0], d[1, 0], d[2, 0], d[0, 1], d[1, 1], d[2, 1])),
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        for tag, value in shared.items():
            slice_image.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_image.SetMetaData("0020|0032", "\\".join(str(v) for v in position))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"{series_uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(slice_image)
