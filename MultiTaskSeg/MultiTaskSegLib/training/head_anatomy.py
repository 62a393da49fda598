"""The neck, the face and the orbits of a synthetic head, placed relative to the brain.

Arrays are in head_synthesis's standard layout (axis 0 inferior to superior, 1 anterior to
posterior, 2 right to left), positions in mm from the first voxel. Positions and sizes are drawn
around adult averages, anchored on the brain: the spinal cord continues the brain stem
downwards, the globes sit 29-34 mm from the midline at the level of the frontal lobes' lowest point (the
gyri recti between the orbits), 3-12 mm behind the frontal pole, and the face reaches 8-14 mm
in front of them (as in pydeface's mean head, measured against its registered brain).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from . import generation_labels as gen

AIR, CSF, BONE, DIPLOE = gen.code("air"), gen.code("extra-cerebral CSF"), gen.code("cortical bone"), gen.code("diploe")
FAT, MUSCLE, SKIN = gen.code("scalp fat"), gen.code("muscle"), gen.code("skin")
VITREOUS, ORBITAL_FAT, NERVE = gen.code("vitreous"), gen.code("orbital fat"), gen.code("optic nerve")
SOFT, MARROW, CORD, CAVITY = (gen.code("neck soft tissue"), gen.code("vertebral marrow"), gen.code("spinal cord"),
                              gen.code("air cavities"))
BRAIN_STEM = gen.code("brain stem")

Region = Optional[Tuple[slice, slice, slice]]


def bounding_box(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """First and last index of ``mask``'s True voxels along each axis."""
    first, last = [], []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        first.append(hits[0])
        last.append(hits[-1])
    return np.array(first), np.array(last)


def _box(centre, half, spacing, shape):
    """Slices of the voxels within ``half`` mm of ``centre`` (mm, per axis) and their mm coordinates."""
    lo = [max(0, int(np.floor((c - h) / s))) for c, h, s in zip(centre, half, spacing)]
    hi = [min(n, int(np.ceil((c + h) / s)) + 1) for c, h, s, n in zip(centre, half, spacing, shape)]
    if any(h <= l for l, h in zip(lo, hi)):
        return None, None
    coords = np.meshgrid(*[np.arange(l, h) * s for l, h, s in zip(lo, hi, spacing)], indexing="ij", sparse=True)
    return tuple(slice(l, h) for l, h in zip(lo, hi)), coords


def ellipsoid(shape, spacing, centre, semi_axes, grow_mm: float = 0.0) -> Tuple[Region, Optional[np.ndarray]]:
    """(region, mask) of an axis-aligned ellipsoid, its semi-axes grown by ``grow_mm``."""
    half = [a + grow_mm for a in semi_axes]
    region, coords = _box(centre, half, spacing, shape)
    if region is None:
        return None, None
    z, y, x = coords
    return region, ((z - centre[0]) / half[0]) ** 2 + ((y - centre[1]) / half[1]) ** 2 + \
        ((x - centre[2]) / half[2]) ** 2 <= 1.0


def segment(shape, spacing, start, end, radius) -> Tuple[Region, Optional[np.ndarray]]:
    """(region, mask) of the voxels within ``radius`` mm of the segment from ``start`` to ``end`` (mm)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    centre, half = (start + end) / 2, np.abs(end - start) / 2 + radius
    region, coords = _box(centre, half, spacing, shape)
    if region is None:
        return None, None
    axis = end - start
    length2 = max(float(axis @ axis), 1e-9)
    offsets = [c - s for c, s in zip(coords, start)]
    t = np.clip(sum(o * a for o, a in zip(offsets, axis)) / length2, 0.0, 1.0)
    distance2 = sum((o - t * a) ** 2 for o, a in zip(offsets, axis))
    return region, distance2 <= radius ** 2


def paint(labels: np.ndarray, free: np.ndarray, code: int, region: Region, mask) -> None:
    """Set ``code`` in ``labels`` where ``mask`` (within ``region``) and ``free``."""
    if region is None:
        return
    labels[region][mask & free[region]] = code


class HeadAnatomy:
    """One random draw of the positions and sizes of the neck, face and orbits around a brain."""

    def __init__(self, labels: np.ndarray, brain: np.ndarray, spacing: Sequence[float], rng: np.random.Generator):
        self.spacing = np.asarray(spacing, float)
        u = rng.uniform
        first, last = bounding_box(brain)
        low, high = first * self.spacing, last * self.spacing
        size = high - low
        self.mid_x = (low[2] + high[2]) / 2 + u(-2, 2)
        stem = labels == BRAIN_STEM
        if stem.any():
            bottom = int(bounding_box(stem)[0][0])
            rows = np.argwhere(stem[bottom: bottom + max(1, int(6.0 / self.spacing[0]))])
            self.stem_bottom, self.cord_y = bottom * self.spacing[0], rows[:, 1].mean() * self.spacing[1]
        else:
            self.stem_bottom, self.cord_y = low[0] + 0.15 * size[0], low[1] + 0.6 * size[1]
        self.cord_tilt = u(-0.25, 0.1)  # mm forward per mm down (necks lean forward)
        # the lowest point of the frontal lobes (gyri recti, between the orbits)
        x_lo, x_hi = [int(round((self.mid_x + d) / self.spacing[2])) for d in (-40.0, 40.0)]
        frontal = brain[:, first[1]: first[1] + int(0.2 * size[1] / self.spacing[1]) + 1, max(0, x_lo): x_hi]
        rows = np.flatnonzero(frontal.any(axis=(1, 2)))
        frontal_base = rows[0] * self.spacing[0] if rows.size else low[0] + 0.35 * size[0]
        self.eye_radius = u(11.0, 12.5)
        self.eye_z = frontal_base - u(0.0, 6.0)
        self.eye_y = low[1] + u(3.0, 12.0)
        self.eye_dx = u(29.0, 34.0)
        self.face_front = self.eye_y - self.eye_radius - u(8.0, 14.0)
        face_depth = u(40.0, 50.0)
        self.face = ((self.eye_z - u(15.0, 25.0), self.face_front + face_depth, self.mid_x),
                     (u(50.0, 62.0), face_depth, u(50.0, 60.0)))
        self.nose = ((self.eye_z - u(20.0, 28.0), self.face_front - u(6.0, 12.0), self.mid_x),
                     (u(20.0, 26.0), u(14.0, 20.0), u(9.0, 13.0)))
        self.neck_top = self.stem_bottom + u(0.0, 15.0)
        self.neck_axes = (u(45.0, 58.0), u(50.0, 65.0))
        self.neck_y = self.cord_y - u(5.0, 15.0)
        self.canal, self.cord = u(6.0, 8.0), u(4.0, 5.5)
        self.body = (u(7.0, 10.0), u(11.0, 15.0))
        self.body_y = self.cord_y - self.canal - 2.0 - self.body[0]
        self.vertebra_period, self.disc = u(16.0, 20.0), u(4.0, 6.0)
        self.airway = (self.body_y - self.body[0] - u(9.0, 15.0), u(5.0, 8.0), u(7.0, 11.0))
        self.rng = rng

    # -- shapes at any resolution

    def _cord_y(self, z):
        return self.cord_y + self.cord_tilt * (self.stem_bottom - z)

    def neck_and_face(self, shape, spacing, factors) -> np.ndarray:
        """The neck column and the face (boolean, on a grid of ``spacing`` whose cells' centres
        sit at (i f + (f - 1) / 2) full voxels, as ``random_fields.pool_any`` makes them)."""
        full = self.spacing
        z, y, x = np.meshgrid(*[(np.arange(n) * f + (f - 1) / 2.0) * s for n, f, s in zip(shape, factors, full)],
                              indexing="ij", sparse=True)
        neck_y = self.neck_y + self.cord_tilt * (self.stem_bottom - z)
        neck = (((y - neck_y) / self.neck_axes[0]) ** 2 + ((x - self.mid_x) / self.neck_axes[1]) ** 2 <= 1.0) & \
            (z <= self.neck_top)
        out = np.broadcast_to(neck, shape).copy()
        lids = self.eye_radius + 7.0  # eyelids and fat in front of the globes
        eyes = [((self.eye_z, self.eye_y, self.mid_x + side * self.eye_dx), (lids, lids, lids)) for side in (-1, 1)]
        for centre, axes in [self.face, self.nose] + eyes:
            out |= ((z - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + \
                ((x - centre[2]) / axes[2]) ** 2 <= 1.0
        return out

    def draw(self, labels: np.ndarray, free: np.ndarray, not_brain: np.ndarray, inside: np.ndarray) -> None:
        """Paint the neck's, face's and orbits' structures into ``labels`` (standard layout) where
        ``free`` and inside the head; the spinal canal and cord anywhere but the brain."""
        free = free & inside
        self._neck(labels, free, not_brain)
        self._face(labels, free)
        for side in (-1.0, 1.0):
            self._orbit(labels, free, side)

    def _neck(self, labels, free, not_brain) -> None:
        shape, s, u = labels.shape, self.spacing, self.rng.uniform
        top = min(shape[0], int(self.stem_bottom / s[0]) + 2)
        if top <= 0:
            return
        z, y, x = np.meshgrid(np.arange(top) * s[0], np.arange(shape[1]) * s[1], np.arange(shape[2]) * s[2],
                              indexing="ij", sparse=True)
        region = (slice(0, top), slice(None), slice(None))
        cy = self._cord_y(z)
        radial = np.sqrt((y - cy) ** 2 + (x - self.mid_x) ** 2)
        body_r = np.sqrt(((y - (self.body_y - (self.cord_y - cy))) / self.body[0]) ** 2
                         + ((x - self.mid_x) / self.body[1]) ** 2)
        disc = ((self.stem_bottom - z) % self.vertebra_period) < self.disc
        body = body_r <= 1.0
        paint(labels, free, BONE, region, body)
        paint(labels, free, MARROW, region, body & (body_r <= 1.0 - 1.2 / self.body[0]))
        paint(labels, free, MUSCLE, region, body & disc)
        paint(labels, free, MARROW, region, (radial <= self.canal + u(3.0, 5.0)) & (y >= cy - self.canal))
        airway_y, ay, ax = self.airway
        top_airway = self.eye_z - u(15.0, 25.0)
        airway = (((y - (airway_y - (self.cord_y - cy))) / ay) ** 2 + ((x - self.mid_x) / ax) ** 2 <= 1.0) & \
            (z <= top_airway)
        paint(labels, free, CAVITY, region, airway)
        paint(labels, not_brain, CSF, region, radial <= self.canal)
        paint(labels, not_brain, CORD, region, radial <= self.cord)

    def _face(self, labels, free) -> None:
        shape, s, u = labels.shape, self.spacing, self.rng.uniform
        ez, ey, mx = self.eye_z, self.eye_y, self.mid_x
        nasal = ellipsoid(shape, s, (ez - u(12, 20), ey + u(0, 10), mx), (u(16, 22), u(20, 28), u(5, 8)))
        paint(labels, free, CAVITY, *nasal)
        for side in (-1.0, 1.0):
            centre = (ez - u(22, 30), ey + u(0, 8), mx + side * u(20, 27))
            axes = (u(12, 16), u(14, 18), u(10, 13))
            paint(labels, free, BONE, *ellipsoid(shape, s, centre, axes, 1.5))
            paint(labels, free, CAVITY, *ellipsoid(shape, s, centre, axes))
        paint(labels, free, CAVITY, *ellipsoid(shape, s, (ez - u(0, 6), ey + u(30, 40), mx),
                                               (u(8, 11), u(9, 12), u(9, 12))))
        paint(labels, free, MUSCLE, *ellipsoid(shape, s, (ez - u(50, 58), ey + u(5, 15), mx),
                                               (u(12, 16), u(25, 32), u(20, 26))))
        # the mandible: a U of bone with marrow, open to the back
        region, coords = _box((ez - 65, ey + 20, mx), (12, 55, 50), s, shape)
        if region is not None:
            z, y, x = coords
            r = np.sqrt(((y - (ey + 25)) / u(45, 55)) ** 2 + ((x - mx) / u(40, 50)) ** 2)
            band = (r >= 0.82) & (r <= 1.0) & (y < ey + 25) & (np.abs(z - (ez - 65)) < u(8, 12))
            paint(labels, free, BONE, region, band)
            paint(labels, free, MARROW, region, band & (r > 0.86) & (r < 0.96))

    def _orbit(self, labels, free, side: float) -> None:
        shape, s, u = labels.shape, self.spacing, self.rng.uniform
        eye = np.array([self.eye_z + u(-1, 1), self.eye_y + u(-1, 1), self.mid_x + side * self.eye_dx])
        cone_centre = eye + np.array([0.0, u(10, 14), -side * 2.0])
        cone_axes = (u(12, 15), u(17, 22), u(12, 15))
        paint(labels, free, BONE, *ellipsoid(shape, s, cone_centre, cone_axes, u(1.5, 2.5)))
        paint(labels, free, ORBITAL_FAT, *ellipsoid(shape, s, cone_centre, cone_axes))
        apex = (self.eye_z + u(4, 10), self.eye_y + u(35, 45), self.mid_x + side * u(6, 10))
        paint(labels, free, NERVE, *segment(shape, s, eye, apex, u(2.0, 2.6)))
        radius = self.eye_radius
        paint(labels, free, MUSCLE, *ellipsoid(shape, s, eye, (radius,) * 3))
        paint(labels, free, VITREOUS, *ellipsoid(shape, s, eye, (radius - 1.0,) * 3))
