"""The seven experiments end to end in a reduced configuration (2-layer network, 8^3 blocks, two
mini-batches per task, tiny images), checking the structure of what they produce."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MultiTaskSegLib.data import phantoms
from MultiTaskSegLib.training.datasets import write_dataset
from MultiTaskSegLib.engine.errors import InputError, OutputError
from MultiTaskSegLib.training.experiments import EXPERIMENTS, class_names_of, run_experiments
from MultiTaskSegLib.engine.geometry import Volume
from MultiTaskSegLib.engine.classes import DEFAULT_CLASSES

BRAIN_LABELS = ("background", "white matter", "cortical grey matter", "basal ganglia and thalami",
                "ventricular cerebrospinal fluid", "cerebellum", "brain stem")
STEPS_PER_TASK = 2


def brain_like_case(seed: int, shape=(20, 24, 22)):
    """A small T1-like head: nested ellipsoids for the six tissues, background air at 0."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + (z * 1.1) ** 2)
    labels = np.zeros(shape, np.uint8)
    labels[r < 0.9] = 2                              # cortex
    labels[r < 0.75] = 1                             # white matter
    labels[(r < 0.35) & (np.abs(x) > 0.12)] = 3      # basal ganglia and thalami
    labels[(r < 0.3) & (np.abs(x) <= 0.12)] = 4      # ventricles
    labels[(z < -0.3) & (y > 0.3) & (r < 0.9)] = 5   # cerebellum
    labels[(z < -0.2) & (np.abs(x) < 0.15) & (np.abs(y) < 0.15)] = 6  # brain stem
    intensity = np.array([0, 110, 70, 80, 25, 75, 95], np.float32)[labels]
    intensity[labels == 0] = np.where(r[labels == 0] < 1.0, 15, 0)  # skull-ish rim, air outside
    image = intensity + rng.normal(0, 3, shape).astype(np.float32) * (intensity > 0)
    return Volume(np.clip(image, 0, None).astype(np.float32), (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), np.eye(3)), labels


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    brain = [(f"brain_{i}", *brain_like_case(i), "train" if i < 2 else "test") for i in range(3)]
    breast = [(f"breast_{i}", *phantoms.breast_mri_phantom(i, shape=(20, 28, 40), spacing=4.0),
               "train" if i < 2 else "test") for i in range(3)]
    coronary = [(f"coronary_{i}", *phantoms.cardiac_cta_phantom(i, shape=(24, 36, 36), spacing=3.2),
                 "train" if i < 2 else "test") for i in range(3)]
    return [str(write_dataset(root, "Dataset001_TinyBrain", "MR", {n: i for i, n in enumerate(BRAIN_LABELS)},
                              brain, task="brain").root),
            str(write_dataset(root, "Dataset002_TinyBreast", "MR", {"background": 0, "pectoral muscle": 1},
                              breast, task="breast").root),
            str(write_dataset(root, "Dataset003_TinyCoronary", "CT", {"background": 0, "coronary arteries": 1},
                              coronary, task="coronary").root)]


@pytest.fixture(scope="module")
def results(tiny_datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("experiments")
    stages = []
    results = run_experiments(tiny_datasets, out / "runs", steps_per_task=STEPS_PER_TASK, validate_every=1,
                              blocks_per_batch=6, block=8, validation_block=8, n_layers=2, device="cpu",
                              precision="fp32", repeat=1, report_path=out / "experiments.md",
                              progress=lambda f, s: stages.append((f, s)))
    return results, out, stages


def test_every_experiment_and_the_repeat_ran(results):
    results, out, stages = results
    runs = [(r["experiment"], r["repeat"]) for r in results["runs"]]
    assert runs == [(e.number, False) for e in EXPERIMENTS] + [(1, True)]
    assert stages[-1][0] == 1.0 and all(0.0 <= f <= 1.0 for f, _ in stages)
    fractions = [f for f, _ in stages]
    assert fractions == sorted(fractions)  # progress only moves forward across experiments


def test_each_bundle_has_exactly_the_classes_of_its_tasks(results):
    from MultiTaskSegLib.engine.bundle import load_bundle

    for r in results[0]["runs"]:
        bundle = load_bundle(r["bundle"])
        assert [c.name for c in bundle.classes] == ["background"] + class_names_of(r["tasks"])
        assert sorted(t.name for t in bundle.tasks) == sorted(r["tasks"])
        assert bundle.architecture.num_classes == 1 + len(class_names_of(r["tasks"]))
    by_number = {r["experiment"]: r for r in results[0]["runs"] if not r["repeat"]}
    # The paper's output layer sizes: 7, 2, 2, 8, 8, 3, 9 nodes.
    assert [len(by_number[n]["classes"]) for n in range(1, 8)] == [7, 2, 2, 8, 8, 3, 9]


def test_learning_curves_per_class_on_the_per_task_axis(results):
    for r in results[0]["runs"]:
        curve = r["curve"]
        assert set(curve["dice"]) == set(class_names_of(r["tasks"]))
        # validated after every mini-batch per task, whatever the number of tasks
        assert curve["mini_batches_per_task"] == [float(s) for s in range(1, STEPS_PER_TASK + 1)]
        for values in curve["dice"].values():
            assert len(values) == STEPS_PER_TASK and all(0.0 <= v <= 1.0 for v in values)
    training_log = results[1] / "runs" / "experiment7" / "log.jsonl"
    steps = [json.loads(line)["step"] for line in training_log.read_text().splitlines()]
    assert steps == list(range(1, 3 * STEPS_PER_TASK + 1))  # three tasks: three times the mini-batches


def test_final_dice_table_has_one_cell_per_class_and_experiment_including_it(results):
    table = results[0]["final_dice_table"]
    assert list(table) == [c.name for c in DEFAULT_CLASSES[1:]]
    for name, row in table.items():
        task = next(c.task for c in DEFAULT_CLASSES if c.name == name)
        assert sorted(row) == sorted(str(e.number) for e in EXPERIMENTS if task in e.tasks)
        assert all(0.0 <= d <= 1.0 for d in row.values())
    markdown = (results[1] / "experiments.md").read_text()
    assert "| white matter |" in markdown and "exp. 1 repeat" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| class | exp. 1"))
    coronary_row = next(line for line in markdown.splitlines() if line.startswith("| coronary arteries | "))
    assert coronary_row.count("|") == header.count("|")
    assert coronary_row.split("|")[2].strip() == ""  # experiment 1 (brain only) has no coronary cell


def test_alien_class_rate_of_the_three_task_network(results):
    alien = results[0]["alien_class_rate_three_task"]
    assert sorted(alien) == ["brain", "breast", "coronary"]
    assert all(0.0 <= v <= 1.0 for v in alien.values())
    single = next(r for r in results[0]["runs"] if r["experiment"] == 1 and not r["repeat"])
    assert single["median_alien_class_rate"] == {"brain": 0.0}  # a one-task network has no alien class


def test_repeat_variation_and_verdicts(results):
    rep = results[0]["repeat"]
    assert rep["experiment"] == 1 and set(rep["difference"]) == set(class_names_of(["brain"]))
    verdicts = results[0]["verdicts"]
    assert set(verdicts) == {c.name for c in DEFAULT_CLASSES[1:]}
    assert verdicts["white matter"]["run_to_run_measured"] and not verdicts["pectoral muscle"]["run_to_run_measured"]
    assert set(verdicts["pectoral muscle"]["multi_task_minus_task_specific"]) == {"4", "6", "7"}


def test_report_files(results):
    _, out, _ = results
    assert (out / "experiments" / "learning_curves.png").stat().st_size > 10000
    saved = json.loads((out / "experiments" / "experiments.json").read_text())
    assert len(saved["runs"]) == 8


def test_finished_experiments_are_reused(results, tiny_datasets):
    _, out, _ = results
    before = (out / "runs" / "experiment2" / "model.safetensors").stat().st_mtime_ns
    again = run_experiments(tiny_datasets, out / "runs", steps_per_task=STEPS_PER_TASK, validate_every=1,
                            blocks_per_batch=6, block=8, validation_block=8, n_layers=2, device="cpu",
                            precision="fp32", experiments=[2], repeat=None, report_path=out / "again.md")
    assert (out / "runs" / "experiment2" / "model.safetensors").stat().st_mtime_ns == before
    assert again["runs"][0]["final_dice"] == next(r for r in results[0]["runs"] if r["experiment"] == 2)["final_dice"]


def test_uneven_mini_batch_split_is_refused(tiny_datasets, tmp_path):
    with pytest.raises(InputError, match="multiple of 6"):
        run_experiments(tiny_datasets, tmp_path, blocks_per_batch=4)


def test_missing_task_dataset_is_refused(tiny_datasets, tmp_path):
    with pytest.raises(InputError, match="coronary"):
        run_experiments(tiny_datasets[:2], tmp_path, experiments=[3], repeat=None)


def test_a_run_with_other_settings_is_not_resumed(results, tiny_datasets):
    _, out, _ = results
    with pytest.raises(OutputError, match="other settings"):
        run_experiments(tiny_datasets, out / "runs", steps_per_task=STEPS_PER_TASK + 1, validate_every=1,
                        blocks_per_batch=6, block=8, n_layers=2, experiments=[2], repeat=None)


def test_cli_experiments_refuses_bad_settings_in_one_line(tiny_datasets, tmp_path, capsys):
    from MultiTaskSegLib.cli.program import main

    assert main(["experiments", *tiny_datasets, "--work-dir", str(tmp_path), "--blocks-per-batch", "4"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("multitaskseg: error: blocks_per_batch=4") and "multiple of 6" in error
