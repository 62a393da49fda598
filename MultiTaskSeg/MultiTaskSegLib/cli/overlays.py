"""PNG overlays of a labelmap on its image in the three anatomical planes, for a quick look.

Drawn on the canonical grid (axis-aligned LPS, isotropic), so axial, coronal and sagittal views are
the real anatomical planes whatever the file's orientation; shown in radiological convention
(patient left on the image's right), superior up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..engine.classes import ClassInfo
from ..engine.geometry import Volume, to_canonical


def _window(image: np.ndarray) -> np.ndarray:
    inside = image[image > image.min()]
    low, high = np.percentile(inside, [1, 99.5]) if inside.size else (0.0, 1.0)
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1)


def _blend(gray: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    labelled = labels > 0
    rgb[labelled] = (1 - alpha) * rgb[labelled] + alpha * colours[labels[labelled]]
    return rgb


def save_overlay(image: Volume, labels: np.ndarray, classes: Sequence[ClassInfo], path: Path,
                 title: str = "", centre_on_labels: bool = True, reference: Optional[np.ndarray] = None) -> Path:
    """Write a PNG with the axial, coronal and sagittal planes through the labelled structures.

    With ``reference`` a second row shows the reference labels on the same planes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    canonical, grid = to_canonical(image)
    canonical_labels, _ = to_canonical(image.with_array(labels.astype(np.uint8)), grid.canonical_spacing, "nearest")
    rows = [("segmentation", canonical_labels.array)]
    if reference is not None:
        rows.append(("reference", to_canonical(image.with_array(reference.astype(np.uint8)),
                                               grid.canonical_spacing, "nearest")[0].array))
    gray = _window(canonical.array.astype(np.float32))
    colours = np.zeros((256, 3))
    for c in classes:
        colours[c.index] = c.color
    labelled = np.argwhere(canonical_labels.array > 0)
    z, y, x = (np.median(labelled, axis=0).astype(int) if centre_on_labels and len(labelled)
               else np.array(gray.shape) // 2)
    # the three planes at one height, each as wide as its aspect ratio asks (a fixed grid let a tall
    # axial image run into the next row's titles)
    shapes = [(gray.shape[1], gray.shape[2]), (gray.shape[0], gray.shape[2]), (gray.shape[0], gray.shape[1])]
    widths = [w / h for h, w in shapes]
    height = min(4.5, 11.5 / sum(widths))
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, (height + 0.5) * len(rows) + 1.0), squeeze=False,
                             width_ratios=widths, layout="constrained")
    for row, (name, lab) in enumerate(rows):
        # canonical axes: z inferior->superior, y anterior->posterior, x right->left (LPS);
        # axial with anterior at the top, coronal and sagittal with superior at the top.
        views = [("axial", gray[z], lab[z], "upper"),
                 ("coronal", gray[:, y, :], lab[:, y, :], "lower"),
                 ("sagittal", gray[:, :, x], lab[:, :, x], "lower")]
        for ax, (plane, g, l, origin) in zip(axes[row], views):
            ax.imshow(_blend(g, l, colours, 0.45), origin=origin, interpolation="nearest")
            ax.set_title(f"{name}: {plane}")
            ax.axis("off")
    present = [c for c in classes if c.index and (canonical_labels.array == c.index).any()]
    handles = [plt.Rectangle((0, 0), 1, 1, color=c.color) for c in present]
    if handles:
        fig.legend(handles, [c.name for c in present], loc="outside lower center", ncol=min(4, len(handles)),
                   fontsize=9)
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
