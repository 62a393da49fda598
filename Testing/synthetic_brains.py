"""A small synthetic brain for the synthesis tests: ellipsoids with the generation labels of a real
one (white matter, cortex, deep grey matter, ventricles, cerebellum, brain stem, hippocampus) and
T1-like intensities, at 2 mm so that a head around it takes a fraction of a second."""

from __future__ import annotations

import numpy as np

from MultiTaskSegLib.engine.geometry import Volume
from MultiTaskSegLib.training import generation_labels as gen

SPACING_MM = 2.0


def ellipsoid_brain(direction=None, spacing: float = SPACING_MM, shape=(64, 84, 70)):
    """(T1 Volume, generation labels) in LPS; array axes (z, y, x) run S, P, L unless ``direction``
    says otherwise. The brain is 140 x 170 x 120 mm like an adult's, placed in the upper part of
    the grid so that a head has room below."""
    z, y, x = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * spacing for n in shape], indexing="ij")
    z = z - 8.0  # the brain's centre a little above the grid's

    def inside(cz, cy, cx, az, ay, ax):
        return ((z - cz) / az) ** 2 + ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2 <= 1.0

    labels = np.zeros(shape, np.uint8)
    cerebrum = inside(10, -5, 0, 45, 80, 68)
    labels[cerebrum] = gen.code("cerebral cortex")
    labels[inside(10, -5, 0, 40, 74, 62)] = gen.code("cerebral white matter")
    for side in (-1, 1):
        labels[inside(0, -5, side * 14, 10, 14, 7)] = gen.code("thalamus")
        labels[inside(5, -25, side * 16, 9, 10, 6)] = gen.code("putamen")
        labels[inside(-10, 10, side * 28, 6, 12, 5)] = gen.code("hippocampus")
    labels[inside(15, -10, 0, 6, 30, 8)] = gen.code("lateral ventricles")
    cerebellum = inside(-35, 45, 0, 18, 24, 45) & ~cerebrum
    labels[cerebellum] = gen.code("cerebellar cortex")
    labels[inside(-34, 43, 0, 8, 10, 20) & cerebellum] = gen.code("cerebellar white matter")
    labels[inside(-40, 15, 0, 24, 9, 9) & (labels == 0)] = gen.code("brain stem")
    intensity = np.zeros(256, np.float32)
    for label in gen.GENERATION_LABELS:
        intensity[label.code] = 100.0 * sum(label.t1_range) / 2
    image = intensity[labels]
    if direction is None:
        direction = np.eye(3)
    volume = Volume(image, (spacing,) * 3, (-60.0, 80.0, -70.0), direction)
    return volume, labels
