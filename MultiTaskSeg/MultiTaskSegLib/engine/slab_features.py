"""Where a slab's conv-stack features wait for the head (``slab_loop.slab_probabilities``).

The head needs, for every voxel it classifies, the 3 x F features of its axial, coronal and
sagittal planes, so all three orientations' features of a slab exist before it runs. On the host
only the samples' rows are kept (the paper's samples, intensity > 0), one (samples, F) array per
orientation: features over the whole box took ~1.2 GB per slab of a 512^2 CT, whose samples need a
third of that. A plane group's features go to their samples' rows by numpy ``take`` and a row
assignment (~20x faster than torch's boolean indexing here, which mattered next to a shallow conv
stack). The head reads the same rows in the same order either way, so results do not change.

The device path (a volume that is a tensor, on a GPU) keeps the features of the whole box: one
write per plane group, no host synchronisation for a count of samples.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch

PlaneGroup = Tuple[int, int, int, int, int, int]  # planes p0:p1, rows r0:r1, cols c0:c1 (target voxels)
Store = Callable[[PlaneGroup, torch.Tensor], None]  # takes one plane group's (P, R, C, F) features
Mask = Union[np.ndarray, torch.Tensor]

# The three orientations of a slab's planes as axes of (z, y, x): axial planes (z, y, x), coronal
# planes (y, z, x), sagittal planes (x, z, y).
ORDERS = ((0, 1, 2), (1, 0, 2), (2, 0, 1))

_SAME_SIZE_INTEGERS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _as_integers(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor's bytes as a numpy array of integers of its element size (numpy has no bf16)."""
    return tensor.view(_SAME_SIZE_INTEGERS[tensor.element_size()]).numpy()


def _box_store(target: torch.Tensor) -> Store:
    """Features into ``target`` (P, R, C, F), a view of the box's (z, y, x, 3F) features."""
    def store(group: PlaneGroup, values: torch.Tensor) -> None:
        p0, p1, r0, r1, c0, c1 = group
        target[p0:p1, r0:r1, c0:c1] = values
    return store


def _sample_store(target: torch.Tensor, sample: np.ndarray, rows: np.ndarray) -> Store:
    """The samples' features into their rows of ``target`` (samples, F), a contiguous CPU tensor.

    ``sample`` (P, R, C) marks the samples and ``rows`` (P, R, C) numbers them, both in this
    orientation's order (transposed views of the slab's arrays).
    """
    destination = _as_integers(target)
    width = target.shape[1]

    def store(group: PlaneGroup, values: torch.Tensor) -> None:
        p0, p1, r0, r1, c0, c1 = group
        kept = np.flatnonzero(sample[p0:p1, r0:r1, c0:c1])
        source = _as_integers(values.to(target.dtype).contiguous()).reshape(-1, width)
        destination[np.take(rows[p0:p1, r0:r1, c0:c1], kept)] = np.take(source, kept, axis=0)
    return store


class SlabFeatures:
    """A slab's features: ``stores`` take them per orientation (in ``ORDERS``), ``rows`` hands
    them to the head, and ``samples`` says which voxel of the box (a flat index) each row is."""

    def __init__(self, sample: Optional[Mask], shape: Tuple[int, int, int], n_filters: int, dtype: torch.dtype,
                 device: torch.device, out_device: torch.device):
        f = n_filters
        self._gather = sample is not None
        if sample is None or isinstance(sample, torch.Tensor) or device.type != "cpu":
            # the whole box: the device path (see module docstring), or a GPU fed from the host
            box = torch.zeros(shape + (3 * f,), dtype=dtype, device=device)
            self.stores: List[Store] = [_box_store(box[..., i * f:(i + 1) * f].permute(*order, 3))
                                        for i, order in enumerate(ORDERS)]
            self._parts = [box.reshape(-1, 3 * f)]
            if sample is None:
                self.samples = torch.arange(self._parts[0].shape[0], device=out_device)
            elif isinstance(sample, torch.Tensor):
                self.samples = torch.nonzero(sample.reshape(-1)).flatten().to(out_device)
            else:
                self.samples = torch.from_numpy(np.flatnonzero(sample).astype(np.int32))
            return
        self._gather = False
        sample = np.ascontiguousarray(sample)
        self.samples = torch.from_numpy(np.flatnonzero(sample).astype(np.int32))
        rows = (np.cumsum(sample, dtype=np.int32) - 1).reshape(shape)
        self._parts = [torch.zeros((self.samples.shape[0], f), dtype=dtype, device=device) for _ in ORDERS]
        self.stores = [_sample_store(part, sample.transpose(order), rows.transpose(order))
                       for part, order in zip(self._parts, ORDERS)]

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    def stored(self) -> None:
        """All orientations are in: the stores (and the masks and row numbers they hold) go."""
        self.stores = []

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """The (stop - start, 3F) features of rows start:stop, contiguous, as the head takes them."""
        if self._gather:
            return self._parts[0][self.samples[start:stop].to(self._parts[0].device)]
        if len(self._parts) == 1:
            return self._parts[0][start:stop]
        return torch.cat([part[start:stop] for part in self._parts], dim=1)
