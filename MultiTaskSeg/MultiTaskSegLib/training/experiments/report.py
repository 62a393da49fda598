"""The experiments' report: the Dice table, run-to-run variation, verdicts, learning curves (JSON, Markdown, PNG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ...engine.atomic_files import write_text_atomically
from ...engine.classes import DEFAULT_CLASSES, DEFAULT_TASKS
from ..datasets import load_dataset
from .catalog import EXPERIMENTS, NOISE_FACTOR, PAPER, experiment, task_of_class


def summarize_experiments(records: Sequence[dict], settings: dict, datasets: Dict[str, str]) -> dict:
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


def plot_experiment_curves(records: Sequence[dict], path: Path) -> None:
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


def write_experiment_report(results: dict, markdown_path: Path) -> None:
    """``markdown_path`` plus, in the folder of its stem, ``experiments.json`` and ``learning_curves.png``."""
    markdown_path = Path(markdown_path)
    assets = markdown_path.with_suffix("")
    assets.mkdir(parents=True, exist_ok=True)
    write_text_atomically(assets / "experiments.json", json.dumps(results, indent=2))
    plot_experiment_curves(results["runs"], assets / "learning_curves.png")
    write_text_atomically(markdown_path, render_markdown(results, f"{assets.name}/"))


def render_markdown(results: dict, assets_prefix: str) -> str:
    s, paper = results["settings"], results["paper"]
    originals = [r for r in results["runs"] if not r["repeat"]]
    numbers = [str(r["experiment"]) for r in originals]
    rep = results["repeat"]
    lines = ["# The seven training experiments (paper section 3.2, Figs. 1-2)", "",
             "Generated by `MultiTaskSegLib.training.experiments.run_experiments`; the numbers below come from "
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
                     f"{len(dataset.training)}/{dataset.labelled_test_count} (`{dataset.name}`) |")
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
