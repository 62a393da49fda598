"""The evaluation battery on a tiny case: the held-out brain at 8 mm and a 4-layer random model. It
checks the mechanics (every variant segmented through the Segmenter, metrics defined, writers), the
re-acquisition's alignment of image and labels, and determinism by seed; not the model's quality."""

import dataclasses
import json

import numpy as np
import pytest

from MultiTaskSegLib.data.evaluation_battery import (HEAD_MASK, VARIANTS, downsampled, icbm2009a_held_out,
                                                     make_variant, run_battery, write_battery)
from MultiTaskSegLib.data.reacquisition import Acquisition, reacquire
from MultiTaskSegLib.engine.errors import InputError
from MultiTaskSegLib.engine.geometry import Volume
from conftest import small_random_bundle
from support import assert_one_error_line, run


@pytest.fixture(scope="module")
def held_out():
    return icbm2009a_held_out()


@pytest.fixture(scope="module")
def tiny_brain(held_out):
    return downsampled(held_out, 4)


def test_the_battery_runs_every_variant_on_a_tiny_case_and_writes_its_tables(held_out, tmp_path):
    brain = downsampled(held_out, 8)
    results = run_battery(small_random_bundle(0), brain, device="cpu", precision="fp32")
    assert list(results["variants"]) == list(VARIANTS)
    maps = list(brain.label_maps)
    for name, row in results["variants"].items():
        assert set(row["dice"]) == set(maps)
        assert all(0.0 <= d <= 1.0 for dice in row["dice"].values() for d in dice.values())
        alien = row["alien"]
        assert alien["voxels"] == sum(alien["per_class"].values()) >= alien["voxels_in_head"]
        assert alien["share_of_head"] == pytest.approx(alien["voxels"] / alien["head_voxels"])
        if len(maps) > 1:
            assert set(row["maps_agreement"]) == set(row["dice"][maps[0]])
    ratios = results["relative_to_skull_stripped"]["skull-stripped"][maps[0]]
    assert all(r is None or r == pytest.approx(1.0) for r in ratios.values())
    json_path, md_path = write_battery(results, tmp_path / "battery")
    assert json.loads(json_path.read_text())["variants"].keys() == results["variants"].keys()
    text = md_path.read_text()
    assert "head, tilted 30 deg, 3x1x1 mm" in text and "alien share of head" in text


def test_variants_are_deterministic_by_seed_and_tilted_ones_have_a_tilted_grid(tiny_brain):
    name = "head, tilted 30 deg, 1x1x3 mm"
    a, maps_a = make_variant(tiny_brain, name, seed=3)
    b, maps_b = make_variant(tiny_brain, name, seed=3)
    c, _ = make_variant(tiny_brain, name, seed=4)
    assert np.array_equal(a.array, b.array) and all(np.array_equal(maps_a[k], maps_b[k]) for k in maps_a)
    assert not np.array_equal(a.array, c.array)
    cosine = a.direction[:, 2] @ tiny_brain.image.direction[:, 2]
    assert cosine == pytest.approx(np.cos(np.radians(30)), abs=1e-6)
    assert a.spacing[2] == pytest.approx(3 * tiny_brain.image.spacing[2])


def test_the_head_variant_carries_the_label_maps_onto_its_grown_grid(tiny_brain):
    image, maps = make_variant(tiny_brain, "with head")
    brain = tiny_brain.image
    assert image.array.shape != brain.array.shape  # the head needs room
    for name, labels in tiny_brain.label_maps.items():  # the same physical places keep their labels
        points = brain.index_to_physical(np.argwhere(labels == 1)[:, ::-1])
        ijk = np.round(image.physical_to_index(points)).astype(int)
        assert np.all(maps[name][ijk[:, 2], ijk[:, 1], ijk[:, 0]] == 1)
    assert np.median(image.array[maps["Desikan-Killiany"] == 1]) == np.median(brain.array[tiny_brain.label_maps["Desikan-Killiany"] == 1])


def test_reacquisition_keeps_image_and_labels_aligned():
    """A bright cube labelled 1 in a dark volume: after tilting and thick slices, the voxels labelled 1
    are still the bright ones."""
    array = np.full((40, 40, 40), 10.0, np.float32)
    array[12:28, 10:30, 14:26] = 100.0
    labels = (array > 50).astype(np.uint8)
    volume = Volume(array, (1.0, 1.0, 1.0), (5.0, -3.0, 2.0), np.eye(3))
    image, maps = reacquire(volume, {"cube": labels}, Acquisition(25.0, (1, 1, 3)))
    inside, outside = image.array[maps["cube"] == 1], image.array[(maps["cube"] == 0) & (image.array > 0)]
    assert inside.size > 0 and np.median(inside) > 90 and np.median(outside) < 20
    centre = image.index_to_physical(np.argwhere(maps["cube"] == 1)[:, ::-1].mean(axis=0))
    expected = volume.index_to_physical(np.argwhere(labels == 1)[:, ::-1].mean(axis=0))
    assert np.allclose(centre, expected, atol=1.5)


def test_the_head_mask_travels_with_the_variant(tiny_brain):
    image, maps = make_variant(tiny_brain, "with head")
    assert maps[HEAD_MASK].shape == image.array.shape
    assert maps[HEAD_MASK].sum() > (tiny_brain.image.array > 0).sum()


def test_evaluate_battery_writes_the_battery_report_beside_the_prefix(capsys, tmp_path, small_bundle_file):
    code, out, _ = run(capsys, "evaluate", "--battery", "--battery-coarsen", "8", "--model", small_bundle_file,
                       "-o", tmp_path / "shipped", "--device", "cpu")
    assert code == 0
    results = json.loads((tmp_path / "shipped-battery.json").read_text())
    assert list(results["variants"]) == list(VARIANTS)
    assert "# Evaluation battery" in out and (tmp_path / "shipped-battery.md").read_text() in out
    assert not (tmp_path / "shipped.md").exists()  # no datasets, no dataset report


def test_evaluate_needs_datasets_or_the_battery_and_keeps_an_existing_battery_report(capsys, tmp_path,
                                                                                    small_bundle_file):
    code, _, err = run(capsys, "evaluate", "--model", small_bundle_file)
    assert code == 2
    assert_one_error_line(err, "--battery")
    (tmp_path / "old-battery.md").write_text("kept")
    code, _, err = run(capsys, "evaluate", "--battery", "--model", small_bundle_file, "-o", tmp_path / "old")
    assert code != 0 and "--overwrite" in err
    assert (tmp_path / "old-battery.md").read_text() == "kept"


def test_the_battery_refuses_a_model_without_the_brain_task(tiny_brain):
    from MultiTaskSegLib.engine.bundle import make_random_bundle
    from MultiTaskSegLib.engine.classes import DEFAULT_CLASSES, DEFAULT_TASKS

    classes = [c for c in DEFAULT_CLASSES if c.task in (None, "breast")]
    classes = [dataclasses.replace(c, index=i) for i, c in enumerate(classes)]
    breast_only = make_random_bundle(0, classes, [t for t in DEFAULT_TASKS if t.name == "breast"], n_layers=4)
    with pytest.raises(InputError, match="does not have"):
        run_battery(breast_only, tiny_brain, device="cpu")
