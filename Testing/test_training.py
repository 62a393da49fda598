"""Training: balanced dense-block sampling, the loss weights, checkpoints that resume exactly, the
bundle it writes, and the same command under torchrun with two CPU processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from MultiTaskSegLib.engine.bundle import load_bundle
from MultiTaskSegLib.engine.errors import InputError
from MultiTaskSegLib.training.cases import PreparedCase
from MultiTaskSegLib.training.datasets import write_dataset
from MultiTaskSegLib.data.phantoms import breast_mri_phantom, cardiac_cta_phantom
from MultiTaskSegLib.engine.crops import crop_with_zeros
from MultiTaskSegLib.training.sampling import BatchStream, balanced_weights, sample_batch
from MultiTaskSegLib.training.loop import TrainConfig, learning_rate, train


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory):
    """Two small phantom datasets (breast MRI, coronary CTA) with a train and a test case each."""
    root = tmp_path_factory.mktemp("datasets")
    breast = write_dataset(root, "Dataset002_BreastPhantom", "MR", {"background": 0, "pectoral muscle": 1},
                           [(f"b{i}", *breast_mri_phantom(i, shape=(20, 40, 48)), split)
                            for i, split in enumerate(("train", "test"))], task="breast")
    coronary = write_dataset(root, "Dataset003_CoronaryPhantom", "CT", {"background": 0, "coronary arteries": 1},
                             [(f"c{i}", *cardiac_cta_phantom(i, shape=(40, 56, 56)), split)
                              for i, split in enumerate(("train", "test"))], task="coronary")
    return [str(breast.root), str(coronary.root)]


def tiny_config(datasets, work, steps, **overrides):
    settings = dict(datasets=datasets, output=str(work / "model.safetensors"), work_dir=str(work), steps=steps,
                    blocks_per_task=2, block=6, n_layers=2, validate_every=2, checkpoint_every=1,
                    precision="fp32", device="cpu", seed=3)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_crop_with_zeros_pads_outside_the_array():
    array = np.arange(27, dtype=np.float32).reshape(3, 3, 3) + 1
    crop = crop_with_zeros(array, (-1, 1, 2), (3, 3, 3))
    assert crop.shape == (3, 3, 3)
    assert (crop[0] == 0).all()  # z = -1 is outside
    assert crop[1, 0, 0] == array[0, 1, 2] and (crop[1, :, 1:] == 0).all() and (crop[1, 2] == 0).all()


def test_balanced_weights_weigh_tasks_and_classes_equally():
    labels = torch.tensor([[0, 0, 0, 7], [0, 8, 8, 8], [0, 0, 8, 0]]).reshape(3, 1, 1, 4)
    mask = torch.ones_like(labels, dtype=torch.bool)
    mask[0, 0, 0, 0] = False  # an excluded voxel weighs nothing
    weights = balanced_weights(labels, mask, ["breast", "coronary", "coronary"])
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[0, 0, 0, 0] == 0
    breast, coronary = weights[0], weights[1:]
    assert breast.sum().item() == pytest.approx(0.5) and coronary.sum().item() == pytest.approx(0.5)
    # within the coronary task, background and class 8 weigh the same in total
    coronary_labels = labels[1:]
    assert coronary[coronary_labels == 8].sum().item() == pytest.approx(0.25)
    assert coronary[coronary_labels == 0].sum().item() == pytest.approx(0.25)


def test_blocks_are_centred_on_every_class_about_equally():
    rng = np.random.default_rng(0)
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[5:7, 5:7, 5:7] = 7  # a rare class: 8 voxels of 8000
    image = np.ones(labels.shape, dtype=np.float32)
    case = PreparedCase("c", "breast", image, labels, image > 0, 1.0)
    hits = 0
    for _ in range(200):
        batch = sample_batch({"breast": [case]}, {"breast": [7]}, {"breast": "MR"}, 1, 1, 2, rng, augmentation=False)
        hits += int(batch.labels.max() == 7)
    assert 70 <= hits <= 130  # ~half of the 1-voxel blocks land on the rare class, not 0.1%


def test_learning_rate_warms_up_then_decays():
    config = TrainConfig(datasets=[], output="", work_dir="", steps=100, learning_rate=1e-3)
    rates = [learning_rate(config, s) for s in range(100)]
    assert rates[0] < rates[4] == pytest.approx(1e-3)
    assert rates[-1] < 0.1e-3 and all(a >= b for a, b in zip(rates[5:], rates[6:]))
    assert learning_rate(config, 10, elapsed_fraction=1.0) == pytest.approx(0.05e-3)


def test_training_writes_a_valid_bundle_with_report(tiny_datasets, tmp_path):
    bundle = train(tiny_config(tiny_datasets, tmp_path, steps=2))
    loaded = load_bundle(tmp_path / "model.safetensors")
    assert [c.name for c in loaded.classes] == ["background", "pectoral muscle", "coronary arteries"]
    assert [t.name for t in loaded.tasks] == ["breast", "coronary"]
    assert loaded.architecture.n_layers == 2 and loaded.architecture.num_classes == 3
    # thresholds chosen at the precision-recall optimum on the held-out cases, within [0, 1]
    assert set(loaded.default_thresholds) == {1, 2}
    assert all(0.0 <= t <= 1.0 for t in loaded.default_thresholds.values())
    assert loaded.provenance["training"]["steps_done"] == 2
    assert "evaluation" in loaded.provenance
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2] and "dice" in log[-1]
    assert set(log[-1]["dice"]) == {"1", "2"}
    report = json.loads((tmp_path / "report.json").read_text())
    assert {r["task"] for r in report["cases"]} == {"breast", "coronary"}
    assert (tmp_path / "report.md").exists() and (tmp_path / "learning_curve.png").stat().st_size > 1000
    # the report gives each chosen threshold's exact stored level, which the bundle carries
    report_md = (tmp_path / "report.md").read_text()
    for index, t in loaded.default_thresholds.items():
        assert f"{round(t * 255)}/255" in report_md
    saved = loaded.model.state_dict()
    for name, value in bundle.model.state_dict().items():
        if not name.endswith("num_batches_tracked"):  # a counter bundles do not keep
            assert torch.equal(value.cpu(), saved[name]), name


def test_resume_continues_exactly_where_it_stopped(tiny_datasets, tmp_path):
    straight = train(tiny_config(tiny_datasets, tmp_path / "a", steps=4, evaluate_at_end=False))
    train(tiny_config(tiny_datasets, tmp_path / "b", steps=2, evaluate_at_end=False))
    resumed = train(tiny_config(tiny_datasets, tmp_path / "b", steps=4, evaluate_at_end=False))
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_time_limit_clock_starts_after_the_first_step(tiny_datasets, tmp_path):
    """The first step's one-off costs do not count: a limit shorter than any step stops after the
    second step, not the first; the run still ends with a checkpoint and a bundle."""
    bundle = train(tiny_config(tiny_datasets, tmp_path, steps=50, time_limit_minutes=1e-6, evaluate_at_end=False))
    assert bundle.provenance["training"]["steps_done"] == 2
    assert (tmp_path / "checkpoint.safetensors").exists() and (tmp_path / "model.safetensors").exists()


def test_checkpoints_are_not_pickles(tiny_datasets, tmp_path):
    train(tiny_config(tiny_datasets, tmp_path, steps=1, evaluate_at_end=False))
    head = (tmp_path / "checkpoint.safetensors").read_bytes()[:9]
    assert not head.startswith(b"PK")  # torch.save's zip archive
    assert not (head[0] == 0x80 and 2 <= head[1] <= 5)  # a bare pickle (protocol 2-5)
    size = int.from_bytes(head[:8], "little")  # safetensors: header length, then JSON
    header = json.loads((tmp_path / "checkpoint.safetensors").read_bytes()[8:8 + size])
    assert "multitaskseg_checkpoint" in header["__metadata__"]


def test_batch_workers_draw_different_reproducible_batches():
    """Each DataLoader worker has its own random stream (else workers would hand out the same
    blocks), and the same seed gives the same batches again."""
    case = PreparedCase("c", "breast", np.random.default_rng(0).random((12, 12, 12), dtype=np.float32),
                        (np.arange(12 ** 3).reshape(12, 12, 12) % 2).astype(np.uint8), np.ones((12,) * 3, bool), 1.0)
    args = ({"breast": [case]}, {"breast": [1]}, {"breast": "MR"}, 2, 4, 2)

    def first_batches(seed):
        loader = torch.utils.data.DataLoader(BatchStream(*args, seed=seed), batch_size=None, num_workers=2)
        batches = iter(loader)
        return [next(batches) for _ in range(2)]  # one from each worker

    a, b = first_batches([1, 0, 0])
    assert not torch.equal(a[0], b[0])
    again = first_batches([1, 0, 0])
    assert all(torch.equal(x, y) for x, y in zip(a + b, again[0] + again[1]))
    crops, labels, mask, weights = a
    assert crops.shape == (2, 8, 8, 8) and labels.shape == mask.shape == weights.shape == (2, 4, 4, 4)
    assert weights.sum().item() == pytest.approx(1.0)


def test_training_with_batch_workers(tiny_datasets, tmp_path):
    bundle = train(tiny_config(tiny_datasets, tmp_path, steps=3, workers=2, evaluate_at_end=False))
    assert bundle.provenance["training"]["steps_done"] == 3
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3] and all(np.isfinite(e["loss"]) for e in log)


def test_torchrun_with_two_cpu_processes(tiny_datasets, tmp_path):
    """The same training under torchrun: DistributedDataParallel over gloo, two processes."""
    work = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "MultiTaskSegLib.cli", "train", *tiny_datasets, "-o", str(work / "model.safetensors"),
               "--work-dir", str(work), "--steps", "2", "--block", "6", "--blocks-per-task", "1",
               "--layers", "2", "--device", "cpu", "--precision", "fp32", "--no-evaluation"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace",
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = load_bundle(work / "model.safetensors")
    assert bundle.provenance["training"]["processes"] == 2
    assert bundle.provenance["training"]["steps_done"] == 2


def test_deformation_moves_image_and_labels_together():
    from MultiTaskSegLib.training.sampling import deform

    rng = np.random.default_rng(1)
    image = np.zeros((31, 31, 31), dtype=np.float32)
    image[10:20, 12:22, 8:18] = 1.0
    labels = (image > 0).astype(np.uint8) * 7
    moved_image, moved_labels = deform([image, labels], rng, max_degrees=10, max_scale=0.1)
    assert moved_labels.dtype == np.uint8 and set(np.unique(moved_labels)) <= {0, 7}
    assert not np.array_equal(moved_labels, labels)  # it did move
    inside = moved_labels == 7
    assert moved_image[inside].mean() > 0.9 and moved_image[~inside].mean() < 0.05
    assert 0.7 < inside.sum() / (labels == 7).sum() < 1.4  # scaling by at most 10% per axis


def test_validation_blocks_cover_every_class_of_the_task():
    from MultiTaskSegLib.training.sampling import validation_blocks

    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[2:4, 2:4, 2:4] = 5   # a tiny class far from the others
    labels[20:28, 20:28, 20:28] = 1
    image = np.ones(labels.shape, dtype=np.float32)
    case = PreparedCase("c", "brain", image, labels, image > 0, 1.0)
    blocks = validation_blocks({"brain": [case]}, {"brain": [1, 5, 6]}, block=4, halo=2)["brain"]
    assert blocks.crops.shape == (2, 8, 8, 8)  # class 6 is absent from the case: no block for it
    assert {int(blocks.labels[i].max()) for i in range(2)} == {1, 5}


def test_fine_tuning_starts_from_the_given_bundle(tiny_datasets, tmp_path):
    first = train(tiny_config(tiny_datasets, tmp_path / "first", steps=2, evaluate_at_end=False, seed=1,
                              calibration=None))
    zero_steps = train(tiny_config(tiny_datasets, tmp_path / "tuned", steps=1, learning_rate=0.0, calibration=None,
                                   evaluate_at_end=False, init_from=str(tmp_path / "first" / "model.safetensors")))
    # with a learning rate of 0 the weights stay those it started from, not a new random draw
    for name, value in first.model.state_dict().items():
        if name.endswith(("weight", "bias")):
            assert torch.equal(value, zero_steps.model.state_dict()[name]), name
    assert zero_steps.provenance["training"]["initialised_from"]["model"].endswith("model.safetensors")
    with pytest.raises(InputError, match="cannot be fine-tuned"):
        train(tiny_config(tiny_datasets, tmp_path / "deeper", steps=1, n_layers=3,
                          init_from=str(tmp_path / "first" / "model.safetensors")))


def test_training_ends_calibrated_and_fine_tuning_starts_from_the_uncalibrated_network(tiny_datasets, tmp_path):
    """The balanced sampling's prior is corrected at the end (the offsets are the log frequency ratios
    of the training cases, negative for these rare classes); fine-tuning removes that correction first,
    so that the next calibration does not count it twice."""
    calibrated = train(tiny_config(tiny_datasets, tmp_path / "first", steps=2, evaluate_at_end=False))
    entry = calibrated.provenance["calibration"][-1]
    assert entry["method"] == "prior" and entry["offsets"]["pectoral muscle"] < 0
    assert entry["offsets"]["coronary arteries"] < 0
    tuned = train(tiny_config(tiny_datasets, tmp_path / "tuned", steps=1, learning_rate=0.0, calibration=None,
                              evaluate_at_end=False, init_from=str(tmp_path / "first" / "model.safetensors")))
    assert "calibration" not in tuned.provenance
    bias = calibrated.model.head[-1].bias.detach().clone()
    for name, d in entry["offsets"].items():
        bias[calibrated.class_index(name)] -= d
    torch.testing.assert_close(tuned.model.head[-1].bias, bias, rtol=0, atol=1e-5)
