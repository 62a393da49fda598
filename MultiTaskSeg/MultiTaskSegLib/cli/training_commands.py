"""Subcommands that train and evaluate models: ``train``, ``evaluate``, ``experiments``.

``multitaskseg train`` runs unchanged under ``torchrun --nproc_per_node N`` for several GPUs (or
CPU processes); only the first process prints and writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Sequence

from ..engine.errors import InputError, OutputError
from .console import EXIT_OK, non_negative_int, positive_float, positive_int, progress_bar

MAX_LAYERS = 100  # what a bundle may hold (engine/bundle_schema.py)


def layer_count(text: str) -> int:
    value = positive_int(text)
    if value > MAX_LAYERS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_LAYERS} (the paper uses 25), got {text!r}")
    return value


def _dataset_files(datasets: Sequence[str]) -> List[Path]:
    """The folders of nnU-Net datasets whose files a run reads (outputs must not be among them)."""
    folders = []
    for dataset in datasets:
        root = Path(dataset)
        folders += [root] + [root / sub for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")
                             if (root / sub).is_dir()]
    return folders


def _check_outputs(outputs: Sequence[Path], inputs: Sequence[Path]) -> None:
    """The planner's rules (engine/output_paths.py): no output is an input, clashes or lacks a folder."""
    from ..engine.output_paths import check_output_paths

    check_output_paths([(path, None) for path in outputs], inputs)


def _check_work_dir(work_dir: str) -> None:
    path = Path(work_dir)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--work-dir {path} is a file; give a folder (it is created if missing).")


# ---------------------------------------------------------------------------------------------
# train


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model bundle on nnU-Net style datasets (one per task)",
        description="Train the triplanar CNN on one or more nnU-Net v2 dataset folders, balanced over tasks "
                    "and classes (paper 3.2). Re-running the same command resumes from the checkpoint in "
                    "--work-dir. For several GPUs: torchrun --nproc_per_node N -m MultiTaskSegLib.cli train ...")
    parser.add_argument("datasets", nargs="+", metavar="DATASET", help="nnU-Net dataset folders")
    parser.add_argument("-o", "--output", required=True, help="model bundle to write (.safetensors)")
    parser.add_argument("--work-dir", required=True, help="checkpoints, log, learning curve, report, cache")
    parser.add_argument("--tasks", nargs="+", help="train only these tasks (default: those of the datasets)")
    parser.add_argument("--steps", type=positive_int, default=2000, help="optimiser steps (default 2000)")
    parser.add_argument("--blocks-per-task", type=positive_int, default=2, help="dense blocks per task per step (default 2)")
    parser.add_argument("--block", type=positive_int, default=24, help="side of a dense block in voxels (default 24)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--layers", type=layer_count, default=25, help="conv layers (paper: 25; fewer only for quick tests)")
    parser.add_argument("--validate-every", type=positive_int, default=100)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--workers", type=non_negative_int, help="processes drawing and augmenting batches ahead of the "
                        "network (default: none on CPU, up to 8 beside a GPU)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--time-limit", type=positive_float, metavar="MINUTES", help="stop cleanly after this long")
    parser.add_argument("--no-augmentation", action="store_true")
    parser.add_argument("--no-evaluation", action="store_true", help="skip the held-out evaluation at the end")
    parser.add_argument("--calibration", default="prior", choices=("prior", "offsets", "temperature-offsets", "none"),
                        help="at the end, correct the probabilities for the balanced class sampling before the "
                             "thresholds are chosen, so that they sit mid-slider (default prior: from the training "
                             "cases' label counts; the fitted methods fit the training cases, which the network has seen; none: off)")
    parser.add_argument("--init-from", metavar="MODEL",
                        help="fine-tune: start from this bundle's weights (same classes and layers) instead of random")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output bundle")
    parser.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from ..engine.devices import resolve_device
    from ..training.loop import TrainConfig, train

    resolve_device(args.device)
    if Path(args.output).exists() and not args.overwrite:
        raise OutputError(f"{args.output} exists already: use --overwrite to replace it, or choose another output.")
    _check_outputs([Path(args.output)], _dataset_files(args.datasets))
    _check_work_dir(args.work_dir)
    config = TrainConfig(datasets=args.datasets, output=args.output, work_dir=args.work_dir, tasks=args.tasks,
                         steps=args.steps, blocks_per_task=args.blocks_per_task, block=args.block,
                         learning_rate=args.lr, n_layers=args.layers, validate_every=args.validate_every,
                         device=args.device, precision=args.precision, seed=args.seed,
                         time_limit_minutes=args.time_limit, augmentation=not args.no_augmentation,
                         evaluate_at_end=not args.no_evaluation, workers=args.workers,
                         init_from=args.init_from,
                         calibration=None if args.calibration == "none" else args.calibration)
    bar, progress = progress_bar("train")
    with bar:
        bundle = train(config, progress=progress)
    if bundle is not None:
        print(f"wrote {args.output}; log, learning curve and report in {args.work_dir}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# evaluate


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="Dice per class and alien-class rate of a model on labelled datasets",
        description="Evaluate a model bundle on the labelled cases of nnU-Net dataset folders (paper 4): Dice per "
                    "class, alien-class rate, and with --choose-thresholds the precision-recall optimal thresholds.")
    parser.add_argument("datasets", nargs="*", metavar="DATASET", help="nnU-Net dataset folders (none with --battery "
                        "alone)")
    parser.add_argument("--battery", action="store_true",
                        help="also run the evaluation battery: the held-out ICBM 2009a brain skull-stripped, inside a "
                             "synthetic head and as tilted thick-slice re-acquisitions, Dice against two atlases and "
                             "alien-class voxels (written to REPORT-battery.md/.json)")
    parser.add_argument("--battery-coarsen", type=positive_int, default=1, metavar="K",
                        help="block-average the battery's brain by K first: a quick check of a model (default 1: "
                             "the full 1 mm brain, a few minutes on a CPU)")
    parser.add_argument("--model", help="model bundle (default: the shipped model)")
    parser.add_argument("--split", choices=("test", "training"), default="test")
    parser.add_argument("-o", "--report", default="evaluation", help="report path prefix (.md and .json)")
    parser.add_argument("--choose-thresholds", action="store_true",
                        help="use the thresholds of highest pooled Dice instead of the bundle's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from ..engine.bundle import load_bundle
    from ..engine.segmenter import Segmenter

    if not args.datasets and not args.battery:
        raise InputError("Give one or more nnU-Net dataset folders to evaluate on, or --battery for the held-out "
                         "brain battery (or both).")
    prefix = Path(args.report)
    reports = [prefix.with_suffix(".md"), prefix.with_suffix(".json")] if args.datasets else []
    if args.battery:
        reports += list(_battery_paths(prefix))
    existing = [p for p in reports if p.exists()]
    if existing and not args.overwrite:
        raise OutputError(f"{existing[0]} exists already: use --overwrite or another --report.")
    model_files = [Path(args.model)] if args.model else []
    _check_outputs(reports, _dataset_files(args.datasets) + model_files)
    bundle = load_bundle(args.model)
    segmenter = Segmenter(bundle, device=args.device)
    if args.datasets:
        _evaluate_datasets(args, bundle, segmenter, prefix)
    if args.battery:
        _run_battery(args, bundle, segmenter, prefix)
    return EXIT_OK


def _battery_paths(prefix: Path):
    battery = prefix.with_name(prefix.name + "-battery")
    return battery.with_suffix(".md"), battery.with_suffix(".json")


def _run_battery(args, bundle, segmenter, prefix: Path) -> None:
    from ..data.evaluation_battery import downsampled, icbm2009a_held_out, run_battery, write_battery

    brain = icbm2009a_held_out()
    if args.battery_coarsen > 1:
        brain = downsampled(brain, args.battery_coarsen)
    bar, progress = progress_bar("battery")
    with bar:
        results = run_battery(bundle, brain, device=segmenter.device, precision=segmenter.precision,
                              progress=progress)
    _, markdown = write_battery(results, _battery_paths(prefix)[0].with_suffix(""))
    print(markdown.read_text())


def _evaluate_datasets(args, bundle, segmenter, prefix: Path) -> None:
    from ..training.cases import prepare_dataset
    from ..training.datasets import load_dataset
    from ..training.evaluation import evaluate_cases, write_report

    class_names = [c.name for c in bundle.classes]
    cases = []
    for folder in args.datasets:
        dataset = load_dataset(folder)
        prepared = prepare_dataset(dataset, class_names, bundle.normalization, args.split, bundle.target_spacing_mm)
        check_labels_occur(dataset, prepared, class_names, args.split)
        cases += prepared
    bar, progress = progress_bar("evaluate")
    with bar:
        results = evaluate_cases(bundle, cases, segmenter.device, segmenter.precision,
                                 choose_thresholds=args.choose_thresholds, progress=progress)
    write_report(results, bundle, prefix)
    print(prefix.with_suffix(".md").read_text())


def check_labels_occur(dataset, prepared, class_names: Sequence[str], split: str) -> None:
    """Refuse to evaluate a class of dataset.json that no labelmap of the split contains: its Dice
    would compare against an empty reference (0 for any voxel predicted, 1 for none), a number
    that says nothing about the model."""
    if not prepared:
        raise InputError(f"Dataset {dataset.name} has no labelled {split} cases to evaluate; use --split "
                         f"{'training' if split == 'test' else 'test'} or add labelled cases.")
    mapping = dataset.label_mapping(class_names)
    present = set()
    for case in prepared:
        present.update(int(v) for v in _unique(case.labels))
    absent = [(name, value) for name, value in dataset.labels.items()
              if value != 0 and mapping.get(value) is not None and mapping[value] not in present]
    if absent:
        listed = ", ".join(f"{name!r} (value {value})" for name, value in absent)
        raise InputError(f"Dataset {dataset.name}: the label(s) {listed} of {dataset.root / 'dataset.json'} occur in "
                         f"none of its {len(prepared)} {split} labelmaps, so their Dice would be meaningless. "
                         f"Remove them from dataset.json or evaluate on cases that contain them.")


def _unique(labels):
    import numpy as np

    return np.flatnonzero(np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=256))


# ---------------------------------------------------------------------------------------------
# experiments


def _add_experiments(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiments", help="the paper's seven training experiments (3.2, Figs. 1-2) and their report",
        description="Train the same network on every combination of the three tasks with the same number of "
                    "mini-batches per task (paper 3.2, 4), plus a repeat of one experiment, and write learning "
                    "curves, the held-out Dice table, the alien-class rate and the run-to-run variation "
                    "(Markdown, JSON, PNG). Re-running the same command reuses finished experiments.")
    parser.add_argument("datasets", nargs="+", metavar="DATASET",
                        help="one nnU-Net dataset folder per task, with labelled test cases")
    parser.add_argument("--work-dir", required=True, help="one training folder per experiment")
    parser.add_argument("-o", "--report", help="Markdown report (default WORK_DIR/experiments.md); its figure "
                                               "and JSON go to the folder of the same name beside it")
    parser.add_argument("--steps-per-task", type=positive_int, default=1000, help="mini-batches per task (paper: 25000)")
    parser.add_argument("--validate-every", type=positive_int, default=100,
                        help="validation interval in mini-batches per task (paper: 1000)")
    parser.add_argument("--blocks-per-batch", type=positive_int, default=6,
                        help="dense blocks per mini-batch, split evenly over the tasks (a multiple of 6; default 6)")
    parser.add_argument("--block", type=positive_int, default=16, help="side of a dense block in voxels (default 16)")
    parser.add_argument("--layers", type=layer_count, default=25, help="conv layers (paper: 25)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--experiments", type=int, nargs="+", choices=range(1, 8), metavar="N",
                        help="run only these experiments (default: 1 to 7)")
    parser.add_argument("--repeat", type=int, default=1, choices=range(0, 8), metavar="N",
                        help="experiment to train a second time with another seed (0: none; default 1, as the paper)")
    parser.add_argument("--minutes-per-task", type=positive_float, metavar="MINUTES",
                        help="stop each run after this many minutes per task (a guard for a time budget)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--no-augmentation", action="store_true")
    parser.set_defaults(run=_run_experiments)


def _run_experiments(args) -> int:
    from ..training.experiments import conclusions, run_experiments

    from ..engine.devices import resolve_device

    resolve_device(args.device)
    _check_work_dir(args.work_dir)
    report = Path(args.report) if args.report else Path(args.work_dir) / "experiments.md"
    _check_outputs([report, report.with_suffix(".json")], _dataset_files(args.datasets))
    bar, progress = progress_bar("experiments")
    with bar:
        results = run_experiments(
            args.datasets, args.work_dir, steps_per_task=args.steps_per_task, validate_every=args.validate_every,
            blocks_per_batch=args.blocks_per_batch, block=args.block, n_layers=args.layers, learning_rate=args.lr,
            seed=args.seed, device=args.device, precision=args.precision, augmentation=not args.no_augmentation,
            minutes_per_task=args.minutes_per_task, experiments=args.experiments, repeat=args.repeat or None,
            report_path=report, progress=progress)
    print(f"wrote {report} (figure and JSON in {report.with_suffix('')})")
    for line in conclusions(results):
        print(f"- {line}")
    return EXIT_OK


SUBCOMMANDS = (_add_train, _add_evaluate, _add_experiments)
