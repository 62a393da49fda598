"""Calibrate the shipped model (issue 13 item 3), the exact steps that made the shipped bundle.

    .venv/bin/python docs/results/calibration/calibrate_shipped_model.py [OUT_DIR]

Any calibration already in the bundle is removed first, so running it again gives the same bundle.
A temperature and offsets on the thresholded classes are fitted on the calibration cases (phantom
seeds 1000-1003 and the MNI152 brain, data/held_out_cases.py), the default thresholds are set at
the pooled precision-recall optimum of those same cases, and the report is measured on the shipped
model's test cases (phantom seeds 8-10, the held-out ICBM 2009a brain). ~12 min on 2 CPU cores.
"""

import json
import sys
import time
from pathlib import Path

from MultiTaskSegLib.data.held_out_cases import calibration_cases, report_test_cases
from MultiTaskSegLib.engine.bundle import load_bundle
from MultiTaskSegLib.training.calibration import calibrate_and_choose_thresholds, remove_calibrations
from MultiTaskSegLib.training.evaluation import evaluate_cases, write_report

SHIPPED = Path(__file__).resolve().parents[3] / "MultiTaskSeg/Resources/Models/multitaskseg-3tasks.safetensors"

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("calibrated")
started = time.time()
bundle = load_bundle(SHIPPED)
remove_calibrations(bundle)
names = {c.index: c.name for c in bundle.classes}
before = {names[c]: t for c, t in bundle.default_thresholds.items()}
cases = calibration_cases(bundle)
calibration, chosen = calibrate_and_choose_thresholds(bundle, cases, cases, "cpu", "bf16")
results = evaluate_cases(bundle, report_test_cases(bundle), "cpu", "bf16", choose_thresholds=False)
bundle.provenance["evaluation"] = results["summary"]
write_report(results, bundle, out / "report")
bundle.save(out / "multitaskseg-3tasks.safetensors", overwrite=True)
(out / "calibration.json").write_text(json.dumps({
    "thresholds_before": before, "thresholds_after": {names[c]: t for c, t in bundle.default_thresholds.items()},
    "operating_points_on_calibration_cases": chosen["operating_points"], "seconds": round(time.time() - started)},
    indent=1))
print(f"wrote {out}: thresholds {before} -> {bundle.default_thresholds}")
