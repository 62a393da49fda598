"""nnU-Net v2 dataset folders: write, load back, map labels by name, and clear errors."""

import json

import numpy as np
import pytest

from MultiTaskSegLib.training.datasets import load_dataset, write_dataset
from MultiTaskSegLib.engine.errors import InputError, OutputError
from MultiTaskSegLib.engine.geometry import Volume
from MultiTaskSegLib.engine import image_reading

BUNDLE_CLASSES = ["background", "white matter", "cortical grey matter", "basal ganglia and thalami",
                  "ventricular cerebrospinal fluid", "cerebellum", "brain stem", "pectoral muscle",
                  "coronary arteries"]


def _case(case_id, split, seed):
    rng = np.random.default_rng(seed)
    image = Volume(rng.normal(100, 10, (6, 7, 8)).astype(np.float32), spacing=(0.9, 1.1, 1.3),
                   origin=(5.0, -3.0, 2.0), direction=np.diag([1.0, -1.0, 1.0]))
    labels = (rng.random((6, 7, 8)) > 0.7).astype(np.uint8)
    return case_id, image, labels, split


@pytest.fixture
def written(tmp_path):
    cases = [_case("p001", "train", 1), _case("p002", "train", 2), _case("p003", "test", 3)]
    dataset = write_dataset(tmp_path, "Dataset042_Pecs", "MR", {"background": 0, "Pectoral Muscle": 1}, cases,
                            task="breast")
    return dataset, cases


def test_round_trip_keeps_cases_geometry_and_metadata(written):
    dataset, cases = written
    assert dataset.name == "Dataset042_Pecs" and dataset.task == "breast" and dataset.modality == "MR"
    assert [c.case_id for c in dataset.training] == ["p001", "p002"]
    assert [c.case_id for c in dataset.test] == ["p003"]
    assert dataset.training[0].image_path.name == "p001_0000.nii.gz"
    meta = json.loads((dataset.root / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["channel_names"] == {"0": "T1"} and meta["file_ending"] == ".nii.gz"
    image = image_reading.read_volume(dataset.training[1].image_path)
    labels = image_reading.read_volume(dataset.training[1].label_path)
    np.testing.assert_allclose(image.array, cases[1][1].array, rtol=1e-6)
    np.testing.assert_array_equal(labels.array, cases[1][2])
    np.testing.assert_allclose(image.direction, np.diag([1.0, -1.0, 1.0]))
    assert image.spacing == pytest.approx((0.9, 1.1, 1.3))


def test_label_mapping_by_name_ignores_case(written):
    dataset, _ = written
    assert dataset.label_mapping(BUNDLE_CLASSES) == {0: 0, 1: 7}


def test_unknown_label_name_says_how_to_fix(written):
    dataset, _ = written
    with pytest.raises(InputError, match="class_map"):
        dataset.label_mapping(["background", "coronary arteries"])


def test_class_map_in_dataset_json_renames_labels(written):
    dataset, _ = written
    path = dataset.root / "dataset.json"
    meta = json.loads(path.read_text())
    meta["labels"] = {"background": 0, "pectoralis major": 1}
    meta["multitaskseg"] = {"class_map": {"pectoralis major": "pectoral muscle"}}  # task inferred from the class
    path.write_text(json.dumps(meta))
    reloaded = load_dataset(dataset.root)
    assert reloaded.task == "breast"
    assert reloaded.label_mapping(BUNDLE_CLASSES) == {0: 0, 1: 7}


def test_ct_channel_gives_ct_modality(tmp_path):
    dataset = write_dataset(tmp_path, "Dataset007_Cor", "CT", {"background": 0, "coronary arteries": 1},
                            [_case("c1", "train", 4)], task="coronary")
    assert dataset.modality == "CT"
    assert json.loads((dataset.root / "dataset.json").read_text())["channel_names"] == {"0": "CT"}


def test_existing_dataset_needs_overwrite(written, tmp_path):
    with pytest.raises(OutputError, match="overwrite"):
        write_dataset(tmp_path, "Dataset042_Pecs", "MR", {"background": 0, "pectoral muscle": 1},
                      [_case("x", "train", 5)], task="breast")
    replaced = write_dataset(tmp_path, "Dataset042_Pecs", "MR", {"background": 0, "pectoral muscle": 1},
                             [_case("x", "train", 5)], task="breast", overwrite=True)
    assert [c.case_id for c in replaced.training] == ["x"] and replaced.test == []


def test_failed_write_leaves_nothing_behind(tmp_path):
    bad = [_case("ok", "train", 1), ("bad", _case("b", "train", 2)[1], np.zeros((2, 2, 2), np.uint8), "train")]
    with pytest.raises(OutputError, match="do not match"):
        write_dataset(tmp_path, "Dataset009_Bad", "MR", {"background": 0, "pectoral muscle": 1}, bad, task="breast")
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset_json(written):
    dataset, _ = written
    (dataset.root / "dataset.json").unlink()
    with pytest.raises(InputError, match="no dataset.json"):
        load_dataset(dataset.root)


def test_broken_dataset_json(written):
    dataset, _ = written
    (dataset.root / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_dataset(dataset.root)


def test_dataset_json_without_labels(written):
    dataset, _ = written
    path = dataset.root / "dataset.json"
    meta = json.loads(path.read_text())
    del meta["labels"]
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="lacks labels"):
        load_dataset(dataset.root)


def test_region_based_labels_are_refused(written):
    dataset, _ = written
    path = dataset.root / "dataset.json"
    meta = json.loads(path.read_text())
    meta["labels"]["Pectoral Muscle"] = [1, 2]
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="region-based"):
        load_dataset(dataset.root)


def test_missing_label_file(written):
    dataset, _ = written
    dataset.training[0].label_path.unlink()
    with pytest.raises(InputError, match="p001.*no labelmap"):
        load_dataset(dataset.root)


def test_image_without_channel_suffix(written):
    dataset, _ = written
    dataset.training[0].image_path.rename(dataset.root / "imagesTr" / "p001.nii.gz")
    with pytest.raises(InputError, match="_0000"):
        load_dataset(dataset.root)


def test_num_training_mismatch(written):
    dataset, _ = written
    path = dataset.root / "dataset.json"
    meta = json.loads(path.read_text())
    meta["numTraining"] = 5
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="numTraining"):
        load_dataset(dataset.root)


def test_unknown_task_must_be_declared(written):
    dataset, _ = written
    path = dataset.root / "dataset.json"
    meta = json.loads(path.read_text())
    meta["labels"] = {"background": 0, "liver": 1}
    del meta["multitaskseg"]
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match='"task"'):
        load_dataset(dataset.root)
