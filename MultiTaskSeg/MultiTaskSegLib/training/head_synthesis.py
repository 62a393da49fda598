"""Synthetic whole heads around a brain: what a T1 shows outside the brain, all of it background.

Users load whole heads, and a network that has seen only skull-stripped brains labels scalp fat
as white matter and neck muscle as anything. This draws, around a brain's generation labels
(training/generation_labels.py), a random head: extra-cerebral CSF, the skull's inner and outer
tables (dark) with the diploe between (brighter), scalp muscle (the temporalis thick at the
temples), subcutaneous fat (bright on T1) and skin; below, a neck with the spinal canal and
cord, vertebral bodies and discs, the airway and muscle and fat; in front, a face with the
nasal cavity and sinuses (air), the tongue and mandible, and two orbits with the globe (dark
vitreous), bright orbital fat and the optic nerve. Thicknesses vary smoothly over the head and
from head to head, as do positions and sizes; every head is deterministic by its seed.

The brain is never painted over: its generation labels and intensities are kept exactly. The
grid grows (the brain's bounding box padded by random margins) to hold the head and neck.

Geometry works in a *standard* array layout (axis 0 inferior to superior, 1 anterior to
posterior, 2 right to left), reached from the volume's direction by transposes and flips only.
Distances are computed on a ~2 mm grid and interpolated back: a head around a 1 mm brain costs
one to two seconds of one core.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..engine.errors import InputError
from ..engine.geometry import Volume
from . import generation_labels as gen
from .random_fields import coarse_factors, coarse_to_full, coarse_to_full_nearest, pool_any, smooth_field, smooth_multiplier

from .head_anatomy import BONE, CSF, DIPLOE, FAT, MUSCLE, SKIN, SOFT, HeadAnatomy, bounding_box

AIR = gen.code("air")


# ----------------------------------------------------------------------------- orientation


def standard_layout(volume: Volume) -> Tuple[Tuple[int, int, int], Tuple[bool, bool, bool]]:
    """(transpose, flips) that bring ``volume``'s array to the standard layout: array axis 0 along
    +S, 1 along +P, 2 along +L (LPS axis 2 - k for standard axis k)."""
    # column 2 - a of the direction matrix is the LPS direction of array axis a
    axis_vectors = np.array([volume.direction[:, 2 - a] for a in range(3)])
    transpose, flips = [], []
    for k in range(3):
        lps_axis = 2 - k
        a = int(np.argmax(np.abs(axis_vectors[:, lps_axis])))
        transpose.append(a)
        flips.append(bool(axis_vectors[a, lps_axis] < 0))
    if sorted(transpose) != [0, 1, 2]:
        raise InputError("The image is so oblique that its axes do not follow the anatomical ones: "
                         "resample it to an axis-aligned grid first.")
    return tuple(transpose), tuple(flips)  # type: ignore[return-value]


def to_standard(array: np.ndarray, transpose, flips) -> np.ndarray:
    out = np.transpose(array, transpose)
    return out[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


def from_standard(array: np.ndarray, transpose, flips) -> np.ndarray:
    out = array[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    return np.ascontiguousarray(np.transpose(out, np.argsort(transpose)))


# ----------------------------------------------------------------------------- the head


def _layer_coordinate(signed_mm: np.ndarray, thicknesses: Sequence[np.ndarray]) -> np.ndarray:
    """Piecewise-linear map of the signed distance from the cranial envelope to layer units: layer
    k spans [k, k + 1); negative inside the envelope. Interpolates smoothly between coarse cells."""
    out = np.minimum(signed_mm, 0.0)
    start = np.zeros_like(signed_mm)
    for k, thickness in enumerate(thicknesses):
        thickness = np.maximum(thickness, 0.3)
        inside = (signed_mm >= start) & (signed_mm < start + thickness)
        out = np.where(inside, k + (signed_mm - start) / thickness, out)
        start = start + thickness
    return np.where(signed_mm >= start, len(thicknesses) + (signed_mm - start) / 5.0, out)


def add_synthetic_head(image: Volume, brain_labels: np.ndarray, seed: int,
                       paint: bool = True) -> Tuple[Volume, np.ndarray, np.ndarray]:
    """A random head around the brain of ``image`` (with generation labels ``brain_labels``).

    Returns (image with the head on a grid grown to hold it, training labels 0..6, generation
    labels). ``paint`` False leaves the head's intensities 0 (when synthesis repaints every label
    anyway); otherwise the head gets T1 intensities relative to the brain's white matter.
    """
    rng = np.random.default_rng(seed)
    if np.shape(brain_labels) != image.array.shape:
        raise InputError(f"Brain labels of shape {np.shape(brain_labels)} do not match the image {image.array.shape}.")
    transpose, flips = standard_layout(image)
    spacing = np.array([image.spacing[2 - a] for a in transpose])
    labels_in = to_standard(np.asarray(brain_labels, np.uint8), transpose, flips)
    brain = gen.brain_lookup()[labels_in]
    if not brain.any():
        raise InputError("The label map holds no brain label: a head needs a brain to go around.")
    # grow the grid: the brain's bounding box plus margins for scalp, face (front) and neck (below)
    first, last = bounding_box(brain)
    margins_mm = np.array([[rng.uniform(55, 95), rng.uniform(16, 26)],    # neck below, scalp on top
                           [rng.uniform(38, 50), rng.uniform(18, 28)],    # face in front, scalp behind
                           [rng.uniform(16, 26), rng.uniform(16, 26)]])   # right, left
    low = first - np.round(margins_mm[:, 0] / spacing).astype(int)
    high = last + 1 + np.round(margins_mm[:, 1] / spacing).astype(int)
    shape = tuple(int(h - l) for l, h in zip(low, high))
    labels = _window(labels_in, low, shape)
    brain = gen.brain_lookup()[labels]
    out = _draw_head(labels, brain, spacing, rng)
    out[brain] = labels[brain]
    standard_image = _window(to_standard(image.array.astype(np.float32), transpose, flips), low, shape)
    if paint:
        standard_image = _paint_t1(standard_image, out, brain, spacing, rng)
    else:
        standard_image = np.where(brain, standard_image, 0.0).astype(np.float32)
    # the new grid's first voxel, in the original index order: flipped axes start at their far end
    start_ijk = np.zeros(3)
    for k, a in enumerate(transpose):
        n_original = image.array.shape[a]
        start_ijk[2 - a] = low[k] if not flips[k] else n_original - 1 - (low[k] + shape[k] - 1)
    origin = image.index_to_physical(start_ijk)
    volume = Volume(from_standard(standard_image, transpose, flips), image.spacing, tuple(origin),
                    image.direction.copy())
    generation = from_standard(out, transpose, flips)
    return volume, gen.training_labels(generation), generation


def _window(array: np.ndarray, low, shape) -> np.ndarray:
    """array[low : low + shape] with zeros outside."""
    out = np.zeros(shape, array.dtype)
    src = tuple(slice(max(l, 0), min(l + n, m)) for l, n, m in zip(low, shape, array.shape))
    dst = tuple(slice(s.start - l, s.stop - l) for s, l in zip(src, low))
    out[dst] = array[src]
    return out


def _draw_head(labels: np.ndarray, brain: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Generation labels of a random head around ``brain`` (standard layout); brain voxels are 0.

    Distances are taken on a grid of about 2 mm and two coordinates come back to the full grid:
    ``layer`` (from the cranial envelope outwards: CSF [0, 1), inner table, diploe, outer table,
    scalp [4, 5)) and ``outer`` (from the skin inwards: skin [0, 1), fat [1, 2), deeper tissue)."""
    shape = labels.shape
    factors = coarse_factors(spacing)
    coarse_spacing = spacing * np.array(factors)
    # the cranial envelope: the brain closed over its sulci and fissures (7-10 mm)
    coarse_brain = pool_any(brain, factors)
    radius = rng.uniform(7.0, 10.0)
    grown = ndimage.distance_transform_edt(~coarse_brain, sampling=coarse_spacing) <= radius
    envelope = (ndimage.distance_transform_edt(grown, sampling=coarse_spacing) > radius) | coarse_brain
    outside = ndimage.distance_transform_edt(~envelope, sampling=coarse_spacing).astype(np.float32)
    signed = np.where(envelope, -1.0, outside).astype(np.float32)
    cshape = signed.shape

    def varying(mean: float, spread: float, wavelength: float = 40.0) -> np.ndarray:
        return mean + spread * smooth_field(rng, cshape, coarse_spacing, wavelength)

    bone = varying(rng.uniform(4.5, 9.0), 1.2)
    inner, diploe_share = rng.uniform(0.2, 0.3), rng.uniform(0.35, 0.55)
    scalp = varying(rng.uniform(4.0, 9.0), 1.5) + _temporalis(cshape, coarse_spacing, coarse_brain, rng)
    thicknesses = [varying(rng.uniform(1.0, 3.5), 0.7), bone * inner, bone * diploe_share,
                   bone * (1 - inner - diploe_share), scalp]
    layer_coarse = _layer_coordinate(signed, thicknesses)
    anatomy = HeadAnatomy(labels, brain, spacing, rng)
    head_coarse = (layer_coarse < 5.0) | anatomy.neck_and_face(cshape, coarse_spacing, factors)
    head_coarse = ndimage.binary_closing(head_coarse, iterations=2) | head_coarse
    depth = ndimage.distance_transform_edt(head_coarse, sampling=coarse_spacing).astype(np.float32)
    outer_coarse = _layer_coordinate(depth - 0.5 * coarse_spacing.min(),
                                     [np.full(cshape, rng.uniform(1.0, 2.0), np.float32),
                                      varying(rng.uniform(2.5, 7.0), 1.0, 60.0)])
    outer_coarse[~head_coarse] = -1.0
    muscle_coarse = smooth_field(rng, cshape, coarse_spacing, 12.0) > rng.uniform(-0.3, 0.5)

    layer = coarse_to_full(layer_coarse, factors, shape)
    outer = coarse_to_full(outer_coarse, factors, shape)
    face_muscle = coarse_to_full_nearest(muscle_coarse, factors, shape)
    # outside the skull: skin, fat, then muscle (scalp) or a muscle and fat mix (face, neck)
    out = np.select([outer < 0.0, outer < 1.0, outer < 2.0, layer < 1.0, layer < 2.0, layer < 3.0, layer < 4.0,
                     (layer < 5.0) | face_muscle],
                    [AIR, SKIN, FAT, CSF, BONE, DIPLOE, BONE, MUSCLE], SOFT).astype(np.uint8)
    skull = layer < 4.0  # the skull and the CSF within it win over the skin and fat of the face below
    out[skull] = np.select([layer < 1.0, layer < 2.0, layer < 3.0], [CSF, BONE, DIPLOE], BONE)[skull]
    anatomy.draw(out, ~(brain | (layer < 1.0)), ~brain, outer >= 0.0)
    return out


def _temporalis(shape, spacing, brain, rng) -> np.ndarray:
    """Extra scalp thickness (mm) at both temples: the temporalis muscle, up to 5-15 mm thick."""
    first, last = bounding_box(brain)
    low, high = first * spacing, last * spacing
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij", sparse=True)
    centre_z = low[0] + rng.uniform(0.35, 0.5) * (high[0] - low[0])
    centre_y = low[1] + rng.uniform(0.3, 0.45) * (high[1] - low[1])
    bump = np.exp(-((z - centre_z) / rng.uniform(25, 35)) ** 2 - ((y - centre_y) / rng.uniform(30, 40)) ** 2)
    lateral = np.clip(np.abs(x - (low[2] + high[2]) / 2) / ((high[2] - low[2]) / 2), 0, 1) ** 4
    return (rng.uniform(5.0, 15.0) * bump * lateral).astype(np.float32)


def _paint_t1(image: np.ndarray, generation: np.ndarray, brain: np.ndarray, spacing, rng) -> np.ndarray:
    """T1 intensities for the head's labels, relative to the brain's white matter, with a smooth
    texture, so a real brain sits in a plausible head."""
    white_matter = image[generation == gen.code("cerebral white matter")]
    reference = float(np.median(white_matter)) if white_matter.size else float(np.percentile(image[brain], 90))
    ranges = gen.t1_ranges()
    levels = np.zeros(256, np.float32)
    for code in np.unique(generation[~brain]):
        low, high = ranges[code]
        levels[code] = reference * rng.uniform(low, high)
    head = ~brain & (generation != AIR)
    painted = levels[generation] * smooth_multiplier(rng, image.shape, spacing, 15.0, 0.06)  # noise comes later, with the rest of the image's
    return np.where(head, np.maximum(painted, 0.0), np.where(brain, image, 0.0)).astype(np.float32)


