"""Running the experiments: one training folder each, finished ones reused, interrupted ones resumed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ...engine.errors import InputError, OutputError
from ...engine.progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress
from ..datasets import load_dataset
from .catalog import EXPERIMENTS, REPEAT_SEED_OFFSET, Experiment, experiment, run_name, task_of_class
from .report import summarize_experiments, write_experiment_report


def _datasets_by_task(datasets: Sequence[str], needed: Sequence[str]) -> Dict[str, str]:
    """Dataset folder of every needed task; each must have labelled test cases (the held-out Dice)."""
    by_task: Dict[str, str] = {}
    for folder in datasets:
        dataset = load_dataset(folder)
        if dataset.task in by_task:
            raise InputError(f"Two datasets for task '{dataset.task}' ({by_task[dataset.task]}, {folder}): "
                             "give one dataset per task.")
        by_task[dataset.task] = str(folder)
        if dataset.task in needed and not dataset.labelled_test_count:
            raise InputError(f"{folder} has no labelled test cases: the experiments report held-out Dice, so put "
                             "test images in imagesTs/ and their labels in labelsTs/.")
    missing = [t for t in needed if t not in by_task]
    if missing:
        raise InputError(f"No dataset for task(s) {missing}: give a dataset folder for every task of the experiments "
                         "(or run only experiments without them).")
    return by_task


def _share_cache(run_dir: Path, shared: Path) -> None:
    """Let every run read the prepared cases of the others (training caches under work_dir/cache)."""
    link = run_dir / "cache"
    if link.exists() or link.is_symlink():
        return
    shared.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(shared.resolve(), link, target_is_directory=True)
    except OSError:  # no symlinks (e.g. Windows without rights): each run prepares its own cases
        pass


def _read_log(path: Path) -> List[dict]:
    """The training log; a resumed run logs again from its checkpoint, so the last entry per step wins."""
    by_step: Dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                by_step[entry["step"]] = entry
    return [by_step[s] for s in sorted(by_step)]


def _curve(log: Sequence[dict], class_names: Sequence[str], k: int) -> dict:
    """Validation Dice per class name against mini-batches per task (the paper's x axis)."""
    rows = [h for h in log if "dice" in h]
    return {"mini_batches_per_task": [h["step"] / k for h in rows],
            "dice": {name: [h["dice"].get(str(i + 1)) for h in rows] for i, name in enumerate(class_names)}}


def _train_one(e: Experiment, repeat: bool, datasets: Dict[str, str], run_dir: Path, settings: dict,
               progress: Optional[ProgressCallback], cancel: Optional[CancelCheck]) -> dict:
    """Train and evaluate one experiment (or reuse its finished result); returns its result record."""
    from ..loop import TrainConfig, train  # torch-heavy: imported when training starts

    k = len(e.tasks)
    seed = settings["seed"] + (REPEAT_SEED_OFFSET if repeat else 0)
    run_settings = {**settings, "tasks": list(e.tasks), "seed": seed}
    result_file = run_dir / "result.json"
    if result_file.exists():
        previous = json.loads(result_file.read_text())
        if previous.get("settings") == run_settings:
            report(progress, 1.0, f"Experiment {e.label}: finished earlier, reused")
            return previous
    # A checkpoint left by other settings must not be resumed (training would continue it silently).
    settings_file = run_dir / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != run_settings:
        raise OutputError(f"{run_dir} holds a run with other settings: use another work folder, or delete {run_dir} "
                          "to train it again.")
    run_dir.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(run_settings, indent=2))
    _share_cache(run_dir, run_dir.parent / "cache")
    config = TrainConfig(
        datasets=[datasets[t] for t in e.tasks], output=str(run_dir / "model.safetensors"), work_dir=str(run_dir),
        tasks=list(e.tasks), steps=k * settings["steps_per_task"], blocks_per_task=settings["blocks_per_batch"] // k,
        block=settings["block"], validation_block=settings["validation_block"], learning_rate=settings["learning_rate"],
        validate_every=k * settings["validate_every"], checkpoint_every=k * settings["validate_every"], seed=seed,
        device=settings["device"], precision=settings["precision"], augmentation=settings["augmentation"],
        evaluate_at_end=True, n_layers=settings["n_layers"],
        time_limit_minutes=k * settings["minutes_per_task"] if settings["minutes_per_task"] else None)
    started = time.time()
    stage = f"Experiment {e.label}{' (repeat)' if repeat else ''}"
    bundle = train(config, progress=lambda f, s: report(progress, f, f"{stage}: {s}"), cancel=cancel)
    class_names = [c.name for c in bundle.classes[1:]]
    evaluation = json.loads((run_dir / "report.json").read_text())
    summary = evaluation["summary"]
    result = {
        "experiment": e.number, "label": e.label, "tasks": list(e.tasks), "repeat": repeat, "seed": seed,
        "settings": run_settings, "classes": [c.name for c in bundle.classes],
        "curve": _curve(_read_log(run_dir / "log.jsonl"), class_names, k),
        "final_dice": {name: summary[task_of_class(name)]["mean_dice"][name] for name in class_names
                       if summary[task_of_class(name)]["mean_dice"].get(name) is not None},
        "median_alien_class_rate": {t: summary[t]["median_alien_class_rate"] for t in e.tasks},
        "alien_class_rate_per_case": {r["case"]: r["alien_class_rate"] for r in evaluation["cases"]},
        "operating_points": evaluation["operating_points"],
        "mini_batches_per_task_done": bundle.provenance["training"]["steps_done"] / k,
        "seconds": round(time.time() - started, 1), "bundle": str(run_dir / "model.safetensors"),
    }
    result_file.write_text(json.dumps(result, indent=2))
    return result


def run_experiments(datasets: Sequence[str], out_dir, steps_per_task: int = 1000, validate_every: int = 100,
                    blocks_per_batch: int = 6, block: int = 16, n_layers: int = 25, learning_rate: float = 1e-3,
                    seed: int = 0, device: str = "auto", precision: str = "auto", augmentation: bool = True,
                    minutes_per_task: Optional[float] = None, experiments: Optional[Sequence[int]] = None,
                    repeat: Optional[int] = 1, validation_block: int = 32,
                    report_path=None, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelCheck] = None) -> dict:
    """Train the experiments (default all seven) plus a repeat of experiment ``repeat``, then report.

    ``steps_per_task`` and ``validate_every`` count mini-batches per task (see the module
    docstring); ``blocks_per_batch`` must divide by every experiment's number of tasks.
    ``minutes_per_task`` caps each run at that many minutes per task (a guard for a time budget:
    a run stopped early says so in the report, and its steps per task then differ). Training
    folders go under ``out_dir``; the report to ``report_path`` (default ``out_dir/experiments.md``)
    with its figure and JSON in the folder of the same name beside it. Returns the results.
    Runs in one process (not under torchrun): each experiment is one ``training.train`` call.
    """
    chosen = [experiment(n) for n in (experiments or [e.number for e in EXPERIMENTS])]
    runs = [(e, False) for e in chosen] + ([(experiment(repeat), True)] if repeat is not None else [])
    if steps_per_task < 1 or validate_every < 1 or block < 1 or n_layers < 1:
        raise InputError("steps_per_task, validate_every, block and n_layers must all be at least 1.")
    for e, _ in runs:
        if blocks_per_batch % len(e.tasks):
            raise InputError(f"blocks_per_batch={blocks_per_batch} does not split evenly over the {len(e.tasks)} "
                             f"tasks of experiment {e.label}: use a multiple of 6 (or of the task counts you run).")
    needed = sorted({t for e, _ in runs for t in e.tasks})
    by_task = _datasets_by_task(datasets, needed)
    settings = {"steps_per_task": steps_per_task, "validate_every": validate_every,
                "blocks_per_batch": blocks_per_batch, "block": block, "validation_block": validation_block,
                "n_layers": n_layers,
                "learning_rate": learning_rate, "seed": seed, "device": device, "precision": precision,
                "augmentation": augmentation, "minutes_per_task": minutes_per_task}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A run of k tasks costs k times the steps: weigh the progress bar accordingly.
    costs = np.cumsum([0] + [len(e.tasks) for e, _ in runs]) / sum(len(e.tasks) for e, _ in runs)
    records = []
    for i, (e, is_repeat) in enumerate(runs):
        check_cancel(cancel)
        records.append(_train_one(e, is_repeat, by_task, out / run_name(e, is_repeat), settings,
                                  sub_progress(progress, costs[i], costs[i + 1]), cancel))
    results = summarize_experiments(records, settings, by_task)
    write_experiment_report(results, Path(report_path) if report_path else out / "experiments.md")
    report(progress, 1.0, "Experiments done")
    return results
