"""The evaluation battery: the held-out ICBM 2009a brain as users' scanners deliver it.

Variants of the one held-out brain: (a) skull-stripped, as the model was trained; (b) inside a head
(``HEAD_SYNTHESIS``; the pydeface head, if it is held out, as an extra variant); (c) the head as
clinical re-acquisitions: tilted 15 and 30 degrees, thick slices (1x1x3 mm, 3x1x1 mm), with a bias
field and noise. Each variant runs through the real ``Segmenter`` (canonical grid, normalisation,
dense pass, back to the variant's grid, labelmap rule), so geometry is tested end to end.

Measured per variant, on its own grid: Dice per brain class against each label map (the
Desikan-Killiany and the Neuromorphometrics atlas, carried along with the image), the two maps'
own agreement (the ceiling of any Dice against either), the alien-class voxels (classes of other
tasks, e.g. pectoral muscle on a head: all of them, those inside the head, their volume, and their
share of the head's voxels; a scan's noisy air is classified too), and the white- and grey-
matter median of the network input under each MR normalisation rule.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..engine.atomic_files import write_text_atomically
from ..engine.bundle import ModelBundle
from ..engine.errors import InputError
from ..engine.geometry import Volume, to_canonical
from ..engine.metrics import dice_per_class
from ..engine.normalization import PERCENTILE_RULE, TISSUE_MODE_RULE, mr_scale
from ..engine.progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress
from ..engine.segmenter import Segmenter
from ..training.head_synthesis import add_synthetic_head
from . import brain_templates
from .held_out_cases import brain_labels_to_bundle
from .reacquisition import Acquisition, reacquire


def synthetic_head(brain: Volume, seed: int) -> Tuple[Volume, np.ndarray]:
    """The training data's head synthesis around a skull-stripped brain: (head image on a grid grown
    to hold it, head mask), the brain's intensities kept exactly."""
    head, _, generation = add_synthetic_head(brain, brain_templates.generation_labels_on(brain), seed)
    return head, ndimage.binary_fill_holes(generation > 0)


# The head of variant (b) and the re-acquisitions: (brain, seed) -> (head image, head mask).
HEAD_SYNTHESIS: Callable[[Volume, int], Tuple[Volume, np.ndarray]] = synthetic_head
HEAD_NAME = "synthetic head (training/head_synthesis.py)"

# name -> (with a head?, acquisition); spacing factors multiply the source's spacing (1 mm: mm)
VARIANTS: Dict[str, Tuple[bool, Acquisition]] = {
    "skull-stripped": (False, Acquisition()),
    "with head": (True, Acquisition()),
    "head, tilted 15 deg, 1x1x3 mm": (True, Acquisition(15.0, (1, 1, 3), bias=0.2, noise=0.03)),
    "head, tilted 15 deg, 3x1x1 mm": (True, Acquisition(15.0, (3, 1, 1), bias=0.2, noise=0.03)),
    "head, tilted 30 deg, 1x1x3 mm": (True, Acquisition(30.0, (1, 1, 3), bias=0.2, noise=0.03)),
    "head, tilted 30 deg, 3x1x1 mm": (True, Acquisition(30.0, (3, 1, 1), bias=0.2, noise=0.03)),
}
HEAD_MASK = "head"  # carried with the label maps: the voxels the alien-class share is relative to


@dataclass
class HeldOutBrain:
    """A skull-stripped brain with its label maps (values 0..6 of ``brain_templates.BRAIN_CLASSES``)."""

    image: Volume
    label_maps: Dict[str, np.ndarray]


def label_maps_on(image: Volume) -> Dict[str, np.ndarray]:
    """Both atlases on ``image``'s grid (the Neuromorphometrics one where data/atlas_labels.py has it)."""
    maps = {"Desikan-Killiany": brain_templates.atlas_labels_on(image)}
    try:
        from .atlas_labels import atlas_on
    except ImportError:  # the second map arrives with the training-data work
        return maps
    maps["Neuromorphometrics"] = atlas_on(image, "neuromorphometrics", "classes")
    return maps


def icbm2009a_held_out() -> HeldOutBrain:
    image, _ = brain_templates.icbm2009a_brain_case()
    return HeldOutBrain(image, label_maps_on(image))


def icbm2009a_with_head_case(seed: int = 0) -> Tuple[Volume, np.ndarray]:
    """The held-out brain inside the battery's head, with its Desikan-Killiany labels (0..6) on the
    head's grid: a whole-head T1 as scanners deliver it, for the demo."""
    image, labels = brain_templates.icbm2009a_brain_case()
    head, _ = HEAD_SYNTHESIS(image, seed)
    return head, labels_onto(labels, image, head)


def downsampled(brain: HeldOutBrain, factor: int) -> HeldOutBrain:
    """A coarser copy (every ``factor``-th voxel after block averaging): the battery on a tiny case."""
    f = int(factor)
    shape = [n // f * f for n in brain.image.array.shape]
    a = brain.image.array[:shape[0], :shape[1], :shape[2]]
    coarse = a.reshape(shape[0] // f, f, shape[1] // f, f, shape[2] // f, f).mean(axis=(1, 3, 5))
    first = brain.image.index_to_physical(np.full((1, 3), (f - 1) / 2.0))[0]
    image = Volume(coarse.astype(np.float32), tuple(s * f for s in brain.image.spacing), tuple(first),
                   brain.image.direction)
    maps = {name: m[f // 2:shape[0]:f, f // 2:shape[1]:f, f // 2:shape[2]:f] for name, m in brain.label_maps.items()}
    return HeldOutBrain(image, maps)


def labels_onto(labels: np.ndarray, source: Volume, target: Volume) -> np.ndarray:
    """``labels`` on ``source``'s grid carried onto ``target``'s (nearest neighbour, 0 outside)."""
    moved = sitk.Resample(source.with_array(np.asarray(labels, np.uint8)).to_sitk(), target.to_sitk(),
                          sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(moved)


def make_variant(brain: HeldOutBrain, name: str, seed: int = 0) -> Tuple[Volume, Dict[str, np.ndarray]]:
    """The image of variant ``name`` with the label maps and the head mask on its grid."""
    with_head, acquisition = VARIANTS[name]
    if with_head:
        image, head = HEAD_SYNTHESIS(brain.image, seed)
        maps = {k: labels_onto(m, brain.image, image) for k, m in brain.label_maps.items()}
        maps[HEAD_MASK] = head.astype(np.uint8)
    else:
        image = brain.image
        maps = dict(brain.label_maps)
        maps[HEAD_MASK] = (image.array > 0).astype(np.uint8)
    if acquisition != Acquisition():
        image, maps = reacquire(image, maps, acquisition, seed)
    return image, maps


def normalised_tissue_medians(image: Volume, labels: np.ndarray) -> Dict[str, Dict[str, float]]:
    """White- and grey-matter medians of the network input under each MR rule (on the variant's grid)."""
    canonical, _ = to_canonical(image)
    out = {}
    for rule in (TISSUE_MODE_RULE, PERCENTILE_RULE):
        scale = mr_scale(canonical.array, rule)
        out[rule["method"]] = {tissue: round(float(np.median(image.array[labels == index])) / scale, 4)
                               for tissue, index in (("white matter", 1), ("grey matter", 2))}
    return out


def evaluate_variant(segmenter: Segmenter, image: Volume, maps: Mapping[str, np.ndarray],
                     progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None) -> dict:
    """Segment one variant and measure it (see module docstring)."""
    bundle = segmenter.bundle
    brain = [c.index for c in bundle.classes if c.task == "brain"]
    alien = [c.index for c in bundle.classes if c.task not in (None, "brain")]
    started = time.time()
    labels = segmenter.predict(image, progress=progress, cancel=cancel).labelmap()
    seconds = time.time() - started
    references = {name: brain_labels_to_bundle(m, bundle) for name, m in maps.items() if name != HEAD_MASK}
    dice = {name: {bundle.classes[c].name: round(d, 4) for c, d in dice_per_class(labels, ref, brain).items()}
            for name, ref in references.items()}
    names = list(references)
    agreement = ({bundle.classes[c].name: round(d, 4)
                  for c, d in dice_per_class(references[names[0]], references[names[1]], brain).items()}
                 if len(names) > 1 else {})
    counts = np.bincount(labels.ravel(), minlength=len(bundle.classes))
    head = maps[HEAD_MASK] > 0
    head_voxels = int(np.count_nonzero(head))
    alien_voxels = int(counts[alien].sum())
    in_head = int(np.count_nonzero(np.isin(labels[head], alien)))
    return {"shape": list(image.array.shape), "spacing_mm": [round(s, 3) for s in image.spacing],
            "seconds": round(seconds, 1), "dice": dice,
            "mean_dice": {name: round(float(np.mean(list(d.values()))), 4) for name, d in dice.items()},
            "maps_agreement": agreement,
            "alien": {"voxels": alien_voxels, "voxels_in_head": in_head, "head_voxels": head_voxels,
                      "share_of_head": alien_voxels / max(1, head_voxels),
                      "millilitres": round(alien_voxels * float(np.prod(image.spacing)) / 1000.0, 3),
                      "per_class": {bundle.classes[c].name: int(counts[c]) for c in alien}},
            "normalised_tissue": normalised_tissue_medians(image, maps[names[0]])}


def run_battery(bundle: ModelBundle, brain: Optional[HeldOutBrain] = None, variants: Sequence[str] = tuple(VARIANTS),
                device: str = "auto", precision: str = "auto", seed: int = 0, include_pydeface: bool = False,
                progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None) -> dict:
    """Every variant of ``brain`` (default: the held-out ICBM 2009a) through ``bundle``'s Segmenter.

    ``include_pydeface`` adds the pydeface whole head with its registered labels (only when that head
    is held out of training). Returns a dict for ``write_battery``.
    """
    if "brain" not in {task.name for task in bundle.tasks}:
        raise InputError(f"The battery measures the brain task, which the model {bundle.path or ''} does not have "
                         f"(tasks: {', '.join(t.name for t in bundle.tasks)}). Evaluate it on its own datasets instead.")
    brain = brain or icbm2009a_held_out()
    segmenter = Segmenter(bundle, device=device, precision=precision)
    rows: Dict[str, dict] = {}
    cases: List[Tuple[str, Callable[[], Tuple[Volume, Dict[str, np.ndarray]]]]] = [
        (name, lambda name=name: make_variant(brain, name, seed)) for name in variants]
    if include_pydeface:
        cases.append(("pydeface head (registered labels)", _pydeface_variant))
    for i, (name, build) in enumerate(cases):
        check_cancel(cancel)
        report(progress, i / len(cases), f"Battery: {name}")
        image, maps = build()
        rows[name] = {"description": _describe(name), **evaluate_variant(
            segmenter, image, maps, sub_progress(progress, i / len(cases), (i + 1) / len(cases)), cancel)}
    report(progress, 1.0, "Battery done")
    return {"model": str(bundle.path.name) if bundle.path else "in memory",
            "normalization": bundle.normalization.get("MR"), "device": str(segmenter.device),
            "precision": segmenter.precision, "head": HEAD_NAME, "seed": seed, "variants": rows,
            "relative_to_skull_stripped": _relative(rows)}


def _pydeface_variant() -> Tuple[Volume, Dict[str, np.ndarray]]:
    from .whole_head import head_mask, whole_head_case

    image, labels, _, _ = whole_head_case()
    return image, {"Desikan-Killiany (registered)": labels, HEAD_MASK: head_mask(image.array).astype(np.uint8)}


def _describe(name: str) -> str:
    if name not in VARIANTS:
        return name
    with_head, a = VARIANTS[name]
    parts = [HEAD_NAME if with_head else "no head"]
    if a.tilt_degrees:
        parts.append(f"tilted {a.tilt_degrees:g} deg about left-right")
    if a.spacing_factors != (1, 1, 1):
        parts.append("voxels " + "x".join(str(k) for k in a.spacing_factors) + " x source spacing (x, y, z)")
    if a.bias or a.noise:
        parts.append(f"bias field exp(+-{a.bias:g}), Rician noise {100 * a.noise:g}% of white matter")
    return "; ".join(parts)


def _relative(rows: Mapping[str, dict]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Each variant's Dice as a fraction of the skull-stripped Dice, per map and class."""
    base = rows.get("skull-stripped")
    if base is None:
        return {}
    out = {}
    for name, row in rows.items():
        out[name] = {m: {c: round(d / base["dice"][m][c], 4) if base["dice"][m].get(c) else None
                         for c, d in dice.items()} for m, dice in row["dice"].items() if m in base["dice"]}
    return out


def write_battery(results: dict, prefix: Path) -> Tuple[Path, Path]:
    """``prefix``.json and ``prefix``.md; returns both paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = prefix.with_suffix(".json"), prefix.with_suffix(".md")
    write_text_atomically(json_path, json.dumps(results, indent=2))
    write_text_atomically(md_path, battery_markdown(results))
    return json_path, md_path


def battery_markdown(results: dict) -> str:
    rows = results["variants"]
    first = next(iter(rows.values()))
    classes = list(next(iter(first["dice"].values())))
    lines = ["# Evaluation battery: the held-out ICBM 2009a brain as scanners deliver it", "",
             f"Model {results['model']}, MR normalisation {json.dumps(results['normalization'])}, "
             f"{results['device']} {results['precision']}, head: {results['head']}, seed {results['seed']}.", ""]
    for label_map in dict.fromkeys(m for row in rows.values() for m in row["dice"]):
        lines += [f"## Dice against {label_map}", "",
                  "| variant | " + " | ".join(classes) + " | mean | alien voxels (in the head) | alien ml | "
                  "alien share of head |", "|---" * (len(classes) + 5) + "|"]
        for name, row in rows.items():
            if label_map not in row["dice"]:
                continue
            dice, alien = row["dice"][label_map], row["alien"]
            lines.append(f"| {name} | " + " | ".join(f"{dice[c]:.3f}" for c in classes) +
                         f" | {row['mean_dice'][label_map]:.3f} | {alien['voxels']} ({alien['voxels_in_head']}) | "
                         f"{alien['millilitres']:.2f} | {100 * alien['share_of_head']:.4f}% |")
        lines.append("")
    agreement = next((row["maps_agreement"] for row in rows.values() if row["maps_agreement"]), None)
    if agreement:
        lines += ["## The two label maps' own agreement (Dice), per variant grid", "",
                  "| variant | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{row['maps_agreement'][c]:.3f}" for c in classes) + " |"
                  for name, row in rows.items() if row["maps_agreement"]]
        lines.append("")
    lines += ["## Network input: white / grey matter medians under each MR rule", "",
              "| variant | tissue-mode WM | tissue-mode GM | percentile WM | percentile GM | voxels (z, y, x) | "
              "spacing (x, y, z) mm | seconds |", "|---" * 8 + "|"]
    for name, row in rows.items():
        t, p = row["normalised_tissue"]["tissue-mode"], row["normalised_tissue"]["percentile"]
        lines.append(f"| {name} | {t['white matter']:.3f} | {t['grey matter']:.3f} | {p['white matter']:.3f} | "
                     f"{p['grey matter']:.3f} | {row['shape']} | {row['spacing_mm']} | {row['seconds']} |")
    lines += ["", "## Variants", ""] + [f"- **{name}**: {row['description']}" for name, row in rows.items()]
    return "\n".join(lines) + "\n"
