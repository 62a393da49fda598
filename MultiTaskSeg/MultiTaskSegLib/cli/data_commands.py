"""``multitaskseg make-data``: the default model's training datasets, made from what ships here."""

from __future__ import annotations

from ..engine.classes import TASK_NAMES
from .console import EXIT_OK, non_negative_int, progress_bar


def _add_make_data(subparsers) -> None:
    parser = subparsers.add_parser(
        "make-data", help="write the training datasets of the default model",
        description="Write the brain (MNI152/ICBM templates with atlas labels), breast-phantom and "
                    "coronary-phantom datasets as nnU-Net v2 folders under OUT_DIR. Nothing is downloaded.")
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the procedural phantoms (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing dataset folders")
    parser.add_argument("--tasks", nargs="+", default=list(TASK_NAMES), choices=TASK_NAMES,
                        help="write only these tasks' datasets (the phantoms need no atlas packages)")
    parser.set_defaults(run=_run_make_data)


def _run_make_data(args) -> int:
    from ..data import make_data

    bar, progress = progress_bar("make-data")
    with bar:
        datasets = make_data.build_training_data(args.out_dir, seed=args.seed, overwrite=args.overwrite,
                                                 progress=progress, tasks=args.tasks)
    for dataset in datasets:
        print(f"{dataset.root}: task {dataset.task} ({dataset.modality}), "
              f"{len(dataset.training)} training and {len(dataset.test)} test cases")
    return EXIT_OK


SUBCOMMANDS = (_add_make_data,)
