"""Dice, pooled precision-recall operating point and alien-class rate on hand-computed examples."""

import numpy as np
import pytest

from MultiTaskSegLib.engine import metrics
from MultiTaskSegLib.engine.errors import Cancelled, InputError
from MultiTaskSegLib.engine.metrics import (
    alien_class_rate,
    dice,
    dice_per_class,
    optimal_operating_point,
    precision_recall_curve,
)
from MultiTaskSegLib.engine.classes import DEFAULT_CLASSES


def test_dice_hand_computed():
    pred = np.array([1, 1, 0, 0], bool)
    ref = np.array([1, 0, 1, 0], bool)
    assert dice(pred, ref) == pytest.approx(0.5)  # 2*1 / (2+2)
    assert dice(pred, pred) == 1.0
    assert dice(pred, ~pred) == 0.0
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0  # both empty
    assert dice(np.zeros(3, bool), np.array([0, 1, 0], bool)) == 0.0
    with pytest.raises(InputError, match="shapes"):
        dice(np.zeros(3, bool), np.zeros(4, bool))


def test_dice_per_class():
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    ref = np.array([[0, 1, 2], [2, 2, 2]])
    assert dice_per_class(pred, ref, [1, 2, 3]) == pytest.approx({1: 2 / 3, 2: 4 / 6, 3: 1.0})


def test_curve_hand_computed_uint8():
    p = np.array([0, 100, 200, 255], np.uint8)
    ref = np.array([0, 1, 0, 1], bool)
    curve = precision_recall_curve([p], [ref], thresholds=[0.0, 100 / 255, 101 / 255, 1.0])
    assert curve["tp"].tolist() == [2, 2, 1, 1]
    assert curve["fp"].tolist() == [2, 1, 1, 0]
    assert curve["fn"].tolist() == [0, 0, 1, 1]
    assert curve["precision"] == pytest.approx([0.5, 2 / 3, 0.5, 1.0])
    assert curve["recall"] == pytest.approx([1.0, 1.0, 0.5, 0.5])
    assert curve["dice"] == pytest.approx([4 / 6, 4 / 5, 2 / 4, 2 / 3])


def test_curve_without_thresholds_has_256_levels_and_edge_conventions():
    p = np.array([0.0, 0.4, 0.8], np.float32)
    ref = np.array([0, 0, 0], bool)  # no reference positives: recall 1 by convention
    curve = precision_recall_curve([p], [ref])
    assert curve["thresholds"].shape == (256,) and curve["thresholds"][-1] == 1.0
    assert np.all(curve["recall"] == 1.0)
    assert curve["precision"][-1] == 1.0 and curve["dice"][-1] == 1.0  # nothing predicted, nothing there
    assert curve["precision"][0] == 0.0


def test_float_and_uint8_inputs_agree_on_quantized_values():
    rng = np.random.default_rng(3)
    levels = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    ref = rng.random((6, 7)) < 0.4
    t = [0.0, 0.25, 128 / 255, 0.5, 0.9, 1.0]
    as_uint8 = precision_recall_curve([levels], [ref], t)
    as_float = precision_recall_curve([levels.astype(np.float64) / 255], [ref], t)
    assert as_uint8["tp"].tolist() == as_float["tp"].tolist()
    assert as_uint8["fp"].tolist() == as_float["fp"].tolist()


def brute_force_best(probabilities, references, thresholds):
    best = None
    for t in thresholds:  # ascending: keep the first maximum (lowest threshold)
        tp = sum(np.count_nonzero((p >= t) & r) for p, r in zip(probabilities, references))
        fp = sum(np.count_nonzero((p >= t) & ~r) for p, r in zip(probabilities, references))
        fn = sum(np.count_nonzero((p < t) & r) for p, r in zip(probabilities, references))
        d = 2 * tp / (2 * tp + fp + fn)
        if best is None or d > best[1]:
            best = (t, d)
    return best


def test_optimum_pooled_over_images_equals_brute_force():
    rng = np.random.default_rng(7)
    references = [rng.random((5, 8, 9)) < f for f in (0.05, 0.2, 0.4)]
    probabilities = [np.clip(r * 0.6 + rng.random(r.shape) * 0.5, 0, 1).astype(np.float32) for r in references]
    grid = np.linspace(0, 1, 41)
    best = optimal_operating_point(probabilities, references, thresholds=grid)
    t, d = brute_force_best(probabilities, references, grid)
    assert best["threshold"] == t and best["dice"] == pytest.approx(d)

    quantized = [np.floor(p * 255 + 0.5).astype(np.uint8) for p in probabilities]
    levels = np.arange(256) / 255
    best = optimal_operating_point(quantized, references)
    t, d = brute_force_best([q / 255 for q in quantized], references, levels)
    assert best["threshold"] == pytest.approx(t) and best["dice"] == pytest.approx(d)
    assert 0 < best["precision"] <= 1 and 0 < best["recall"] <= 1


def test_operating_point_pools_voxels_over_images():
    # image A is best at the high threshold, image B at the low one; Dice counts voxels of both.
    pa = np.array([0.9, 0.6, 0.6, 0.6], np.float32)
    ra = np.array([1, 0, 0, 0], bool)
    pb = np.array([0.6] * 8 + [0.1] * 8, np.float32)
    rb = np.array([1] * 8 + [0] * 8, bool)
    best = optimal_operating_point([pa, pb], [ra, rb], thresholds=[0.5, 0.8])
    assert best["threshold"] == 0.5  # pooled: tp 9, fp 3, fn 0 -> 18/21 beats tp 1, fn 8 -> 2/10
    assert best["dice"] == pytest.approx(18 / 21)  # not the mean of per-image Dice (0.4 + 1) / 2
    assert best["precision"] == pytest.approx(9 / 12) and best["recall"] == 1.0


def test_curve_input_errors_and_cancel():
    p, r = np.zeros((2, 2), np.float32), np.zeros((2, 2), bool)
    with pytest.raises(InputError, match="reference"):
        precision_recall_curve([p], [r, r])
    with pytest.raises(InputError):
        precision_recall_curve([p], [r], thresholds=[1.2])
    with pytest.raises(InputError, match="shapes"):
        precision_recall_curve([p], [np.zeros(3, bool)])
    with pytest.raises(InputError):
        precision_recall_curve([np.full((2, 2), 2.0)], [r])
    with pytest.raises(Cancelled):
        precision_recall_curve([p], [r], cancel=lambda: True)
    seen = []
    precision_recall_curve([p, p], [r, r], progress=lambda f, s: seen.append(f))
    assert seen == [0.5, 1.0]


def test_histogram_is_exact_across_chunks(monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK", 7)
    rng = np.random.default_rng(5)
    p = rng.integers(0, 256, 1000, dtype=np.uint8)
    r = rng.random(1000) < 0.3
    curve = precision_recall_curve([p], [r])
    for level in (0, 77, 200, 255):
        assert curve["tp"][level] == np.count_nonzero((p >= level) & r)
        assert curve["fp"][level] == np.count_nonzero((p >= level) & ~r)


def test_alien_class_rate():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[0, 0, :5] = 1  # white matter: brain task
    labels[1, 0, :3] = 8  # coronary arteries
    labels[2, 0, :2] = 7  # pectoral muscle
    assert alien_class_rate(labels, "brain", DEFAULT_CLASSES) == pytest.approx(5 / 1000)
    assert alien_class_rate(labels, "breast", DEFAULT_CLASSES) == pytest.approx(8 / 1000)
    assert alien_class_rate(labels, "coronary", DEFAULT_CLASSES) == pytest.approx(7 / 1000)
    assert alien_class_rate(np.zeros(4, np.uint8), "brain", DEFAULT_CLASSES) == 0.0
    with pytest.raises(InputError, match="brain"):
        alien_class_rate(labels, "liver", DEFAULT_CLASSES)
    with pytest.raises(InputError, match="0..8"):
        alien_class_rate(np.array([9]), "brain", DEFAULT_CLASSES)
