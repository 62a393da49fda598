"""Evaluation measures of the paper: Dice, the pooled precision-recall operating point, and the
alien-class rate.

Probabilities may be float in [0, 1] or uint8 0..255 (as stored by ``ProbabilityMaps``, value
v meaning v / 255). A voxel is positive at threshold t when its probability >= t; for uint8 that
is ``v / 255 >= t`` exactly (see ``thresholds.threshold_to_level``).

Conventions for empty sets (so every number is defined): Dice of two empty masks is 1.0;
precision with no predicted positives is 1.0 (no false positives); recall with no reference
positives is 1.0 (nothing missed).
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence

import numpy as np

from .classes import ClassInfo
from .errors import InputError
from .labelmap_rule import check_threshold, quantize_probabilities, threshold_to_level
from .progress import CancelCheck, ProgressCallback, check_cancel, report

_CHUNK = 1 << 22  # voxels per chunk: bounds the int64 temporaries of bincount


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"{what}: shapes differ, {a.shape} vs {b.shape}; resample both onto the same grid first.")


def _ratio(numerator, denominator):
    """numerator / denominator elementwise, 1.0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 1.0)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2|P & R| / (|P| + |R|) of two boolean masks; 1.0 if both are empty."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    _check_same_shape(pred, ref, "Dice")
    both = int(np.count_nonzero(pred & ref))
    return float(_ratio(2 * both, np.count_nonzero(pred) + np.count_nonzero(ref)))


def dice_per_class(pred_labels: np.ndarray, ref_labels: np.ndarray, class_indices: Iterable[int]) -> Dict[int, float]:
    """Dice of each class index between two labelmaps."""
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    _check_same_shape(pred_labels, ref_labels, "Dice per class")
    return {int(c): dice(pred_labels == c, ref_labels == c) for c in class_indices}


def _as_uint8_levels(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities)
    if p.dtype == np.uint8:
        return p
    if np.issubdtype(p.dtype, np.floating):
        return quantize_probabilities(p)
    raise InputError(f"Probabilities must be float in [0, 1] or uint8 0..255, got {p.dtype}.")


def _level_histograms(levels: np.ndarray, reference: np.ndarray):
    """Counts per uint8 value of reference-negative and reference-positive voxels."""
    codes_flat, ref_flat = levels.reshape(-1), reference.reshape(-1)
    counts = np.zeros(512, dtype=np.int64)
    for start in range(0, codes_flat.size, _CHUNK):
        code = codes_flat[start:start + _CHUNK].astype(np.uint16)
        code += ref_flat[start:start + _CHUNK].astype(np.uint16) << 8
        counts += np.bincount(code, minlength=512)
    return counts[:256], counts[256:]


def _curve(tp, fp, fn, thresholds) -> dict:
    tp, fp, fn = (np.asarray(a, dtype=np.int64) for a in (tp, fp, fn))
    return {
        "thresholds": np.asarray(thresholds, dtype=np.float64),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def precision_recall_curve(
    probabilities: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    thresholds: Optional[Sequence[float]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
) -> dict:
    """Precision, recall and Dice of one class pooled over a set of images (paper: one operating
    point for the whole test set), as functions of the threshold.

    ``probabilities[i]`` and ``references[i]`` (boolean) are one image. Without ``thresholds``
    the curve is evaluated at the 256 levels t = v / 255, v = 0..255, from one histogram per
    image (float probabilities are first quantized like ``ProbabilityMaps`` stores them). With
    ``thresholds``: uint8 inputs use the same histograms (exact, see module docstring); float
    inputs are compared exactly, ``p >= t``, one pass per threshold.

    Returns arrays ``thresholds`` (ascending as given or 0..1), ``precision``, ``recall``,
    ``dice`` and the pooled counts ``tp``, ``fp``, ``fn``.
    """
    if len(probabilities) != len(references):
        raise InputError(f"Got {len(probabilities)} probability maps but {len(references)} references; give one reference per image.")
    if len(probabilities) == 0:
        raise InputError("No images given; the precision-recall curve needs at least one image with its reference.")
    if thresholds is not None:
        thresholds = np.asarray([check_threshold(t) for t in thresholds], dtype=np.float64)
        if thresholds.size == 0:
            raise InputError("The list of thresholds is empty; pass None to use all 256 levels.")
    exact_float = thresholds is not None and any(np.asarray(p).dtype != np.uint8 for p in probabilities)

    negatives_at = np.zeros(256, dtype=np.int64)
    positives_at = np.zeros(256, dtype=np.int64)
    # Counts from the exact float comparisons, one per threshold (stay 0 on the histogram path).
    tp = fp = np.zeros(256 if thresholds is None else thresholds.size, dtype=np.int64)
    total_positive = 0
    for i, (p, ref) in enumerate(zip(probabilities, references)):
        check_cancel(cancel)
        p, ref = np.asarray(p), np.asarray(ref, dtype=bool)
        _check_same_shape(p, ref, f"Image {i}")
        total_positive += int(np.count_nonzero(ref))
        if exact_float and p.dtype != np.uint8:
            if not np.issubdtype(p.dtype, np.floating):
                raise InputError(f"Probabilities must be float in [0, 1] or uint8 0..255, got {p.dtype}.")
            predicted = [p >= t for t in thresholds]
            tp = tp + np.array([np.count_nonzero(m & ref) for m in predicted], dtype=np.int64)
            fp = fp + np.array([np.count_nonzero(m & ~ref) for m in predicted], dtype=np.int64)
        else:
            neg, pos = _level_histograms(_as_uint8_levels(p), ref)
            negatives_at += neg
            positives_at += pos
        report(progress, (i + 1) / len(probabilities), "Precision-recall curve")

    # Voxels with value >= L: reverse cumulative sums over the 256 levels (index 256 = none).
    tp_at_level = np.concatenate([np.cumsum(positives_at[::-1])[::-1], [0]])
    fp_at_level = np.concatenate([np.cumsum(negatives_at[::-1])[::-1], [0]])
    if thresholds is None:
        thresholds = np.arange(256, dtype=np.float64) / 255.0
        level_index = np.arange(256)
    else:
        level_index = np.array([threshold_to_level(t) for t in thresholds])
    tp = tp + tp_at_level[level_index]
    fp = fp + fp_at_level[level_index]
    return _curve(tp, fp, total_positive - tp, thresholds)


def optimal_operating_point(
    probabilities: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    thresholds: Optional[Sequence[float]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
) -> dict:
    """The threshold with the highest pooled Dice (paper: optimal operating point on the
    precision-recall curve); ties -> the lowest threshold. Returns threshold, dice, precision, recall."""
    curve = precision_recall_curve(probabilities, references, thresholds, progress, cancel)
    order = np.argsort(curve["thresholds"], kind="stable")
    best = order[int(np.argmax(curve["dice"][order]))]
    return {key: float(curve[key if key != "threshold" else "thresholds"][best])
            for key in ("threshold", "dice", "precision", "recall")}


def alien_class_rate(labels: np.ndarray, task: str, classes: Sequence[ClassInfo]) -> float:
    """Fraction (0..1, not percent) of the scan's voxels labelled with a class of another task
    than ``task`` (paper: median < 0.0005 % = 5e-6 per scan). Background counts as no task."""
    known_tasks = sorted({c.task for c in classes if c.task is not None})
    if task not in known_tasks:
        raise InputError(f"Unknown task {task!r}; the model's tasks are {known_tasks}.")
    labels = np.asarray(labels)
    if labels.size == 0:
        raise InputError("The labelmap is empty; the alien-class rate needs at least one voxel.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= len(classes):
        raise InputError(f"Labels must be integer class indices 0..{len(classes) - 1}; check that the labelmap comes from this model.")
    is_alien = np.array([c.task is not None and c.task != task for c in classes], dtype=bool)
    flat = labels.reshape(-1)
    counts = np.zeros(len(classes), dtype=np.int64)
    for start in range(0, flat.size, _CHUNK):
        counts += np.bincount(flat[start:start + _CHUNK], minlength=len(classes))
    return float(counts[is_alien].sum() / flat.size)
