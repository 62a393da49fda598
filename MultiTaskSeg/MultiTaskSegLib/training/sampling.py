"""Mini-batches of dense blocks, balanced over tasks and then over each task's classes (paper 3.2).

The paper draws 210 isolated voxels per mini-batch, equally many per task and, within a task,
equally many per class, from the voxels with intensity > 0. Here each draw picks a task's case and
class uniformly, then a random sample voxel of that class, and takes the whole block of voxels
around it (with the 25-voxel context the network needs), so one forward pass serves a whole block
of samples (dense.crops_logits). The loss weights in ``balanced_weights`` restore the balance the
paper gets from sampling: every task weighs the same, and within a task every class present.

Augmentation helps generalise from few images and to users' scans: every block goes through a
random pose, shape and resolution (spatial_randomization: rotations up to 30 degrees, scaling
0.8-1.2, shear, elastic deformation, thicker slices along any axis, within each task's range of
acquisitions), for every task, so that no task's classes are tied to one orientation, resolution
or field of view; then intensity scale
and gamma, Gaussian noise, a smooth multiplicative bias field (MR), and left-right flips where
anatomy allows. Cases with generation labels are not sampled directly: each block comes from the
case's current synthetic volume (synthetic_cases.SyntheticPool), remade every few dozen blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..engine.crops import crop_with_zeros
from .cases import PreparedCase
from .spatial_randomization import (BlockTransform, SpatialSettings, degrade_resolution, random_acquisition,
                                    settings_for_task)
from .synthetic_cases import SyntheticPool

# Left-right mirrored anatomy is still plausible anatomy for these tasks, not for the coronary tree.
FLIP_TASKS = ("brain", "breast")
# Share of augmented blocks drawn through a random pose (the others axis-aligned, as most scans are).
POSE_SHARE = 0.8
# Share of augmented blocks (of cases not synthesised, which get theirs per volume) cut by the edge
# of a field of view: scans end anywhere, and what lies beyond is 0.
FOV_SHARE = 0.15


@dataclass
class Batch:
    crops: torch.Tensor    # (n, b + 2h, b + 2h, b + 2h) float32 network input with context
    labels: torch.Tensor   # (n, b, b, b) int64 class indices
    mask: torch.Tensor     # (n, b, b, b) bool: sample voxels (intensity > 0)
    tasks: List[str]       # task of each block


def _bias_field(shape: Sequence[int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field exp(linear + quadratic terms) with about +-strength range."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    c = rng.uniform(-1.0, 1.0, size=9).astype(np.float32) * strength / 3.0
    log_field = c[0] * z + c[1] * y + c[2] * x + c[3] * z * y + c[4] * y * x + c[5] * z * x + \
        c[6] * z ** 2 + c[7] * y ** 2 + c[8] * x ** 2
    return np.exp(log_field)


def augment(crop: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    """Random intensity changes of one normalised crop; voxels that are 0 (air, outside) stay 0."""
    inside = crop > 0
    out = crop.copy()
    if modality == "MR":
        gamma = rng.uniform(0.8, 1.25)
        out[inside] = out[inside] ** gamma
        out *= _bias_field(crop.shape, 0.15, rng)  # real fields vary by ~10% over a 66 mm crop
        out *= rng.uniform(0.9, 1.1)
    else:  # CT: Hounsfield units carry meaning, so only small shifts of the scale
        out[inside] = out[inside] * rng.uniform(0.97, 1.03) + rng.uniform(-0.03, 0.03)
    sigma = rng.uniform(0.0, 0.04)
    out[inside] += rng.normal(0.0, sigma, size=int(inside.sum())).astype(np.float32)
    np.clip(out, 0.0, None, out=out)
    return out


def deform(arrays: Sequence[np.ndarray], rng: np.random.Generator, max_degrees: float = 10.0,
           max_scale: float = 0.1) -> List[np.ndarray]:
    """The same small random rotation (about each axis) and isotropic scaling of equally shaped
    crops about their centre; the first array (the image) is interpolated linearly, the others
    (labels, mask) take the nearest voxel. Outside the crop counts as 0."""
    from scipy.ndimage import affine_transform

    angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, size=3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        a, b = [i for i in range(3) if i != axis]
        r = np.eye(3)
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
        rotation = rotation @ r
    matrix = rotation * rng.uniform(1.0 - max_scale, 1.0 + max_scale)
    centre = (np.array(arrays[0].shape) - 1) / 2.0
    offset = centre - matrix @ centre
    return [affine_transform(a, matrix, offset, order=1 if i == 0 else 0, mode="constant", cval=0)
            for i, a in enumerate(arrays)]


def _draw_centre(case: PreparedCase, classes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A sample voxel of a class drawn uniformly among the task's classes present in the case."""
    present = [c for c in classes if case.class_voxels(c).size]
    voxels = case.class_voxels(present[rng.integers(len(present))])
    return np.array(np.unravel_index(voxels[rng.integers(voxels.size)], case.labels.shape))


def _labels_and_mask(case: PreparedCase) -> np.ndarray:
    """Labels with the sample mask in bit 7, so one nearest-neighbour resampling moves both."""
    cache = case.__dict__
    if "_labels_and_mask" not in cache:
        cache["_labels_and_mask"] = case.labels | (case.mask.astype(np.uint8) << 7)
    return cache["_labels_and_mask"]


def _posed_block(case: PreparedCase, centre: np.ndarray, block: int, halo: int, rng: np.random.Generator,
                 spatial: SpatialSettings):
    """(crop with context, labels, mask) of a block through a random pose and deformation."""
    size, mid = block + 2 * halo, block // 2 + halo
    transform = BlockTransform.random(rng, size, case.spacing, spatial)
    coords = transform.coordinates(centre, size, mid)
    crop = ndimage.map_coordinates(case.image, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    inner = coords[:, halo:halo + block, halo:halo + block, halo:halo + block]
    packed = ndimage.map_coordinates(_labels_and_mask(case), inner, order=0, mode="constant", cval=0,
                                     prefilter=False)
    return crop.astype(np.float32, copy=False), packed & 0x7F, (packed >> 7).astype(bool)


def cut_field_of_view(crop: np.ndarray, mask: np.ndarray, halo: int, rng: np.random.Generator) -> None:
    """Zero the crop beyond a random plane parallel to one of its faces, as the edge of a scan's
    field of view would (in place); the block's voxels there stop being samples."""
    axis, size = int(rng.integers(3)), crop.shape[0]
    depth = int(rng.integers(halo // 2 + 1, size // 2 + 1))
    region, inner = [slice(None)] * 3, [slice(None)] * 3
    if rng.random() < 0.5:
        region[axis], inner[axis] = slice(0, depth), slice(0, max(depth - halo, 0))
    else:
        region[axis], inner[axis] = slice(size - depth, size), slice(max(size - depth - halo, 0), mask.shape[axis])
    crop[tuple(region)] = 0.0
    mask[tuple(inner)] = False


def sample_batch(cases_by_task: Mapping[str, Sequence[PreparedCase]], task_classes: Mapping[str, Sequence[int]],
                 modalities: Mapping[str, str], blocks_per_task: int, block: int, halo: int,
                 rng: np.random.Generator, augmentation: bool = True, pool: Optional[SyntheticPool] = None,
                 spatial: Optional[SpatialSettings] = None) -> Batch:
    """``blocks_per_task`` blocks of ``block``^3 voxels for every task, with their context.

    With ``augmentation``, cases with generation labels give blocks of their synthetic volumes from
    ``pool`` (a fresh pool, hence a fresh volume per block, when none is given); without, every
    case is sampled as it is (``--no-augmentation`` trains on the images as they are). ``spatial``:
    the pose and acquisition ranges of every task; None: each task's own
    (``spatial_randomization.TASK_SETTINGS``)."""
    pool = pool if pool is not None else SyntheticPool()
    crops, labels, masks, tasks = [], [], [], []
    for task, cases in cases_by_task.items():
        classes = [0] + list(task_classes[task])
        settings = spatial or settings_for_task(task)
        for _ in range(blocks_per_task):
            source = cases[rng.integers(len(cases))]
            case = pool.volume(source, rng) if augmentation else source
            centre = _draw_centre(case, classes, rng) + rng.integers(-(block // 4), block // 4 + 1, size=3)
            if augmentation and rng.random() < POSE_SHARE:
                crop, label, mask = _posed_block(case, centre, block, halo, rng, settings)
            else:
                start = centre - block // 2
                crop = crop_with_zeros(case.image, start - halo, (block + 2 * halo,) * 3)
                label = crop_with_zeros(case.labels, start, (block,) * 3)
                mask = crop_with_zeros(case.mask, start, (block,) * 3)
            if augmentation:
                if source.synthesis is None and rng.random() < FOV_SHARE:
                    crop, mask = np.array(crop), np.array(mask)
                    cut_field_of_view(crop, mask, halo, rng)
                if rng.random() < settings.acquisition_share:
                    crop = degrade_resolution(crop, random_acquisition(rng, settings), case.spacing, rng)
                crop = augment(crop, modalities[task], rng)
                if task in FLIP_TASKS and rng.random() < 0.5:
                    crop, label, mask = crop[..., ::-1], label[..., ::-1], mask[..., ::-1]
            crops.append(np.ascontiguousarray(crop))
            labels.append(np.ascontiguousarray(label))
            masks.append(np.ascontiguousarray(mask))
            tasks.append(task)
    return Batch(torch.from_numpy(np.stack(crops)), torch.from_numpy(np.stack(labels).astype(np.int64)),
                 torch.from_numpy(np.stack(masks)), tasks)


def weighted_batches(cases_by_task: Mapping[str, Sequence[PreparedCase]], task_classes: Mapping[str, Sequence[int]],
                     modalities: Mapping[str, str], blocks_per_task: int, block: int, halo: int,
                     rng: np.random.Generator, augmentation: bool = True):
    """Endless (crops, labels, mask, loss weights) of ``sample_batch`` batches drawn from ``rng``;
    synthetic volumes are kept for ``blocks_per_volume`` blocks each (synthetic_cases)."""
    pool = SyntheticPool()
    while True:
        batch = sample_batch(cases_by_task, task_classes, modalities, blocks_per_task, block, halo, rng, augmentation,
                             pool)
        yield batch.crops, batch.labels, batch.mask, balanced_weights(batch.labels, batch.mask, batch.tasks)


class BatchStream(torch.utils.data.IterableDataset):
    """Endless training batches, (crops, labels, mask, loss weights), for a DataLoader.

    Sampling and augmentation run on the CPU; with DataLoader workers they overlap the GPU's
    work instead of leaving it idle. Each worker draws from its own random stream, derived from
    ``seed`` (a sequence of ints) and the worker's index.
    """

    def __init__(self, cases_by_task: Mapping[str, Sequence[PreparedCase]], task_classes: Mapping[str, Sequence[int]],
                 modalities: Mapping[str, str], blocks_per_task: int, block: int, halo: int, seed: Sequence[int],
                 augmentation: bool = True):
        super().__init__()
        self.args = (cases_by_task, task_classes, modalities, blocks_per_task, block, halo)
        self.seed = list(seed)
        self.augmentation = augmentation

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.seed + [info.id if info else 0])
        yield from weighted_batches(*self.args, rng, self.augmentation)


def balanced_weights(labels: torch.Tensor, mask: torch.Tensor, tasks: Sequence[str]) -> torch.Tensor:
    """Per-voxel loss weights summing to 1: equal per task, then equal per class within the task.

    This is what balanced sampling (paper 3.2) gives in expectation: a class with many voxels in
    the blocks has each of them count less. Voxels outside the mask weigh 0.
    """
    weights = torch.zeros(labels.shape, dtype=torch.float32)
    task_names = list(dict.fromkeys(tasks))
    for task in task_names:
        rows = torch.tensor([t == task for t in tasks])
        task_labels, task_mask = labels[rows], mask[rows]
        present = torch.unique(task_labels[task_mask])
        task_weights = torch.zeros(task_labels.shape, dtype=torch.float32)
        for c in present:
            selected = task_mask & (task_labels == c)
            task_weights[selected] = 1.0 / (len(present) * selected.sum().item() * len(task_names))
        weights[rows] = task_weights
    return weights


def validation_blocks(cases_by_task: Mapping[str, Sequence[PreparedCase]], task_classes: Mapping[str, Sequence[int]],
                      block: int, halo: int, seed: int = 1234, max_cases: Optional[int] = 2) -> Dict[str, Batch]:
    """Fixed, un-augmented blocks for cheap periodic validation: in each of the first ``max_cases``
    cases of a task, one block centred on a voxel of each of the task's classes, so that every
    class, however small, is in the pooled Dice."""
    rng = np.random.default_rng(seed)
    out = {}
    for task, cases in cases_by_task.items():
        crops, labels, masks = [], [], []
        for case in list(cases)[:max_cases] if max_cases else cases:
            for c in task_classes[task]:
                voxels = case.class_voxels(c)
                if voxels.size == 0:
                    continue
                centre = np.array(np.unravel_index(voxels[rng.integers(voxels.size)], case.labels.shape))
                start = centre - block // 2
                crops.append(crop_with_zeros(case.image, start - halo, (block + 2 * halo,) * 3))
                labels.append(crop_with_zeros(case.labels, start, (block,) * 3))
                masks.append(crop_with_zeros(case.mask, start, (block,) * 3))
        if crops:
            out[task] = Batch(torch.from_numpy(np.stack(crops)), torch.from_numpy(np.stack(labels).astype(np.int64)),
                              torch.from_numpy(np.stack(masks)), [task] * len(crops))
    return out
