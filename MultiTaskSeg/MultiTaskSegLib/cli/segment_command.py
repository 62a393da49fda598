"""``multitaskseg segment``: images in, labelmaps or Slicer segmentations out, in batch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Sequence

from ..engine.errors import InputError
from ..engine.file_types import FORMATS
from .console import EXIT_OK, EXIT_SOME_FAILED, PROG, non_negative_int, positive_float, progress_bar


def _add_segment(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment images (files or DICOM folders)",
        description="Segment one or more images. One input: OUTPUT is a file whose suffix chooses the format "
                    "(.nii.gz, .nii, .nrrd, .mha labelmap, or .seg.nrrd Slicer segmentation). Several inputs: "
                    "OUTPUT is a folder and each output is named after its input. Label values are the model's "
                    "class indices ('multitaskseg info' lists them).")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image file (.nii.gz, .nrrd, .mha, ...) or DICOM folder")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output file (one input) or folder")
    parser.add_argument("--model", metavar="PATH", help="model bundle (default: the shipped model or $MULTITASKSEG_MODEL)")
    parser.add_argument("--classes", nargs="+", action="extend", metavar="NAME",
                        help="classes to label (default: all); quote names with spaces")
    parser.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu, cuda or cuda:N")
    parser.add_argument("--threshold", nargs="+", action="extend", default=[], metavar="CLASS=VALUE",
                        help="probability threshold in [0, 1] of a thresholded class, e.g. \"pectoral muscle=0.4\"")
    parser.add_argument("--probabilities", metavar="DIR",
                        help="also write each selected class's probability (float32, 0..1, input grid) to DIR")
    parser.add_argument("--modality", default="auto", choices=("auto", "MR", "CT"),
                        help="intensity normalisation to use (auto: CT if the image has air in Hounsfield units)")
    parser.add_argument("--spacing", type=positive_float, metavar="MM",
                        help="isotropic voxel size the network sees (default: the model's, else the input's median)")
    parser.add_argument("--format", choices=tuple(FORMATS), help="output format when OUTPUT is a folder (default nii.gz)")
    parser.add_argument("--component", type=non_negative_int, metavar="N",
                        help="segment component N (from 0) of a multi-component image or time point N of a 4D image")
    parser.add_argument("--series-uid", metavar="UID",
                        help="the DICOM series to segment when an input folder holds several")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(run=_run_segment)


def _run_segment(args) -> int:
    from ..engine.batch import check_outputs, make_output_folders, plan_jobs, run_jobs
    from ..engine.bundle import load_bundle
    from ..engine.classes import selected_class_indices
    from ..engine.devices import resolve_device
    from ..engine.segmenter import Segmenter

    resolve_device(args.device)  # a device this machine lacks: refused before anything is loaded
    bundle = load_bundle(args.model)
    selected = selected_class_indices(bundle.classes, args.classes)
    thresholds = parse_thresholds(args.threshold, bundle)
    jobs = plan_jobs([Path(p) for p in args.inputs], Path(args.output), args.format,
                     Path(args.probabilities) if args.probabilities else None,
                     [(i, bundle.classes[i].name) for i in selected])
    for job in jobs:
        job.series_uid, job.component = args.series_uid, args.component
    check_outputs(jobs, args.overwrite)
    make_output_folders(jobs)

    segmenter = Segmenter(bundle, device=args.device, target_spacing=args.spacing, modality=args.modality)
    print(f"{PROG}: model {bundle.path} on {segmenter.device_description}", file=sys.stderr)
    bar, progress = progress_bar("segment", total=len(jobs), unit="image")

    def on_done(job, error) -> None:
        bar.write(f"{PROG}: error: {job.input}: {error}" if error else f"{PROG}: wrote {job.output}", file=sys.stderr)

    with bar:
        failures = run_jobs(jobs, segmenter, selected, thresholds, args.overwrite, stop_on_error=len(jobs) == 1,
                            progress=progress, on_done=on_done)
    if failures:
        print(f"{PROG}: {len(failures)} of {len(jobs)} inputs failed:", file=sys.stderr)
        for job, message in failures:
            print(f"  {job.input}: {message}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def parse_thresholds(texts: Sequence[str], bundle) -> Dict[int, float]:
    """``["pectoral muscle=0.4", ...]`` -> {class index: threshold}, validated against the bundle."""
    from ..engine.labelmap_rule import check_threshold

    thresholds: Dict[int, float] = {}
    for text in texts:
        name, equals, value = text.rpartition("=")
        if not equals or not name.strip():
            raise InputError(f"--threshold expects CLASS=VALUE, e.g. \"pectoral muscle=0.4\"; got {text!r}.")
        info = bundle.classes[bundle.class_index(name)]
        if info.decision != "threshold":
            thresholded = ", ".join(repr(c.name) for c in bundle.classes if c.decision == "threshold") or "none"
            raise InputError(f"{info.name!r} is decided by the highest probability, not by a threshold; "
                             f"thresholds apply to: {thresholded}.")
        thresholds[info.index] = check_threshold(value.strip(), f"threshold of {info.name!r}")
    return thresholds


SUBCOMMANDS = (_add_segment,)
