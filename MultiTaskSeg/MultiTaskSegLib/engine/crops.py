"""Windows of arrays with zeros where they leave the array: outside the image, the network sees
intensity 0, in training blocks and in inference slabs alike (as the paper's zero padding)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def crop_with_zeros(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """array[start:start+size] along each axis, with zeros where the window leaves the array."""
    out = np.zeros(tuple(size), dtype=array.dtype)
    src, dst = [], []
    for s, n, total in zip(start, size, array.shape):
        lo, hi = max(s, 0), min(s + n, total)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out
