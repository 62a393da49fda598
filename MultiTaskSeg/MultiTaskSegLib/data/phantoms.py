"""Procedural phantoms standing in for breast MRI and cardiac CTA, which no package ships.

These are phantoms, not patient data: simple geometric anatomy drawn at random per case
(deterministic by seed), made to carry the difficulty of the real tasks:

- breast MRI phantom (T1-weighted, no fat suppression): the pectoral muscle is a thin
  curved band behind bright fat and fibroglandular tissue of about the muscle's own
  intensity, in front of intercostal muscle of the same intensity, so position and shape
  decide, not intensity. Label 1 = pectoral muscle.
- cardiac CTA phantom (Hounsfield units): the coronary arteries are thin tapering tubes
  as bright as the contrast-filled chambers and aorta they start from and run beside,
  among bright pulmonary vessels. Label 1 = coronary arteries.

Arrays are (z, y, x) with identity direction, so index axes follow LPS: x to the
patient's left, y to posterior (anterior structures at low y), z to superior.
All drawing is vectorised numpy; one case takes about a second. The breast phantom is drawn in
breast_phantom.py, the cardiac one in cardiac_phantom.py, with phantom_shapes.py's helpers.
"""

from __future__ import annotations

from .breast_phantom import BREAST_SHAPE, BREAST_SPACING_MM, breast_mri_phantom
from .cardiac_phantom import CARDIAC_SHAPE, CARDIAC_SPACING_MM, cardiac_cta_phantom

__all__ = ["BREAST_SHAPE", "BREAST_SPACING_MM", "breast_mri_phantom", "CARDIAC_SHAPE", "CARDIAC_SPACING_MM",
           "cardiac_cta_phantom"]
