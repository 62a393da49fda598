"""Evaluation as in the paper, section 4: Dice per class; for the thresholded (binary) tasks the
precision-recall optimal operating point pooled over all test images of the task; the alien-class
rate (share of a scan's voxels labelled with a class of another task).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..engine.atomic_files import write_text_atomically
from ..engine.bundle import ModelBundle
from ..engine.labelmap_rule import ProbabilityMaps, threshold_to_level
from ..engine.metrics import alien_class_rate, dice_per_class, optimal_operating_point
from ..engine.prepared_model import inference_model
from ..engine.progress import CancelCheck, ProgressCallback, check_cancel, report
from ..engine.slab_loop import dense_probabilities
from ..engine.slab_sizing import DenseOptions
from .cases import PreparedCase


def evaluate_cases(bundle: ModelBundle, cases: Sequence[PreparedCase], device: torch.device | str = "cpu",
                   precision: str = "fp32", choose_thresholds: bool = False,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None) -> dict:
    """Per-case Dice and alien-class rate; with ``choose_thresholds`` the PR-optimal thresholds first.

    Returns {"cases": [...], "thresholds": {class index: t}, "operating_points": {...}, "summary": {...}}.
    """
    device = torch.device(device)
    channels_last = device.type == "cpu" and precision != "fp32"
    model = inference_model(bundle.model, precision, device, channels_last)
    options = DenseOptions(precision=precision, channels_last=channels_last)
    thresholded = [c.index for c in bundle.classes if c.decision == "threshold"]
    maps: List[ProbabilityMaps] = []
    for i, case in enumerate(cases):
        check_cancel(cancel)
        report(progress, i / max(1, len(cases)), f"Evaluating {case.case_id}")
        probabilities = dense_probabilities(model, case.image, case.mask, device, options)
        maps.append(ProbabilityMaps(probabilities, bundle.classes,
                                    None, bundle.default_thresholds))
    thresholds = dict(bundle.default_thresholds)
    operating_points = {}
    if choose_thresholds:
        for c in thresholded:
            task = bundle.classes[c].task
            pairs = [(m.channel(c), case.labels == c) for m, case in zip(maps, cases) if case.task == task]
            if pairs:
                point = optimal_operating_point([p for p, _ in pairs], [r for _, r in pairs])
                thresholds[c] = float(point["threshold"])
                operating_points[bundle.classes[c].name] = point
    rows = []
    for m, case in zip(maps, cases):
        labels = m.labelmap(thresholds)
        task_classes = [c.index for c in bundle.classes if c.task == case.task]
        # a class in neither the reference nor the prediction has no Dice to report: counting it as
        # 1.0 (two empty sets agree) would lift the mean for cases that say nothing about the class
        present = set(np.unique(labels).tolist()) | set(np.unique(case.labels).tolist())
        dice = dice_per_class(labels, case.labels, [c for c in task_classes if c in present])
        rows.append({"case": case.case_id, "task": case.task,
                     "dice": {bundle.classes[c].name: round(float(d), 4) for c, d in dice.items()},
                     "absent": [bundle.classes[c].name for c in task_classes if c not in present],
                     "alien_class_rate": float(alien_class_rate(labels, case.task, bundle.classes))})
    report(progress, 1.0, "Evaluated")
    return {"cases": rows, "thresholds": thresholds,
            "operating_points": operating_points, "summary": summarize(rows)}


def summarize(rows: Sequence[dict]) -> Dict[str, dict]:
    """Mean Dice per class over the cases where the class is in the reference or the prediction
    (None where it is in none), and median alien-class rate per task."""
    summary: Dict[str, dict] = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        names = dict.fromkeys(n for r in task_rows for n in list(r["dice"]) + r.get("absent", []))
        means = {n: [r["dice"][n] for r in task_rows if n in r["dice"]] for n in names}
        summary[task] = {"cases": len(task_rows),
                         "mean_dice": {n: round(float(np.mean(v)), 4) if v else None for n, v in means.items()},
                         "median_alien_class_rate": float(np.median([r["alien_class_rate"] for r in task_rows]))}
    return summary


def write_report(results: dict, bundle: ModelBundle, prefix: Path) -> None:
    """``prefix``.json and ``prefix``.md: per-task mean Dice, operating points, per-case rows."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    serializable = {**results, "thresholds": {bundle.classes[c].name: t for c, t in results["thresholds"].items()}}
    write_text_atomically(prefix.with_suffix(".json"), json.dumps(serializable, indent=2))
    lines = ["# Evaluation on held-out cases", ""]
    for task, s in results["summary"].items():
        lines += [f"## {task} ({s['cases']} cases)", "", "| class | mean Dice |", "|---|---|"]
        lines += [f"| {name} | {'n/a (in no case)' if d is None else f'{d:.3f}'} |" for name, d in s["mean_dice"].items()]
        lines += ["", f"Median alien-class rate: {100 * s['median_alien_class_rate']:.4f}% of the scan's voxels.", ""]
    if results["operating_points"]:
        lines += ["## Precision-recall optimal operating points (pooled over the task's test cases)", "",
                  "| class | threshold | Dice | precision | recall |", "|---|---|---|---|---|"]
        for name, p in results["operating_points"].items():
            # the exact level too: 0.973 typed back in selects one level fewer than 248/255
            level = threshold_to_level(p["threshold"])
            lines.append(f"| {name} | {p['threshold']:.3f} ({level}/255) | {p['dice']:.3f} | {p['precision']:.3f} | "
                         f"{p['recall']:.3f} |")
        lines.append("")
    lines += ["## Per case", "", "| case | task | Dice per class | alien-class rate |", "|---|---|---|---|"]
    for r in results["cases"]:
        dice = ", ".join([f"{n} {d:.3f}" for n, d in r["dice"].items()] + [f"{n} absent" for n in r.get("absent", [])])
        lines.append(f"| {r['case']} | {r['task']} | {dice} | {100 * r['alien_class_rate']:.4f}% |")
    write_text_atomically(prefix.with_suffix(".md"), "\n".join(lines) + "\n")
