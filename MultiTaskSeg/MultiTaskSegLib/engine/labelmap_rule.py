"""Per-class probabilities stored as uint8 and the rule that turns them into a labelmap.

Storage
-------
Probabilities are kept as uint8, one channel per class of the model (background included):
stored value ``v = round(p * 255)`` (half away from zero), so ``v / 255`` is the probability to
within 1/510. A (9, 300, 512, 512) map takes 707 MB instead of 2.8 GB as float32.

Threshold on the uint8 scale
----------------------------
A threshold ``t`` must lie in [0, 1]. It selects exactly the voxels whose stored value satisfies
``v / 255 >= t`` (evaluated in float64). Internally ``t`` becomes the integer level
``L(t) = min{v in 0..255 : v / 255 >= t}`` and the test is ``v >= L(t)``: e.g. ``t = 128/255``
gives ``L = 128`` (value 128 is in, 127 is out), ``t = 0.5`` gives ``L = 128`` too, ``t = 0``
selects every voxel, ``t = 1`` only ``v = 255``.

Labelmap rule
-------------
Only *selected* classes are labelled (background is never selected). For every voxel:

1. Thresholded classes (decision ``"threshold"``) that are selected: class ``c`` is a candidate
   when ``p_c >= t_c``. If there are candidates, the voxel gets the one with the highest
   ``p_c``; equal ``p_c`` -> the lowest class index.
2. Otherwise the voxel gets the argmax over {background} U {every argmax-decided class, selected
   or not} (equal values -> the lowest index); if that winner is not selected the voxel becomes
   background (0). Selecting only "white matter" thus labels the voxels where white matter is the
   most probable tissue and does not grow it into grey matter. Thresholded classes take no part
   in step 2, whatever their probability.

Step 2 does not depend on the thresholds: it is computed once, on first use, and cached, so a
threshold change (a slider drag) only redoes step 1.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from .classes import ClassInfo, ClassKey, class_index, foreground_classes
from .errors import InputError

DEFAULT_THRESHOLD = 0.5
# Work on slabs of about this many voxels so temporaries stay small and cache-friendly.
_SLAB_VOXELS = 1 << 18
# _LEVELS[v] is the probability a stored value v stands for.
_LEVELS = np.arange(256, dtype=np.float64) / 255.0


def quantize_probabilities(p: np.ndarray) -> np.ndarray:
    """Float probabilities in [0, 1] -> uint8 ``round(p * 255)`` (halves round up).

    Values within 1e-6 outside [0, 1] (float rounding in a softmax) are clipped; NaN or
    anything further out raises InputError.
    """
    p = np.asarray(p)
    if not np.issubdtype(p.dtype, np.floating):
        raise InputError(f"Probabilities to quantize must be floating point, got {p.dtype}; pass p in [0, 1].")
    out = np.empty(p.shape, dtype=np.uint8)
    flat_in, flat_out = p.reshape(-1), out.reshape(-1)
    for start in range(0, flat_in.size, _SLAB_VOXELS):
        chunk = flat_in[start:start + _SLAB_VOXELS].astype(np.float32)
        if not np.all((chunk >= -1e-6) & (chunk <= 1.0 + 1e-6)):  # also false for NaN
            raise InputError(
                "Probabilities must lie in [0, 1] and not be NaN; apply softmax/sigmoid to the network output first."
            )
        flat_out[start:start + _SLAB_VOXELS] = np.floor(np.clip(chunk, 0.0, 1.0) * 255.0 + 0.5)
    return out


def check_threshold(t: float, what: str = "threshold") -> float:
    """Return ``t`` as float if it is a number in [0, 1]; otherwise raise InputError."""
    try:
        value = float(t)
    except (TypeError, ValueError):
        raise InputError(f"The {what} must be a number in [0, 1], got {t!r}.") from None
    if not (0.0 <= value <= 1.0):  # false for NaN too
        raise InputError(f"The {what} must be in [0, 1], got {t!r}; use e.g. 0.5.")
    return value


def threshold_to_level(t: float) -> int:
    """The smallest stored uint8 value v with ``v / 255 >= t`` (see module docstring)."""
    return int(np.searchsorted(_LEVELS, check_threshold(t), side="left"))


def nearest_level_threshold(t: float) -> float:
    """The threshold k/255 of the stored level nearest to ``t``.

    A slider that steps by 1/255 but shows (and keeps) a few decimals turns 248/255 into 0.973,
    which taken literally selects one level fewer; snapping recovers the level the slider meant.
    """
    return round(check_threshold(t) * 255) / 255


def background_outside(probabilities: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """In place on uint8 (C, ...) probabilities: voxels not ``inside`` become background with
    probability 1 (the paper classifies only intensity > 0). One multiplication over all classes:
    boolean indexing per class took 4.4 s of a 512^2 x 300 CT."""
    probabilities *= inside
    np.putmask(probabilities[0], ~inside, 255)
    return probabilities


def _assign_where(out: np.ndarray, value, mask: np.ndarray) -> None:
    """``out[mask] = value`` for uint8 ``out`` without branches: numpy's masked assignment
    costs ~20 ns per voxel on random masks, these four vectorised byte operations ~1 ns."""
    select = np.subtract(0, mask.view(np.uint8), dtype=np.uint8)  # 0x00 or 0xFF
    change = np.bitwise_xor(out, value)
    np.bitwise_and(change, select, out=change)
    np.bitwise_xor(out, change, out=out)


def _slabs(depth: int, plane_voxels: int):
    """Slices along z covering about _SLAB_VOXELS voxels each."""
    step = max(1, _SLAB_VOXELS // max(1, plane_voxels))
    for start in range(0, depth, step):
        yield slice(start, min(depth, start + step))


class ProbabilityMaps:
    """uint8 probabilities of every class on one image grid, and the labelmap rule on them.

    ``data``: uint8 (N, z, y, x), channel c = class index c of ``classes`` (background included),
    255 = probability 1. ``selected``: class indices or names to label (no background); None = all
    non-background classes. ``default_thresholds``: index -> threshold for thresholded classes;
    those without one get 0.5.
    """

    def __init__(
        self,
        data: np.ndarray,
        classes: Sequence[ClassInfo],
        selected: Optional[Sequence[ClassKey]] = None,
        default_thresholds: Optional[Mapping[ClassKey, float]] = None,
    ):
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4:
            raise InputError(
                "Probability maps must be a uint8 array (classes, z, y, x); "
                f"got {getattr(data, 'dtype', type(data).__name__)} with shape {getattr(data, 'shape', None)}. "
                "Use quantize_probabilities() on float probabilities."
            )
        self.classes = tuple(classes)
        if data.shape[0] != len(self.classes):
            raise InputError(
                f"Probability maps have {data.shape[0]} channels but the model has {len(self.classes)} classes; "
                "they must come from the same model bundle."
            )
        for position, info in enumerate(self.classes):
            if info.index != position:
                raise InputError(f"Class '{info.name}' has index {info.index} at position {position}; classes must be in index order.")
        self.data = data

        if selected is None:
            chosen = foreground_classes(self.classes)
        else:
            chosen = [self.resolve_class(c) for c in selected]
            if 0 in chosen:
                raise InputError("Background cannot be selected; select the classes to segment (e.g. 'white matter').")
        self.selected = tuple(sorted(set(chosen)))

        self.default_thresholds: Dict[int, float] = {
            c.index: DEFAULT_THRESHOLD for c in self.classes if c.decision == "threshold"
        }
        for key, t in (default_thresholds or {}).items():
            index = self._thresholded_class(key)
            self.default_thresholds[index] = check_threshold(t, f"default threshold of '{self.classes[index].name}'")
        self._argmax_labels: Optional[np.ndarray] = None

    @property
    def shape(self):
        """Image shape (z, y, x)."""
        return self.data.shape[1:]

    def resolve_class(self, cls: ClassKey) -> int:
        """Class name (case-insensitive) or index -> index (see ``classes.class_index``)."""
        return class_index(self.classes, cls)

    def _thresholded_class(self, cls: ClassKey) -> int:
        index = self.resolve_class(cls)
        if self.classes[index].decision != "threshold":
            thresholded = [c.name for c in self.classes if c.decision == "threshold"]
            raise InputError(
                f"'{self.classes[index].name}' is decided by {self.classes[index].decision or 'nothing (background)'}, "
                f"not by a threshold; thresholds apply to {thresholded}."
            )
        return index

    def channel(self, cls: ClassKey) -> np.ndarray:
        """The stored uint8 probabilities of one class (a view, 255 = 1)."""
        return self.data[self.resolve_class(cls)]

    def probability(self, cls: ClassKey) -> np.ndarray:
        """float32 probabilities 0..1 of one class, computed on demand (a new array)."""
        return self.channel(cls).astype(np.float32) / np.float32(255.0)

    def thresholded_classes(self) -> List[int]:
        """Selected classes decided by a threshold."""
        return [i for i in self.selected if self.classes[i].decision == "threshold"]

    def argmax_labels(self) -> np.ndarray:
        """Step 2 of the rule (threshold-independent), computed once and cached; do not modify."""
        if self._argmax_labels is None:
            self._argmax_labels = self._compute_argmax_labels()
        return self._argmax_labels

    def _compute_argmax_labels(self) -> np.ndarray:
        argmax_classes = [c.index for c in self.classes if c.decision == "argmax"]
        keep = np.zeros(len(self.classes), dtype=np.uint8)  # winner -> label; unselected -> 0
        for i in self.selected:
            keep[i] = i
        all_kept = all(keep[c] == c for c in argmax_classes)  # then the lookup is the identity
        depth, height, width = self.shape
        labels = np.zeros(self.shape, dtype=np.uint8)
        for zs in _slabs(depth, height * width):
            best = self.data[0, zs].copy()
            winner = np.zeros(best.shape, dtype=np.uint8)
            better = np.empty(best.shape, dtype=bool)
            for c in argmax_classes:  # ascending index and strict '>' => ties go to the lowest index
                p = self.data[c, zs]
                np.greater(p, best, out=better)
                np.maximum(best, p, out=best)
                _assign_where(winner, np.uint8(c), better)
            labels[zs] = winner if all_kept else keep[winner]
        return labels

    def resolve_thresholds(self, thresholds: Optional[Mapping[ClassKey, float]] = None) -> Dict[int, float]:
        """Thresholds for every selected thresholded class: given ones over defaults, validated.

        Thresholds for thresholded classes that are not selected are accepted and ignored; a
        threshold for an argmax class or an unknown class raises InputError.
        """
        resolved = {i: self.default_thresholds[i] for i in self.thresholded_classes()}
        for key, t in (thresholds or {}).items():
            index = self._thresholded_class(key)
            value = check_threshold(t, f"threshold of '{self.classes[index].name}'")
            if index in resolved:
                resolved[index] = value
        return resolved

    def labelmap(self, thresholds: Optional[Mapping[ClassKey, float]] = None) -> np.ndarray:
        """uint8 (z, y, x) class indices by the rule of the module docstring (a new array)."""
        levels = {i: threshold_to_level(t) for i, t in self.resolve_thresholds(thresholds).items()}
        labels = self.argmax_labels().copy()
        if not levels:
            return labels
        depth, height, width = self.shape
        for zs in _slabs(depth, height * width):
            # q = p + 1 where class c passes its threshold, 0 where it does not: so p = 0 with
            # t = 0 still counts, and best == 0 means no thresholded class passed.
            slab = labels[zs]
            best = np.zeros(slab.shape, dtype=np.uint16)
            q = np.empty(slab.shape, dtype=np.uint16)
            passes = np.empty(slab.shape, dtype=bool)
            winner = np.zeros(slab.shape, dtype=np.uint8)
            for c in sorted(levels):  # ascending index and strict '>' => ties go to the lowest index
                p = self.data[c, zs]
                np.greater_equal(p, levels[c], out=passes)
                np.add(p, 1, out=q, dtype=np.uint16)
                np.multiply(q, passes, out=q)
                np.greater(q, best, out=passes)  # reused as "c beats the classes before it"
                np.maximum(best, q, out=best)
                _assign_where(winner, np.uint8(c), passes)
            _assign_where(slab, winner, winner > 0)
        return labels
