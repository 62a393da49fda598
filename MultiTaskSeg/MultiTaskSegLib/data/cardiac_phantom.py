"""The cardiac CTA phantom (Hounsfield units); see phantoms.py."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .phantom_shapes import grid_mm, centred_volume, smoothed_noise, random_curve, render_tubes, soft_inside

CARDIAC_SHAPE = (96, 144, 144)
CARDIAC_SPACING_MM = 0.8


class _HeartFrame:
    """An ellipsoidal heart: centre, long axis u (base -> apex) and two short axes, all in mm (z, y, x)."""

    def __init__(self, rng: np.random.Generator):
        self.centre = np.array([rng.uniform(-14, -4), rng.uniform(-6, 2), rng.uniform(2, 10)])
        u = np.array([-0.45, -0.5, 0.72]) + 0.12 * rng.standard_normal(3)  # apex: inferior, anterior, left
        self.u = u / np.linalg.norm(u)
        anterior = np.array([0.0, -1.0, 0.0])
        v = anterior - anterior.dot(self.u) * self.u
        self.v = v / np.linalg.norm(v)  # towards the front wall (right ventricle side)
        self.w = np.cross(self.u, self.v)
        self.axes = np.array([rng.uniform(38, 46), rng.uniform(30, 36), rng.uniform(28, 34)])

    def local(self, z, y, x):
        """Voxel coordinates in the heart frame (s along the long axis, t, r across it)."""
        d = [z - self.centre[0], y - self.centre[1], x - self.centre[2]]
        return [sum(axis[i] * d[i] for i in range(3)) for axis in (self.u, self.v, self.w)]

    def surface_point(self, s_fraction: np.ndarray, phi: np.ndarray, outside_mm: np.ndarray) -> np.ndarray:
        """Points ``outside_mm`` outside the epicardium at (fraction of the long semi-axis, angle)."""
        a, b, c = self.axes
        s = s_fraction * a
        ring = np.sqrt(np.clip(1 - s_fraction**2, 0.02, None))
        t, r = ring * b * np.cos(phi), ring * c * np.sin(phi)
        normal = np.stack([s / a**2, t / b**2, r / c**2], axis=1)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        local = np.stack([s, t, r], axis=1) + outside_mm[:, None] * normal
        basis = np.stack([self.u, self.v, self.w])  # rows: local axes in (z, y, x)
        return self.centre + local @ basis


def _surface_path(rng, s_start, s_end, phi_start, phi_end, n=60, wiggle=0.03):
    """A smoothly wandering path in (long-axis fraction, angle) between two surface positions."""
    f = np.linspace(0, 1, n)
    drift = np.cumsum(rng.standard_normal(n)) * wiggle
    drift -= f * drift[-1]  # keep both ends where asked
    return s_start + (s_end - s_start) * f, phi_start + (phi_end - phi_start) * f + drift


def _coronary_tree(rng: np.random.Generator, heart: _HeartFrame, aortic_root: np.ndarray,
                   aorta_radius: float) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Centrelines (mm) and radii of a left main with LAD and circumflex, a right coronary, side branches."""
    lines, radii = [], []
    groove = rng.uniform(-0.5, -0.4)  # atrioventricular groove, as a fraction of the long semi-axis
    phi_lad = rng.uniform(-0.5, -0.15)  # anterior interventricular groove (v points anteriorly)

    def add(s, phi, r_start, r_end, start_point=None):
        outside = np.linspace(r_start, r_end, len(s)) * 0.8  # centreline in the fat, wall on the muscle
        points = heart.surface_point(s, phi, outside)
        if start_point is not None:
            points = np.concatenate([_straight(start_point, points[0]), points])
        lines.append(points)
        radii.append(np.linspace(r_start, r_end, len(points)))
        return s, phi

    def ostium(towards):
        direction = towards - aortic_root
        direction[0] = 0.0  # ostia leave the root sideways
        return aortic_root + 0.6 * aorta_radius * direction / np.linalg.norm(direction)

    # Left main -> LAD down the anterior groove to the apex; circumflex round the left AV groove.
    bifurcation = heart.surface_point(np.array([groove]), np.array([phi_lad + 0.5]), np.array([1.5]))[0]
    r_main = rng.uniform(1.7, 2.0)
    lines.append(_straight(ostium(bifurcation), bifurcation))
    radii.append(np.full(len(lines[-1]), r_main))
    lad = add(*_surface_path(rng, groove, rng.uniform(0.8, 0.95), phi_lad + 0.5, phi_lad), r_main * 0.9,
              rng.uniform(0.8, 0.95), start_point=bifurcation)
    lcx = add(*_surface_path(rng, groove, groove + rng.uniform(0.0, 0.15), phi_lad + 0.5,
                             phi_lad + 0.5 + rng.uniform(1.6, 2.4)), r_main * 0.85, rng.uniform(0.8, 0.95),
              start_point=bifurcation)
    # Right coronary round the right AV groove to the back, then a short posterior descending branch.
    rca_entry = heart.surface_point(np.array([groove]), np.array([phi_lad - 0.9]), np.array([1.5]))[0]
    rca_end = phi_lad - 0.9 - rng.uniform(1.8, 2.5)
    add(*_surface_path(rng, groove, groove + 0.05, phi_lad - 0.9, rca_end), rng.uniform(1.6, 1.9),
        rng.uniform(1.0, 1.2), start_point=ostium(rca_entry))
    add(*_surface_path(rng, groove + 0.05, rng.uniform(0.3, 0.6), rca_end, rca_end + rng.uniform(-0.3, 0.1), n=40),
        1.1, 0.8)
    # Side branches (diagonals, marginals) leave the LAD and circumflex towards the apex.
    for parent, count in ((lad, rng.integers(1, 4)), (lcx, rng.integers(1, 3))):
        for _ in range(count):
            k = rng.integers(8, 35)
            s0, p0 = parent[0][k], parent[1][k]
            add(*_surface_path(rng, s0, min(s0 + rng.uniform(0.4, 0.8), 0.9), p0, p0 + rng.uniform(0.3, 0.8), n=40),
                rng.uniform(0.9, 1.1), 0.8)
    return lines, radii


def _straight(start, end, step_mm: float = 0.5) -> np.ndarray:
    n = max(int(np.linalg.norm(np.asarray(end) - start) / step_mm), 2)
    return np.linspace(start, end, n)


def cardiac_cta_phantom(seed: int, shape: Sequence[int] = CARDIAC_SHAPE,
                        spacing: float = CARDIAC_SPACING_MM, return_anatomy: bool = False):
    """A contrast-enhanced cardiac CTA phantom in Hounsfield units and its coronary artery label.

    An ellipsoidal heart (myocardium ~100 HU) holds contrast-filled chambers (~350-450 HU);
    the aortic root rises from its base as the ascending aorta, the descending aorta runs
    behind, the pulmonary trunk in front; epicardial fat (~-100 HU) covers the heart; the
    lungs (~-850 HU) hold bright contrast-filled vessels; a chest wall lies in front. The
    coronary arteries (label 1) leave the aortic root as a left main splitting into the
    LAD and circumflex and a right coronary, with random side branches, and run in the
    epicardial fat on the heart surface as 1.5-4 mm wide tapering tubes as bright as the
    blood pool; some cases get calcified spots. A slight blur and correlated noise
    (20-40 HU) follow. Returns (Volume with int16 HU, labels uint8 of the same shape), and
    with ``return_anatomy`` also a dict of boolean masks ("heart" = inside the epicardium,
    "aorta", "blood_pool" = chambers and great vessels) for checks and error analysis.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    z, y, x = grid_mm(shape, spacing)
    heart = _HeartFrame(rng)
    s, t, r = heart.local(z, y, x)
    a, b, c = heart.axes
    q = np.sqrt((s / a) ** 2 + (t / b) ** 2 + (r / c) ** 2)  # 1 on the epicardium
    mean_axis = heart.axes.mean()

    blood = rng.uniform(350, 450)
    image = np.full(shape, rng.uniform(-870, -820), np.float32)  # lungs
    image += 25 * smoothed_noise(rng, shape, 2.0)

    # Chest wall in front: subcutaneous fat, muscle, sternum in the midline.
    wall_y = y.min() + rng.uniform(6, 14) + 0.004 * x**2
    chest = np.broadcast_to(y < wall_y, shape)
    image[chest] = 40.0
    image[np.broadcast_to(y < wall_y - 5, shape)] = -100.0
    image[np.broadcast_to((np.abs(x + 5) < 14) & (y < wall_y) & (y > wall_y - 9), shape)] = 450.0  # sternum

    # Pulmonary vessels: thin bright random tubes in the lungs.
    vessel_lines, vessel_radii = [], []
    for _ in range(rng.integers(10, 16)):
        start = (rng.uniform(-0.5, 0.5, 3) * np.asarray(shape) * spacing)
        vessel_lines.append(random_curve(rng, start, rng.standard_normal(3), rng.uniform(30, 70), 1.0, 0.15))
        vessel_radii.append(np.linspace(rng.uniform(1.2, 2.5), 0.6, len(vessel_lines[-1])))
    vessel_signed, _ = render_tubes(shape, spacing, vessel_lines, vessel_radii)
    vessel = soft_inside(vessel_signed, 0.3)
    image = image * (1 - vessel) + rng.uniform(250, 400) * vessel

    # Mediastinal and epicardial fat around the heart, thicker in places.
    fat_thickness = rng.uniform(3, 7) + 2.0 * smoothed_noise(rng, shape, 6.0)
    fat = (q - 1) * mean_axis < np.clip(fat_thickness, 1.5, None)
    image[fat] = -100 + 15 * smoothed_noise(rng, shape, 1.5)[fat]

    # Heart: myocardium, then the chambers carved into it.
    image[q <= 1] = rng.uniform(80, 130)
    lv = ((s - 0.1 * a) / (0.72 * a)) ** 2 + ((t + 0.1 * b) / (0.5 * b)) ** 2 + ((r - 0.28 * c) / (0.48 * c)) ** 2 <= 1
    rv = (((s + 0.05 * a) / (0.65 * a)) ** 2 + ((t - 0.45 * b) / (0.45 * b)) ** 2 + ((r + 0.25 * c) / (0.6 * c)) ** 2 <= 1)
    rv &= ~ndimage.binary_dilation(lv, iterations=int(round(rng.uniform(8, 11) / spacing)))  # the septum
    atria = ((s + 0.85 * a) / (0.32 * a)) ** 2 + ((t + 0.35 * b) / (0.55 * b)) ** 2 + (r / (0.8 * c)) ** 2 <= 1
    image[lv | atria] = blood
    image[rv] = blood * rng.uniform(0.65, 0.95)  # right side less opacified

    # Aorta: root at the heart's base, ascending to the top; descending aorta behind; pulmonary trunk.
    aorta_radius = rng.uniform(12, 15)
    root = heart.centre - 0.95 * a * heart.u + 0.2 * b * heart.v + rng.uniform(-2, 2, 3)
    ascending = np.array([root + np.array([h, 0.12 * h, -0.1 * h]) for h in np.linspace(0, 80, 60)])
    descending = np.array([[h, rng.uniform(38, 44), rng.uniform(16, 24)] for h in np.linspace(-80, 80, 3)])
    trunk_start = root + np.array([0, -aorta_radius - 8, aorta_radius * 0.6])
    trunk = random_curve(rng, trunk_start, np.array([1.0, 0.6, 0.2]), 45, 1.0, 0.02)
    aorta_signed, aorta = render_tubes(shape, spacing, [ascending, descending],
                                        [np.full(60, aorta_radius), np.full(3, rng.uniform(10, 12))])
    trunk_signed, _ = render_tubes(shape, spacing, [trunk], [np.full(len(trunk), rng.uniform(10, 13))])
    great_vessels = soft_inside(np.minimum(aorta_signed, trunk_signed), 0.3)
    image = image * (1 - great_vessels) + blood * great_vessels

    # Coronary arteries, as bright as the blood pool, in a sleeve of fat that also carves the
    # atrioventricular groove between atria and ventricles; where a tube enters the aortic root it is aorta.
    lines, radii = _coronary_tree(rng, heart, root, aorta_radius)
    coronary_signed, coronary = render_tubes(shape, spacing, lines, radii)
    chambers = lv | rv | atria
    sleeve = (coronary_signed < 2.0) & ~aorta & ((q > 0.97) | chambers)
    fat_around = sleeve & ~coronary
    image[fat_around] = -100 + 15 * rng.standard_normal(int(fat_around.sum()))
    lumen = soft_inside(coronary_signed, 0.25)
    image = image * (1 - lumen) + blood * rng.uniform(0.9, 1.0) * lumen
    labels = (coronary & ~aorta).astype(np.uint8)
    blood_pool = ((chambers & ~sleeve) | aorta | (trunk_signed <= 0)) & ~labels.astype(bool)
    if rng.random() < 0.5:
        _add_calcifications(rng, image, lines, radii, spacing, shape)

    image = ndimage.gaussian_filter(image, rng.uniform(0.4, 0.6))  # scanner resolution
    image += rng.uniform(20, 40) * smoothed_noise(rng, shape, 0.7)
    volume = centred_volume(np.round(np.clip(image, -1024, 3071)).astype(np.int16), spacing)
    if not return_anatomy:
        return volume, labels
    return volume, labels, {"heart": q <= 1, "aorta": aorta, "blood_pool": blood_pool}


def _add_calcifications(rng, image, lines, radii, spacing, shape) -> None:
    """Bright calcium spots on the wall of proximal coronary segments (drawn in place)."""
    z, y, x = grid_mm(shape, spacing)
    for _ in range(rng.integers(1, 4)):
        line_index = rng.integers(0, len(lines))
        k = rng.integers(0, max(len(lines[line_index]) // 3, 1))
        offset = rng.standard_normal(3)
        centre = lines[line_index][k] + radii[line_index][k] * 0.8 * offset / np.linalg.norm(offset)
        lo = np.maximum(np.floor(centre / spacing + (np.asarray(shape) - 1) / 2 - 3).astype(int), 0)
        hi = np.minimum(lo + 7, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(l, h) for l, h in zip(lo, hi))
        d2 = (z[box[0], :, :][:, :1, :1] - centre[0]) ** 2 + (y[:, box[1], :][:1, :, :1] - centre[1]) ** 2 + (
            x[:, :, box[2]][:1, :1, :] - centre[2]) ** 2
        image[box] = np.where(d2 <= rng.uniform(0.8, 1.4) ** 2, rng.uniform(700, 1000), image[box])
