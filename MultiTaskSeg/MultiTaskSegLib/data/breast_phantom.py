"""The breast MRI phantom (T1-weighted, no fat suppression); see phantoms.py."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..engine.geometry import Volume
from .phantom_shapes import grid_mm, centred_volume, smoothed_noise, knot_field

BREAST_SHAPE = (64, 112, 160)
BREAST_SPACING_MM = 1.3


def breast_mri_phantom(seed: int, shape: Sequence[int] = BREAST_SHAPE,
                       spacing: float = BREAST_SPACING_MM) -> Tuple[Volume, np.ndarray]:
    """A T1-weighted (no fat suppression) axial breast MRI phantom and its pectoral muscle label.

    Anatomy from anterior (low y) to posterior: air, skin, two breasts of fat holding
    irregular fibroglandular clumps, a thin retromammary fat layer, the pectoral muscle
    (label 1; 5-15 mm thick, thickness and curvature varying per case and along the
    muscle, tapering medially and laterally), the chest wall (intercostal muscle of the
    same intensity as the pectoral muscle, ribs with fatty marrow, sternum), then dark
    lungs and the heart. A smooth multiplicative bias field and Rician noise follow.
    Returns (Volume with int16 intensities, labels uint8 of the same shape).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    z, y, x = grid_mm(shape, spacing)
    half_width = (shape[2] - 1) / 2.0 * spacing

    # Chest wall surface y = wall(z, x): the front of the ribcage, curving backwards laterally.
    wall_y0 = rng.uniform(0.05, 0.2) * shape[1] * spacing
    curvature = rng.uniform(0.0022, 0.0045)
    tilt = rng.uniform(-0.08, 0.08)
    wall = wall_y0 + curvature * x**2 + 0.0015 * z**2 + tilt * z + 0.04 * np.abs(x) * rng.uniform(-1, 1)

    # Pectoral muscle thickness: a smooth random field in 5-15 mm, tapering at its ends.
    thickness_field = smoothed_noise(rng, (shape[0], 1, shape[2]), (4, 1, 12))
    base_thickness = rng.uniform(7.0, 11.0)
    thickness = np.clip(base_thickness + 2.5 * thickness_field, 5.0, 15.0)
    medial_end = rng.uniform(12.0, 22.0)  # the sternum lies between the two muscles
    lateral_end = half_width * rng.uniform(0.85, 1.05)
    ax = np.abs(x)
    taper = np.clip((ax - medial_end) / 15.0, 0, 1) * np.clip((lateral_end - ax) / 20.0, 0, 1)
    inferior_fade = np.clip((z - z.min()) / (rng.uniform(0.1, 0.35) * shape[0] * spacing) , 0, 1)
    thickness = thickness * np.sqrt(taper) * inferior_fade
    muscle_front = wall - thickness
    muscle = (y >= muscle_front) & (y < wall) & (thickness >= 1.0)

    # Breasts: two mounds in front of the chest wall; the skin surface is the front envelope.
    subcutaneous = rng.uniform(6.0, 12.0)
    front = wall - thickness - subcutaneous
    mounds = np.zeros((shape[0], 1, shape[2]), np.float32)
    for side in (-1, 1):
        cx = side * rng.uniform(0.25, 0.38) * 2 * half_width
        cz = rng.uniform(-0.15, 0.1) * shape[0] * spacing
        rx, rz = rng.uniform(38, 55), rng.uniform(35, 50)
        depth = rng.uniform(50, 85)
        r2 = ((x - cx) / rx) ** 2 + ((z - cz) / rz) ** 2
        mounds = np.maximum(mounds, depth * np.clip(1 - r2, 0, None) ** rng.uniform(0.45, 0.7))
    front = front - mounds
    front = np.maximum(front, y.min() + 4 * spacing)  # keep a strip of air in front
    body = y >= front
    gradient = np.gradient(front[:, 0, :], spacing)
    slope = np.sqrt(1 + gradient[0] ** 2 + gradient[1] ** 2)[:, None, :]
    depth_below_skin = (y - front) / slope

    # Fibroglandular tissue: a thresholded smooth random field, denser near the nipple axis.
    density = rng.uniform(0.1, 0.45)
    glandular_noise = smoothed_noise(rng, shape, (1.5, 4.0, 1.5))  # strands towards the nipple
    breast_zone = body & (depth_below_skin > 4.0) & (y < muscle_front - rng.uniform(2.5, 6.0))
    in_mound = np.broadcast_to(mounds > 8.0, shape)
    mound_depth = np.clip(mounds / 85.0, 0, 1)
    glandular = breast_zone & in_mound & (glandular_noise + 1.2 * mound_depth > np.quantile(glandular_noise, 1 - density) + 0.4)

    # Chest wall: intercostal muscle, ribs sloping downwards laterally, sternum, then lungs and heart.
    behind = y - wall
    chest_wall = (behind >= 0) & (behind < 16.0)
    rib_pitch = rng.uniform(22, 28)
    rib_phase = rng.uniform(0, rib_pitch)
    rib_z = np.mod(z + 0.25 * ax - rib_phase, rib_pitch) - rib_pitch / 2
    rib = chest_wall & (((behind - 8.0) / 5.0) ** 2 + (rib_z / 5.5) ** 2 <= 1.0) & (ax > medial_end * 0.7)
    rib_marrow = rib & (((behind - 8.0) / 3.5) ** 2 + (rib_z / 4.0) ** 2 <= 1.0)
    sternum = (behind >= -4.0) & (behind < 12.0) & (ax < medial_end * 0.8)
    deep = behind >= 16.0
    heart = deep & (((x - 15.0) / 55.0) ** 2 + ((y - wall - 60.0) / 50.0) ** 2 + (z / 70.0) ** 2 <= 1)
    lung = deep & ~heart

    # T1 intensities (arbitrary scanner units), painted back to front.
    image = np.zeros(shape, np.float32)
    image[body] = rng.uniform(820, 950)  # fat everywhere in the body first
    image[glandular] = rng.uniform(320, 400)
    image[np.broadcast_to(chest_wall, shape)] = rng.uniform(300, 360)  # intercostal muscle
    image[rib] = 120.0
    image[rib_marrow] = rng.uniform(520, 650)
    image[np.broadcast_to(sternum, shape) & body] = rng.uniform(480, 600)
    muscle_value = rng.uniform(300, 380)
    image[muscle] = muscle_value
    # A fascia fat plane between muscle and chest wall, visible in some cases only.
    fascia = (behind >= 0) & (behind < 1.3) & np.broadcast_to(thickness >= 1.0, behind.shape)
    image[np.broadcast_to(fascia, shape) & body] = muscle_value + rng.uniform(0, 250)
    image[np.broadcast_to(lung, shape)] = rng.uniform(25, 60)
    image[np.broadcast_to(heart, shape)] = rng.uniform(220, 300)
    skin = body & (depth_below_skin < 2.0)
    image[skin] = rng.uniform(450, 550)
    image = ndimage.gaussian_filter(image, 0.6)  # partial volume at tissue borders
    image *= 1.0 + 0.04 * smoothed_noise(rng, shape, 3.0)  # tissue texture

    # Coil sensitivity: brighter near the breast coil (anterior), smooth and per case.
    bias = np.exp(
        rng.uniform(0.1, 0.3) * (-y / (shape[1] * spacing))
        + rng.uniform(-0.1, 0.1) * (x / half_width)
        + 0.1 * knot_field(rng, shape)
    )
    image = image * bias
    sigma = rng.uniform(18, 35)
    real = image + sigma * rng.standard_normal(shape).astype(np.float32)
    imaginary = sigma * rng.standard_normal(shape).astype(np.float32)
    magnitude = np.sqrt(real**2 + imaginary**2)  # Rician: air is small but positive
    labels = muscle.astype(np.uint8)
    return centred_volume(np.round(magnitude).astype(np.int16), spacing), labels
