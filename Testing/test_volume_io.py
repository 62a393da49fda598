"""Reading and writing volumes: formats, DICOM series, broken inputs, atomic writes, .seg.nrrd."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MultiTaskSegLib.engine.errors import InputError, OutputError
from MultiTaskSegLib.engine.geometry import Volume
from MultiTaskSegLib.engine.image_reading import read_volume
from MultiTaskSegLib.engine.image_writing import atomic_write_path, write_labelmap, write_segmentation_nrrd, write_volume

_ANGLE = np.radians(30)
OBLIQUE = np.array([[np.cos(_ANGLE), -np.sin(_ANGLE), 0.0],
                    [np.sin(_ANGLE), np.cos(_ANGLE), 0.0],
                    [0.0, 0.0, 1.0]])

from support import write_dicom_series


@pytest.fixture
def volume() -> Volume:
    rng = np.random.default_rng(0)
    array = rng.integers(-500, 1500, size=(6, 7, 8)).astype(np.int16)
    return Volume(array, (0.7, 0.8, 2.5), (12.5, -30.0, 44.0), OBLIQUE)


def assert_same_geometry(a: Volume, b: Volume, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_round_trip_through_each_writable_format(tmp_path, volume, suffix):
    path = write_volume(volume, tmp_path / f"image{suffix}")
    assert path.exists() and leftovers(tmp_path) == []
    back = read_volume(path)
    assert back.array.dtype == np.int16 and np.array_equal(back.array, volume.array)
    assert_same_geometry(back, volume)


@pytest.mark.parametrize("suffix", [".nhdr", ".mhd"])
def test_detached_header_formats_are_read(tmp_path, volume, suffix):
    sitk.WriteImage(volume.to_sitk(), str(tmp_path / f"image{suffix}"))
    back = read_volume(tmp_path / f"image{suffix}")
    assert np.array_equal(back.array, volume.array)
    assert_same_geometry(back, volume)
    with pytest.raises(OutputError, match=".nrrd"):  # cannot be renamed into place atomically
        write_volume(volume, tmp_path / f"other{suffix}")


def test_dicom_series_folder(tmp_path, volume):
    write_dicom_series(tmp_path / "series", volume, "1.2.826.0.1.3680043.2.1125.2.101", "T1 axial")
    back = read_volume(tmp_path / "series")
    assert np.array_equal(back.array.astype(np.int64), volume.array.astype(np.int64))
    assert_same_geometry(back, volume, atol=1e-4)


def test_folder_with_two_series_needs_a_choice(tmp_path, volume):
    folder = tmp_path / "two"
    first, second = "1.2.826.0.1.3680043.2.1125.2.101", "1.2.826.0.1.3680043.2.1125.2.202"
    write_dicom_series(folder, volume, first, "T1 axial")
    write_dicom_series(folder, volume.with_array(volume.array[:4] + 7), second, "FLAIR")
    with pytest.raises(InputError) as raised:
        read_volume(folder)
    message = str(raised.value)
    for expected in (first, second, '"T1 axial", 6 slices', '"FLAIR", 4 slices', "series_uid"):
        assert expected in message
    picked = read_volume(folder, series_uid=second)
    assert np.array_equal(picked.array, volume.array[:4] + 7)
    with pytest.raises(InputError, match="is not in folder"):
        read_volume(folder, series_uid="1.2.3")


def test_folder_without_dicom_is_explained(tmp_path):
    with pytest.raises(InputError, match="No DICOM series"):
        read_volume(tmp_path)


def test_missing_path_is_named(tmp_path):
    with pytest.raises(InputError, match="not found: .*nowhere.nii.gz"):
        read_volume(tmp_path / "nowhere.nii.gz")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file_is_an_input_error(tmp_path, suffix):
    # Random voxels do not compress, so cutting the file cuts the data (and the gzip trailer).
    array = np.random.default_rng(1).random((10, 20, 20)).astype(np.float32)
    path = tmp_path / f"image{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=True)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) * 2 // 3])
    with pytest.raises(InputError, match=f"Cannot read .*image{suffix}"):
        read_volume(path)


def test_garbage_file_is_an_input_error(tmp_path):
    path = tmp_path / "image.nrrd"
    path.write_text("not an image")
    with pytest.raises(InputError, match="image.nrrd"):
        read_volume(path)


def test_multi_gzip_member_nifti_is_complete(tmp_path, volume):
    plain = write_volume(volume, tmp_path / "plain.nii")
    content = plain.read_bytes()
    joined = tmp_path / "joined.nii.gz"  # as written by some parallel compressors
    joined.write_bytes(gzip.compress(content[:500]) + gzip.compress(content[500:]))
    assert np.array_equal(read_volume(joined).array, volume.array)


def test_nii_gz_is_read_even_beside_a_nii_of_the_same_name(tmp_path, volume):
    write_volume(volume, tmp_path / "image.nii.gz")
    write_volume(volume.with_array(volume.array + 1), tmp_path / "image.nii")
    assert np.array_equal(read_volume(tmp_path / "image.nii.gz").array, volume.array)
    assert np.array_equal(read_volume(tmp_path / "image.nii").array, volume.array + 1)


def test_vector_and_4d_images_need_a_component(tmp_path, volume):
    parts = [volume.array.astype(np.float32) + c for c in range(3)]
    vector = sitk.Compose([volume.with_array(p).to_sitk() for p in parts])
    sitk.WriteImage(vector, str(tmp_path / "vector.nrrd"))
    with pytest.raises(InputError, match="3 components.*component"):
        read_volume(tmp_path / "vector.nrrd")
    assert np.array_equal(read_volume(tmp_path / "vector.nrrd", component=1).array, parts[1])

    series = sitk.JoinSeries([volume.with_array(p).to_sitk() for p in parts])
    sitk.WriteImage(series, str(tmp_path / "series.nii.gz"))
    with pytest.raises(InputError, match="4D with 3 volumes"):
        read_volume(tmp_path / "series.nii.gz")
    assert np.array_equal(read_volume(tmp_path / "series.nii.gz", component=2).array, parts[2])
    with pytest.raises(InputError, match="out of range"):
        read_volume(tmp_path / "series.nii.gz", component=3)


def test_no_overwrite_without_the_flag(tmp_path, volume):
    path = write_volume(volume, tmp_path / "image.nrrd")
    with pytest.raises(OutputError, match="use --overwrite"):
        write_volume(volume.with_array(volume.array + 1), path)
    assert np.array_equal(read_volume(path).array, volume.array)  # untouched
    write_volume(volume.with_array(volume.array + 1), path, overwrite=True)
    assert np.array_equal(read_volume(path).array, volume.array + 1)


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_leaves_nothing_after_an_exception(tmp_path, exception):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(exception):
        with atomic_write_path(target, overwrite=False) as temporary:
            assert temporary.parent == tmp_path and temporary.name.endswith(".nii.gz")
            temporary.write_bytes(b"half written")
            raise exception("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write_path(target, overwrite=True) as temporary:
            temporary.write_text("new")
            raise RuntimeError
    assert target.read_text() == "old"
    with atomic_write_path(target, overwrite=True) as temporary:
        temporary.write_text("new")
    assert target.read_text() == "new" and leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz"])
def test_labelmap_has_the_reference_geometry(tmp_path, volume, suffix):
    labels = (volume.array > 500).astype(np.int64) + (volume.array > 1200)
    path = write_labelmap(labels, volume, tmp_path / f"labels{suffix}")
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(image), labels)
    # NIfTI stores its geometry in float32; NRRD/MHA in text to double precision (ITK
    # re-normalises NRRD space directions, which may change the last bit).
    assert_same_geometry(Volume.from_sitk(image), volume,
                         atol=1e-5 if suffix == ".nii.gz" else 1e-12)


def test_labelmap_must_match_the_reference(tmp_path, volume):
    with pytest.raises(ValueError, match="shape"):
        write_labelmap(np.zeros((2, 2, 2), np.uint8), volume, tmp_path / "labels.nrrd")


TISSUE = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~"
          "SCT^85756007^Tissue~^^~Anatomic codes - DICOM master list~^^~^^")
SEGMENTS = [
    {"name": "White matter", "color": (0.9, 0.9, 0.8), "label_value": 1, "terminology": TISSUE},
    {"name": "Ventricles", "color": (0.1, 0.4, 0.9), "label_value": 3, "terminology": ""},
    {"name": "Brain stem", "color": (0.5, 0.2, 0.1), "label_value": 5, "terminology": ""},
]


def read_with_slicer(path: Path):
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node.GetSegmentation()


def test_seg_nrrd_is_read_by_slicer(tmp_path, volume):
    vtk = pytest.importorskip("vtk")
    from vtk.util import numpy_support

    labels = np.zeros(volume.array.shape, np.uint8)
    labels[1:4, 2:5, 3:7] = 1
    labels[5, 6, 7] = 3  # segment 5 stays empty
    path = write_segmentation_nrrd(labels, volume, tmp_path / "result.seg.nrrd", SEGMENTS)
    assert leftovers(tmp_path) == []

    segmentation = read_with_slicer(path)
    assert segmentation.GetNumberOfSegments() == 3
    expected_ras = np.eye(4)
    expected_ras[:3, :3] = np.diag([-1, -1, 1]) @ volume.direction @ np.diag(volume.spacing)
    expected_ras[:3, 3] = np.diag([-1, -1, 1]) @ np.asarray(volume.origin)
    for index, segment_spec in enumerate(SEGMENTS):
        segment = segmentation.GetNthSegment(index)
        assert segment.GetName() == segment_spec["name"]
        np.testing.assert_allclose(segment.GetColor(), segment_spec["color"], atol=1e-5)
        assert segment.GetLabelValue() == segment_spec["label_value"]
        if segment_spec["terminology"]:  # without one, Slicer gives its default on reading
            tag = vtk.reference("")
            assert segment.GetTag("TerminologyEntry", tag)
            assert str(tag) == segment_spec["terminology"]

        labelmap = segment.GetRepresentation("Binary labelmap")
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(ijk_to_ras, expected_ras, atol=1e-6)
        scalars = labelmap.GetPointData().GetScalars()
        voxels = numpy_support.vtk_to_numpy(scalars) if scalars is not None else np.zeros(0)
        expected = np.count_nonzero(labels == segment_spec["label_value"])
        assert np.count_nonzero(voxels == segment_spec["label_value"]) == expected


def test_seg_nrrd_needs_a_segment_for_every_label(tmp_path, volume):
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"labels \[9\]"):
        write_segmentation_nrrd(labels, volume, tmp_path / "result.seg.nrrd", SEGMENTS)
    assert list(tmp_path.iterdir()) == []
