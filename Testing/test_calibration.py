"""Calibration: the fit recovers a known temperature and offsets, folding it into the final layer
gives exactly z / T + d, offsets of the thresholded classes leave the argmax labels alone, and the
whole call runs on small cases and survives a bundle round trip."""

import numpy as np
import pytest
import torch

from MultiTaskSegLib.engine.bundle import load_bundle
from MultiTaskSegLib.engine.labelmap_rule import ProbabilityMaps
from MultiTaskSegLib.engine.network import dense_logits
from MultiTaskSegLib.engine.prepared_model import inference_model
from MultiTaskSegLib.engine.slab_loop import dense_probabilities
from MultiTaskSegLib.training.calibration import (Calibration, LogitSample, calibrate_and_choose_thresholds,
                                                  calibrate_bundle, fit_calibration, fold_into_bundle, remove_calibrations,
                                                  sample_logits)
from MultiTaskSegLib.training.cases import PreparedCase
from conftest import small_random_bundle


def synthetic_sample(temperature: float, offsets: dict, n: int = 60_000, seed: int = 0) -> LogitSample:
    """Logits of 9 classes and labels drawn from softmax(z / T + d): the fit should find T and d."""
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(0, 3, (n, 9)).astype(np.float32))
    shift = torch.zeros(9, dtype=torch.float64)
    for c, d in offsets.items():
        shift[c] = d
    probabilities = torch.softmax(logits.double() / temperature + shift, dim=1)
    labels = torch.multinomial(probabilities, 1, generator=torch.Generator().manual_seed(seed))[:, 0]
    return LogitSample(logits, labels, np.array(["brain"] * n), torch.full((n,), 1.0 / n), ["synthetic"])


def test_the_fit_recovers_a_known_temperature_and_offsets():
    bundle = small_random_bundle()
    truth = {c: d for c, d in zip(range(1, 9), [0.5, -1.0, 0.0, 1.5, -0.5, 0.3, -2.0, 1.0])}
    sample = synthetic_sample(2.0, truth)
    fit = fit_calibration(sample, bundle.classes, "temperature-offsets", "all")
    assert fit.temperature == pytest.approx(2.0, rel=0.05)
    for c, d in truth.items():
        assert fit.offsets[c] == pytest.approx(d, abs=0.1)
    assert fit.nll_after < fit.nll_before
    only_thresholded = fit_calibration(sample, bundle.classes, "offsets", "thresholded")
    assert set(only_thresholded.offsets) == {7, 8}  # pectoral muscle, coronary arteries


def test_prior_offsets_are_log_frequency_ratios_within_the_task():
    bundle = small_random_bundle()
    labels = torch.tensor([0] * 90 + [7] * 10 + [0] * 50 + [1] * 50)
    tasks = np.array(["breast"] * 100 + ["brain"] * 100)
    sample = LogitSample(torch.zeros(200, 9), labels, tasks, torch.full((200,), 1 / 200), [])
    fit = fit_calibration(sample, bundle.classes, "prior", "all")
    assert fit.offsets[7] == pytest.approx(np.log(10 / 90))
    assert fit.offsets[1] == pytest.approx(np.log(50 / 50))
    assert fit.temperature == 1.0


def test_folding_gives_the_calibrated_logits_exactly():
    bundle = small_random_bundle(3)
    volume = np.random.default_rng(1).uniform(0.1, 1.0, (5, 6, 7)).astype(np.float32)
    before = dense_logits(bundle.model, volume)
    calibration = Calibration("temperature-offsets", "all", 1.7, {3: 0.4, 7: -2.5}, 1.0, 0.9, 10)
    fold_into_bundle(bundle, calibration)
    after = dense_logits(bundle.model, volume)
    expected = before / 1.7
    expected[3] += 0.4
    expected[7] -= 2.5
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-4)
    assert bundle.provenance["calibration"][-1]["offsets"] == {"basal ganglia and thalami": 0.4, "pectoral muscle": -2.5}


def test_removing_the_calibrations_gives_back_the_network_as_training_left_it():
    bundle = small_random_bundle(3)
    original = {k: v.clone() for k, v in bundle.model.head[-1].state_dict().items()}
    fold_into_bundle(bundle, Calibration("temperature-offsets", "all", 1.7, {3: 0.4, 7: -2.5}, 1.0, 0.9, 10))
    fold_into_bundle(bundle, Calibration("offsets", "thresholded", 1.0, {7: 0.75, 8: -1.25}, 1.0, 0.9, 10))
    assert not torch.allclose(bundle.model.head[-1].bias, original["bias"])
    remove_calibrations(bundle)
    for name, value in bundle.model.head[-1].state_dict().items():
        torch.testing.assert_close(value, original[name], rtol=0, atol=1e-5)
    assert "calibration" not in bundle.provenance


def tiny_case(task: str, labels_of_task, seed: int, shape=(10, 12, 14)) -> PreparedCase:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.05, 1.2, shape).astype(np.float32)
    image[:, :2] = 0.0
    labels = rng.choice(np.array([0] + list(labels_of_task), np.uint8), shape, p=None)
    return PreparedCase(f"{task}{seed}", task, image, labels, image > 0, 1.0)


def test_calibrating_the_thresholded_classes_keeps_the_argmax_labels_and_the_bundle_round_trips(tmp_path):
    bundle = small_random_bundle(4)
    cases = [tiny_case("brain", range(1, 7), 0), tiny_case("breast", [7], 1), tiny_case("coronary", [8], 2)]
    model = inference_model(bundle.model, "fp32", "cpu")
    before = [ProbabilityMaps(dense_probabilities(model, c.image, c.mask), bundle.classes) for c in cases]
    calibration = calibrate_bundle(bundle, cases, precision="fp32", voxels_per_case=500)
    assert set(calibration.offsets) == {7, 8} and calibration.nll_after <= calibration.nll_before
    assert calibration.voxels == sum(min(500, int(c.mask.sum())) for c in cases)
    model = inference_model(bundle.model, "fp32", "cpu")
    after = [ProbabilityMaps(dense_probabilities(model, c.image, c.mask), bundle.classes) for c in cases]
    for b, a in zip(before, after):  # the same order in float; the uint8 levels can tie or untie a rare voxel
        assert np.mean(b.argmax_labels() == a.argmax_labels()) >= 0.995
    assert not np.array_equal(before[1].channel(7), after[1].channel(7))
    loaded = load_bundle(bundle.save(tmp_path / "calibrated.safetensors"))
    assert loaded.provenance["calibration"][0]["method"] == "temperature-offsets"


def test_sample_weights_give_every_task_the_same_total():
    bundle = small_random_bundle(5)
    cases = [tiny_case("brain", range(1, 7), 0), tiny_case("breast", [7], 1, shape=(6, 8, 9))]
    sample = sample_logits(bundle, cases, precision="fp32", voxels_per_case=10_000)
    totals = {t: float(sample.weights[torch.from_numpy(sample.tasks == t)].sum()) for t in ("brain", "breast")}
    assert totals == pytest.approx({"brain": 0.5, "breast": 0.5})
    assert sample.logits.shape == (int(sum(c.mask.sum() for c in cases)), 9)


def test_the_end_of_training_call_calibrates_then_sets_the_optimal_thresholds():
    bundle = small_random_bundle(6)
    cases = [tiny_case("breast", [7], 1), tiny_case("coronary", [8], 2)]
    calibration, results = calibrate_and_choose_thresholds(bundle, cases[:1] + cases[1:], cases, precision="fp32")
    assert bundle.default_thresholds[7] == results["operating_points"]["pectoral muscle"]["threshold"]
    assert bundle.default_thresholds[8] == results["operating_points"]["coronary arteries"]["threshold"]
    assert bundle.provenance["calibration"][-1]["temperature"] == pytest.approx(calibration.temperature)
