"""Which calibration (training/calibration.py) suits a trained model: every method fitted on the
calibration set and measured on the report's test set (data/held_out_cases.py), then the chosen one
folded into a copy of the bundle and evaluated through the engine's own path.

Measured per method on the test set: the weighted negative log-likelihood of the sample voxels, the
precision-recall optimal threshold and Dice of each thresholded class (pooled over the task's cases,
on the stored uint8 levels) and the brain's Dice per class by the labelmap rule's argmax step.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..engine.bundle import ModelBundle
from ..engine.devices import default_precision
from ..engine.labelmap_rule import ProbabilityMaps, quantize_probabilities, threshold_to_level
from ..engine.metrics import dice_per_class, optimal_operating_point
from ..engine.progress import ProgressCallback, report
from ..training.calibration import (Calibration, case_logits, fit_calibration, float_logit_model, fold_into_bundle,
                                    sample_logits, weighted_nll)
from ..training.cases import PreparedCase
from ..training.evaluation import evaluate_cases
from .held_out_cases import calibration_cases, report_test_cases

VARIANTS: Tuple[Tuple[str, str], ...] = (("prior", "thresholded"), ("offsets", "thresholded"),
                                          ("temperature-offsets", "thresholded"), ("offsets", "all"),
                                          ("temperature-offsets", "all"))


def _full_probabilities(logits: torch.Tensor, case: PreparedCase, calibration: Optional[Calibration]) -> np.ndarray:
    """uint8 (C, z, y, x) probabilities of a case from its sample voxels' logits (background elsewhere)."""
    z = logits.double()
    if calibration is not None:
        z = z / calibration.temperature
        for c, d in calibration.offsets.items():
            z[:, c] += d
    out = np.zeros((z.shape[1],) + case.mask.shape, np.uint8)
    out[0] = 255
    out[:, case.mask] = quantize_probabilities(torch.softmax(z, dim=1).numpy().T.astype(np.float32))
    return out


def measure(bundle: ModelBundle, cases: Sequence[PreparedCase], logits: Sequence[torch.Tensor],
            calibration: Optional[Calibration]) -> dict:
    """NLL, operating points of the thresholded classes and brain argmax Dice under ``calibration``."""
    maps = [ProbabilityMaps(_full_probabilities(z, case, calibration), bundle.classes) for z, case in zip(logits, cases)]
    tasks = np.concatenate([[case.task] * z.shape[0] for z, case in zip(logits, cases)])
    names, task_of, counts = np.unique(tasks, return_inverse=True, return_counts=True)
    weights = torch.from_numpy(1.0 / (counts[task_of] * len(names)))
    labels = torch.cat([torch.from_numpy(case.labels[case.mask].astype(np.int64)) for case in cases])
    offsets = torch.zeros(len(bundle.classes), dtype=torch.float64)
    for c, d in (calibration.offsets.items() if calibration else []):
        offsets[c] = d
    nll = float(weighted_nll(torch.cat(logits).double(), labels, weights,
                             calibration.temperature if calibration else 1.0, offsets))
    result: Dict[str, object] = {"nll": round(nll, 5), "operating_points": {}, "brain_dice": {}}
    for c in [k for k in bundle.classes if k.decision == "threshold"]:
        pairs = [(m.channel(c.index), case.labels == c.index) for m, case in zip(maps, cases) if case.task == c.task]
        if pairs:
            point = optimal_operating_point([p for p, _ in pairs], [r for _, r in pairs])
            result["operating_points"][c.name] = {**{k: round(float(v), 4) for k, v in point.items()},
                                                  "level": threshold_to_level(point["threshold"])}
    for m, case in zip(maps, cases):
        if case.task == "brain":
            brain = [k.index for k in bundle.classes if k.task == "brain"]
            dice = dice_per_class(m.argmax_labels(), case.labels, brain)
            result["brain_dice"] = {bundle.classes[c].name: round(d, 4) for c, d in dice.items()}
    return result


def run_study(bundle: ModelBundle, out_prefix: Optional[Path] = None, device: str = "cpu",
              precision: Optional[str] = None, chosen: Tuple[str, str] = ("temperature-offsets", "thresholded"),
              progress: Optional[ProgressCallback] = None) -> dict:
    """Fit every variant on the calibration set, measure each on the test set, evaluate the chosen one
    end to end (``evaluate_cases`` on a calibrated copy). Writes ``out_prefix``.json/.md if given."""
    precision = precision or default_precision(torch.device(device))
    report(progress, 0.0, "Calibration set")
    fit_cases = calibration_cases(bundle)
    sample = sample_logits(bundle, fit_cases, device, precision)
    report(progress, 0.2, "Test set logits")
    test_cases = report_test_cases(bundle)
    dev = torch.device(device)
    model = float_logit_model(bundle, dev, precision)
    rng = np.random.default_rng(0)
    test_logits = [case_logits(model, case, int(case.mask.sum()), rng, dev, dev.type == "cpu")[0] for case in test_cases]
    rows: List[dict] = [{"method": "none", "classes": "-", "temperature": 1.0, "offsets": {},
                         **measure(bundle, test_cases, test_logits, None)}]
    fits = {}
    for method, which in VARIANTS:
        report(progress, 0.5, f"Calibration {method} ({which})")
        calibration = fit_calibration(sample, bundle.classes, method, which)
        fits[(method, which)] = calibration
        rows.append({"method": method, "classes": which, "temperature": round(calibration.temperature, 4),
                     "offsets": {bundle.classes[c].name: round(d, 3) for c, d in calibration.offsets.items()},
                     "fit_nll_before": round(calibration.nll_before, 5), "fit_nll_after": round(calibration.nll_after, 5),
                     **measure(bundle, test_cases, test_logits, calibration)})
    report(progress, 0.8, "End-to-end evaluation")
    before = evaluate_cases(bundle, test_cases, device, precision, choose_thresholds=True)
    calibrated = copy.deepcopy(bundle)
    fold_into_bundle(calibrated, fits[chosen])
    after = evaluate_cases(calibrated, test_cases, device, precision, choose_thresholds=True)
    results = {"precision": precision, "calibration_cases": sample.cases, "calibration_voxels": int(sample.labels.shape[0]),
               "test_cases": [c.case_id for c in test_cases], "variants": rows, "chosen": list(chosen),
               "end_to_end": {"before": _summary(before), "after": _summary(after)}}
    if out_prefix is not None:
        write_study(results, Path(out_prefix))
    report(progress, 1.0, "Calibration study done")
    return results


def _summary(results: dict) -> dict:
    return {"operating_points": results["operating_points"], "summary": results["summary"]}


def write_study(results: dict, prefix: Path) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(results, indent=2))
    thresholded = list(results["variants"][0]["operating_points"])
    lines = ["# Calibration study", "",
             f"Fitted on {', '.join(results['calibration_cases'])} ({results['calibration_voxels']} sample voxels); "
             f"measured on {', '.join(results['test_cases'])}.", "",
             "| method | classes | T | offsets | held-out NLL | "
             + " | ".join(f"{n}: threshold (level), Dice" for n in thresholded)
             + " | brain argmax Dice (mean) |", "|---" * (6 + len(thresholded)) + "|"]
    for row in results["variants"]:
        points = " | ".join(f"{p['threshold']:.3f} ({int(p['level'])}/255), {p['dice']:.3f}"
                            for p in (row["operating_points"][n] for n in thresholded))
        brain = np.mean(list(row["brain_dice"].values())) if row["brain_dice"] else float("nan")
        offsets = ", ".join(f"{name} {d:+.2f}" for name, d in row["offsets"].items()) or "-"
        lines.append(f"| {row['method']} | {row['classes']} | {row['temperature']:.3f} | {offsets} | {row['nll']:.4f} | {points} | "
                     f"{brain:.4f} |")
    lines += ["", f"End to end (engine path, chosen: {' / '.join(results['chosen'])}):", "",
              "| | " + " | ".join(f"{n} threshold, Dice" for n in thresholded) + " | brain mean Dice per class |",
              "|---" * (2 + len(thresholded)) + "|"]
    for name in ("before", "after"):
        part = results["end_to_end"][name]
        points = " | ".join(f"{part['operating_points'][n]['threshold']:.3f}, {part['operating_points'][n]['dice']:.3f}"
                            for n in thresholded if n in part["operating_points"])
        brain = part["summary"].get("brain", {}).get("mean_dice", {})
        lines.append(f"| {name} | {points} | {', '.join(f'{k} {v:.3f}' for k, v in brain.items())} |")
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
