"""The paper's seven training experiments (section 3.2, Fig. 1), run and reported (section 4, Fig. 2).

The same network is trained for every combination of the three tasks, with as many output classes
as the combination needs (the tasks' backgrounds merged into class 0), and one experiment is run a
second time with another seed to show run-to-run variation.

"The same number of steps per task". The paper trains "25000 mini-batches per task" with
mini-batches of 210 samples "equally balanced over the tasks of the network", and plots its
learning curves against mini-batches per task. So a network of k tasks takes k times as many
mini-batches of the same size, each holding 1/k of its samples from every task: every task is
seen through the same number of samples whatever the experiment, and the x axes line up. Here a
mini-batch is ``blocks_per_batch`` dense blocks, ``blocks_per_batch / k`` of them per task
(hence a multiple of 6 when one-, two- and three-task experiments are run), and an experiment of
k tasks runs ``k * steps_per_task`` optimiser steps, validated every ``k * validate_every`` steps.

Outputs: per experiment a training folder (bundle, log, checkpoint, held-out report, its
``settings.json`` and, once finished, ``result.json``): running again with the same settings
reuses finished experiments and resumes an interrupted one from its checkpoint. Together: a JSON
file, a Markdown report and the learning-curve figure.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..engine.classes import DEFAULT_CLASSES, DEFAULT_TASKS
from ..engine.errors import InputError, OutputError
from ..engine.progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress
from .datasets import load_dataset

# The paper's training setting, for the report's "reduced versus the paper" table.
PAPER = {"steps_per_task": 25000, "n_layers": 25, "validate_every": 1000, "samples_per_batch": 210,
         "train_test_images": {"brain": "14/20", "breast": "14/20", "coronary": "6/4"}}


@dataclass(frozen=True)
class Experiment:
    number: int
    tasks: Tuple[str, ...]
    color: str  # line colour in the figures, one per experiment as in the paper's Figs. 1-2

    @property
    def label(self) -> str:
        return f"{self.number}: {' + '.join(self.tasks)}"


EXPERIMENTS: Tuple[Experiment, ...] = (
    Experiment(1, ("brain",), "#1f77b4"),
    Experiment(2, ("breast",), "#ff7f0e"),
    Experiment(3, ("coronary",), "#2ca02c"),
    Experiment(4, ("brain", "breast"), "#d62728"),
    Experiment(5, ("brain", "coronary"), "#9467bd"),
    Experiment(6, ("breast", "coronary"), "#8c564b"),
    Experiment(7, ("brain", "breast", "coronary"), "#e377c2"),
)
REPEAT_SEED_OFFSET = 1000  # the repeated run differs from the original only in its seed
# A difference counts as beyond run-to-run variation only above this many times the repeat's difference:
# one repeat difference is itself a single draw of the noise, so a tighter bar would call chance a result.
NOISE_FACTOR = 2.0


def experiment(number: int) -> Experiment:
    for e in EXPERIMENTS:
        if e.number == number:
            return e
    raise InputError(f"There is no experiment {number}; the paper's experiments are numbered 1 to {len(EXPERIMENTS)}.")


def run_name(e: Experiment, repeat: bool) -> str:
    return f"experiment{e.number}" + ("_repeat" if repeat else "")


def class_names_of(tasks: Sequence[str]) -> List[str]:
    """The classes (without background) a network of these tasks has, in the default order."""
    return [c.name for c in DEFAULT_CLASSES if c.task in tasks]


def task_of_class(name: str) -> str:
    return next(c.task for c in DEFAULT_CLASSES if c.name == name)


def _datasets_by_task(datasets: Sequence[str], needed: Sequence[str]) -> Dict[str, str]:
    """Dataset folder of every needed task; each must have labelled test cases (the held-out Dice)."""
    by_task: Dict[str, str] = {}
    for folder in datasets:
        dataset = load_dataset(folder)
        if dataset.task in by_task:
            raise InputError(f"Two datasets for task '{dataset.task}' ({by_task[dataset.task]}, {folder}): "
                             "give one dataset per task.")
        by_task[dataset.task] = str(folder)
        if dataset.task in needed and not _labelled_test_cases(dataset):
            raise InputError(f"{folder} has no labelled test cases: the experiments report held-out Dice, so put "
                             "test images in imagesTs/ and their labels in labelsTs/.")
    missing = [t for t in needed if t not in by_task]
    if missing:
        raise InputError(f"No dataset for task(s) {missing}: give a dataset folder for every task of the experiments "
                         "(or run only experiments without them).")
    return by_task


def _labelled_test_cases(dataset) -> int:
    return sum(c.label_path is not None for c in dataset.test)


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
    from .loop import TrainConfig, train  # torch-heavy: imported when training starts

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
        block=settings["block"], learning_rate=settings["learning_rate"],
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
        "final_dice": {name: summary[task_of_class(name)]["mean_dice"][name] for name in class_names},
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
                    repeat: Optional[int] = 1,
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
                "blocks_per_batch": blocks_per_batch, "block": block, "n_layers": n_layers,
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
    results = summarize(records, settings, by_task)
    write_report(results, Path(report_path) if report_path else out / "experiments.md")
    report(progress, 1.0, "Experiments done")
    return results


# ----------------------------------------------------------------------------- analysis


def summarize(records: Sequence[dict], settings: dict, datasets: Dict[str, str]) -> dict:
    """Table of final Dice, the three-task network's alien-class rate, run-to-run and
    between-experiment variation, and a verdict per class."""
    originals = [r for r in records if not r["repeat"]]
    repeats = [r for r in records if r["repeat"]]
    classes = [c.name for c in DEFAULT_CLASSES[1:] if any(c.name in r["final_dice"] for r in records)]
    table = {name: {str(r["experiment"]): r["final_dice"][name] for r in originals if name in r["final_dice"]}
             for name in classes}
    three_task = next((r for r in originals if len(r["tasks"]) == len(DEFAULT_TASKS)), None)
    repeat_info = None
    if repeats:
        rep = repeats[0]
        original = next((r for r in originals if r["experiment"] == rep["experiment"]), None)
        repeat_info = {"experiment": rep["experiment"], "final_dice": rep["final_dice"],
                       "difference": ({n: round(abs(rep["final_dice"][n] - original["final_dice"][n]), 4)
                                       for n in rep["final_dice"]} if original else {})}
    return {"settings": settings, "paper": PAPER, "datasets": datasets, "runs": list(records),
            "final_dice_table": table,
            "alien_class_rate_three_task": three_task["median_alien_class_rate"] if three_task else None,
            "repeat": repeat_info, "verdicts": _verdicts(table, repeat_info)}


def _verdicts(table: Dict[str, Dict[str, float]], repeat_info: Optional[dict]) -> Dict[str, dict]:
    """Per class: the multi-task networks' Dice minus the task-specific one, against the noise.

    A difference beyond ``NOISE_FACTOR`` times the noise counts as real. The noise is the repeat's
    difference for that class if it was repeated, else the largest difference the repeat showed
    over its classes (an estimate borrowed from another task).
    """
    differences = (repeat_info or {}).get("difference") or {}
    borrowed = max(differences.values()) if differences else None
    verdicts = {}
    for name, row in table.items():
        single = next((e for e in EXPERIMENTS if e.tasks == (task_of_class(name),)), None)
        if single is None or str(single.number) not in row:
            continue
        base = row[str(single.number)]
        deltas = {n: round(d - base, 4) for n, d in row.items() if n != str(single.number)}
        noise = differences.get(name, borrowed)
        bar = None if noise is None else NOISE_FACTOR * noise
        if not deltas or noise is None:
            verdict = "not comparable (no multi-task result or no repeat)"
        elif all(abs(d) <= bar for d in deltas.values()):
            verdict = "multi-task within run-to-run variation of task-specific"
        elif all(d >= -bar for d in deltas.values()):
            verdict = "multi-task at least as good (some better beyond the variation)"
        else:
            verdict = "some multi-task network worse beyond the variation"
        verdicts[name] = {"task_specific": base, "multi_task_minus_task_specific": deltas,
                          "run_to_run": noise, "run_to_run_measured": name in differences, "verdict": verdict}
    return verdicts


# ----------------------------------------------------------------------------- report


def plot_learning_curves(records: Sequence[dict], path: Path) -> None:
    """One panel per class, one line per experiment that has the class (repeat dashed): Fig. 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [c for c in DEFAULT_CLASSES[1:] if any(c.name in r["curve"]["dice"] for r in records)]
    columns = 3
    rows = (len(classes) + 1 + columns - 1) // columns  # one spare panel holds the legend
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    handles = {}
    for ax, info in zip(axes.flat, classes):
        for r in records:
            if info.name not in r["curve"]["dice"]:
                continue
            e = experiment(r["experiment"])
            x = r["curve"]["mini_batches_per_task"]
            y = [np.nan if v is None else v for v in r["curve"]["dice"][info.name]]
            label = f"{e.label}" + (" (repeat)" if r["repeat"] else "")
            line, = ax.plot(x, y, color=e.color, linestyle="--" if r["repeat"] else "-", marker=".", label=label)
            handles[label] = line
        ax.set(title=f"{info.name} ({info.task})", xlabel="mini-batches per task", ylabel="validation Dice",
               ylim=(0, 1))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(classes):]:
        ax.axis("off")
    order = sorted(handles, key=lambda label: (label.endswith("(repeat)"), int(label.split(":")[0])))
    axes.flat[len(classes)].legend([handles[k] for k in order], order, loc="center", title="experiment")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.3f}"


def write_report(results: dict, markdown_path: Path) -> None:
    """``markdown_path`` plus, in the folder of its stem, ``experiments.json`` and ``learning_curves.png``."""
    markdown_path = Path(markdown_path)
    assets = markdown_path.with_suffix("")
    assets.mkdir(parents=True, exist_ok=True)
    (assets / "experiments.json").write_text(json.dumps(results, indent=2))
    plot_learning_curves(results["runs"], assets / "learning_curves.png")
    markdown_path.write_text(render_markdown(results, f"{assets.name}/"))


def render_markdown(results: dict, assets_prefix: str) -> str:
    s, paper = results["settings"], results["paper"]
    originals = [r for r in results["runs"] if not r["repeat"]]
    numbers = [str(r["experiment"]) for r in originals]
    rep = results["repeat"]
    lines = ["# The seven training experiments (paper section 3.2, Figs. 1-2)", "",
             "Generated by `MultiTaskSegLib.experiments.run_experiments`; the numbers below come from "
             f"[`{assets_prefix}experiments.json`]({assets_prefix}experiments.json).", "",
             "## Setting, and what is reduced versus the paper", "",
             "| | paper | here |", "|---|---|---|",
             f"| convolution layers | {paper['n_layers']} | {s['n_layers']} |",
             f"| mini-batches per task | {paper['steps_per_task']} | {s['steps_per_task']} |",
             f"| validation interval (mini-batches per task) | {paper['validate_every']} | {s['validate_every']} |",
             f"| mini-batch | {paper['samples_per_batch']} voxels, split over the tasks | {s['blocks_per_batch']} dense "
             f"blocks of {s['block']}^3 voxels, split over the tasks |"]
    for task, folder in results["datasets"].items():
        dataset = load_dataset(folder)
        lines.append(f"| {task} data (train/test images) | {paper['train_test_images'].get(task, '')} | "
                     f"{len(dataset.training)}/{_labelled_test_cases(dataset)} (`{dataset.name}`) |")
    lines += ["", "A network of k tasks runs k times as many mini-batches of the same size, each holding 1/k of its "
              "blocks from every task, so each task is seen through as many samples as in its task-specific network "
              "(the paper's \"25000 mini-batches per task\"); curves are drawn against mini-batches per task. Learning "
              "curves use validation Dice on fixed held-out blocks (labels by highest probability); the table uses "
              "the whole held-out test images: brain by highest probability, the thresholded classes at the "
              "precision-recall optimal operating point over the task's test images, as in the paper's section 4.",
              "", "## Learning curves", "", f"![Dice per class]({assets_prefix}learning_curves.png)", "",
              "## Final Dice per class on the held-out test images (mean over images)", "",
              "| class | " + " | ".join(f"exp. {n}" for n in numbers) + (f" | exp. {rep['experiment']} repeat" if rep else "")
              + " |", "|---" * (len(numbers) + 1 + bool(rep)) + "|"]
    for name, row in results["final_dice_table"].items():
        cells = [_fmt(row.get(n)) for n in numbers]
        if rep:
            cells.append(_fmt(rep["final_dice"].get(name)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    alien = results["alien_class_rate_three_task"]
    lines += ["", "## Alien-class rate of the three-task network", ""]
    if alien:
        lines += ["Median over a task's test images of the share of voxels labelled with a class of another task "
                  "(paper: below 0.0005% for every task).", "", "| task | median alien-class rate |", "|---|---|"]
        lines += [f"| {t} | {100 * v:.5f}% |" for t, v in alien.items()]
    else:
        lines.append("Experiment 7 was not run.")
    lines += ["", "## Run-to-run variation and conclusion", ""]
    if rep:
        lines.append(f"Experiment {rep['experiment']} was trained twice, differing only in the random seed. Absolute "
                     "difference of the final Dice per class: " +
                     ", ".join(f"{n} {d:.3f}" for n, d in rep["difference"].items()) + ".")
    lines += ["", f"A multi-task network counts as different from the task-specific one only where the Dice differs by more "
              f"than {NOISE_FACTOR:g} times the run-to-run difference.",
              "", "| class | task-specific Dice | multi-task minus task-specific | run-to-run | verdict |",
              "|---|---|---|---|---|"]
    for name, v in results["verdicts"].items():
        deltas = ", ".join(f"exp. {n}: {d:+.3f}" for n, d in v["multi_task_minus_task_specific"].items())
        noise = "" if v["run_to_run"] is None else f"{v['run_to_run']:.3f}" + ("" if v["run_to_run_measured"] else " (borrowed)")
        lines.append(f"| {name} | {v['task_specific']:.3f} | {deltas} | {noise} | {v['verdict']} |")
    lines += ["", "\"borrowed\": the class's experiment was not repeated, so the largest difference the repeat showed "
              "on its own classes stands in. One repeat gives one difference per class: a rough estimate of the "
              "run-to-run variation, not a confidence interval.", ""]
    lines += ["## Runs", "", "| run | tasks | mini-batches per task done | minutes |", "|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {r['experiment']}{' (repeat)' if r['repeat'] else ''} | {', '.join(r['tasks'])} | "
                     f"{r['mini_batches_per_task_done']:g} | {r['seconds'] / 60:.1f} |")
    lines += ["", "## What this shows (generated from the numbers above)", ""] + [f"- {c}" for c in conclusions(results)]
    return "\n".join(lines) + "\n"


def conclusions(results: dict) -> List[str]:
    """Plain sentences: does multi-task match task-specific here, and how far to trust that."""
    verdicts, s = results["verdicts"], results["settings"]
    out = []
    compared = {n: v for n, v in verdicts.items() if v["run_to_run"] is not None and v["multi_task_minus_task_specific"]}
    if not compared:
        return ["No class could be compared: run the task-specific experiments, a multi-task one and a repeat."]
    within = [n for n, v in compared.items() if v["verdict"].startswith("multi-task within")]
    better = [n for n, v in compared.items() if v["verdict"].startswith("multi-task at least")]
    worse = [n for n, v in compared.items() if v["verdict"].startswith("some multi-task network worse")]
    out.append(f"Of {len(compared)} classes, the multi-task networks' final Dice lies within the run-to-run variation "
               f"of the task-specific network for {len(within)}" + (f" ({', '.join(within)})" if within else "") +
               f", beyond it in their favour for {len(better)}" + (f" ({', '.join(better)})" if better else "") +
               f", and some multi-task network is worse beyond it for {len(worse)}" +
               (f" ({', '.join(worse)})" if worse else "") + ".")
    spread = float(np.median([max(abs(d) for d in v["multi_task_minus_task_specific"].values())
                              for v in compared.values()]))
    noise = float(np.median([v["run_to_run"] for v in compared.values()]))
    measured = sum(v["run_to_run_measured"] for v in compared.values())
    out.append(f"Typical (median over classes) largest multi-task minus task-specific difference: {spread:.3f}; typical "
               f"run-to-run difference: {noise:.3f}, measured on {measured} of {len(compared)} classes (one repeat of "
               "one experiment; the others borrow it). With one repeat, differences smaller than about twice the "
               "run-to-run difference cannot be told from chance, so only larger ones count as beyond the variation.")
    weak = [n for n, v in compared.items() if v["task_specific"] < 0.5]
    if weak:
        out.append(f"Task-specific Dice below 0.5 for {', '.join(weak)}: these classes are hardly learnt in this "
                   "configuration, so agreement there says little about multi-task training.")
    short = [r for r in results["runs"] if r["mini_batches_per_task_done"] < s["steps_per_task"]]
    if short:
        out.append("Stopped early by the time limit: " + ", ".join(
            f"run {r['experiment']}{' (repeat)' if r['repeat'] else ''} after {r['mini_batches_per_task_done']:g}"
            for r in short) + " mini-batches per task, so these runs were trained less than the others.")
    if s["steps_per_task"] < PAPER["steps_per_task"] or s["n_layers"] < PAPER["n_layers"]:
        out.append(f"Training was reduced ({s['steps_per_task']} instead of {PAPER['steps_per_task']} mini-batches per "
                   f"task, {s['n_layers']} instead of {PAPER['n_layers']} layers): these are partly trained networks, "
                   "and the comparison says how they learn early on, not where they would end.")
    return out
