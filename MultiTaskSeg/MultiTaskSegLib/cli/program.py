"""The ``multitaskseg`` command: segment images in batch, show a model bundle, build training data;
the model-side commands (train, evaluate, experiments, demo) are in training_commands.py.

Each subcommand is a pair of small functions, ``_add_<name>(subparsers)`` that declares its
arguments and ``_run_<name>(args) -> int`` that runs it; ``SUBCOMMANDS`` lists the ``_add_``
functions, so adding a command means adding two functions and one entry.

Exit codes: 0 success; 1 some inputs of a batch failed (the others were written); 2 a usage error
or a problem the user can fix (one line ``multitaskseg: error: ...``, no traceback); 130 cancelled
with Ctrl-C (outputs are written atomically, so no half-written file is left).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import __version__
from ..engine.errors import Cancelled, InputError, MultiTaskSegError, OutputError
from . import training_commands  # train, evaluate, experiments, demo

PROG = "multitaskseg"
EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 2, 130

# Labelmap formats by output suffix; a folder output gets the suffix of --format.
LABELMAP_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd", "seg.nrrd": ".seg.nrrd"}
INPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PROBABILITY_SUFFIX = ".nii.gz"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed usage or help already
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    try:
        return args.run(args)
    except Cancelled as error:
        _error(str(error))
        return EXIT_CANCELLED
    except MultiTaskSegError as error:
        _error(str(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\n{PROG}: cancelled; no half-written output was left behind.", file=sys.stderr)
        return EXIT_CANCELLED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="One multi-task triplanar CNN (Moeskops et al. 2017) for brain tissues in T1 MRI, "
                    "the pectoral muscle in breast MRI and the coronary arteries in cardiac CTA.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def _error(message: str) -> None:
    """One readable line on stderr (messages are single sentences; keep them on one line)."""
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# info


def _add_info(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show what a model bundle contains",
                                   description="Show a model bundle's metadata (no weights are loaded).")
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="a .safetensors model bundle (default: the shipped model or $MULTITASKSEG_MODEL)")
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")
    parser.set_defaults(run=_run_info)


def _run_info(args) -> int:
    from ..engine.bundle import MODEL_ENV_VAR, bundle_from_metadata, default_model_path, read_metadata
    from ..engine.network import parameter_count

    path = Path(args.model) if args.model else default_model_path()
    if args.model is None and not path.is_file():
        raise InputError(f"No model given and the default model {path} is not there: give a model file "
                         f"('{PROG} info MODEL'), set ${MODEL_ENV_VAR}, or create the default one with 'make demo'.")
    metadata = read_metadata(path)
    # Building the (untrained) network from the metadata validates it and gives the parameter count.
    parameters = parameter_count(bundle_from_metadata(metadata, None, path).model)
    if args.json:
        print(json.dumps({"path": str(path), "parameter_count": parameters, **metadata}, indent=2))
    else:
        print(describe_metadata(metadata, path, parameters))
    return EXIT_OK


def describe_metadata(metadata: Mapping[str, Any], path: Path, parameters: int) -> str:
    """The bundle metadata as aligned, readable text."""
    arch = metadata["architecture"]
    thresholds = metadata.get("thresholds") or {}
    spacing = metadata.get("target_spacing_mm")
    lines = [
        f"Model:          {path}",
        f"Architecture:   {arch.get('name', 'triplanar-cnn')}: {arch['n_layers']} shared 3x3 convolutions x "
        f"{arch['n_filters']} kernels on three {arch.get('patch_size', 2 * arch['n_layers'] + 1)}-pixel "
        f"planes, head {3 * arch['n_filters']}->{arch['n_hidden']}->{arch['n_hidden']}->{arch['num_classes']}, "
        f"dropout {arch['dropout']}",
        f"Parameters:     {parameters:,}",
        f"Target spacing: {f'{spacing:g} mm isotropic' if spacing else 'the median spacing of each input'}",
        "",
        "Tasks:",
    ]
    for task in metadata["tasks"]:
        lines.append(f"  {task['name']:<10} {task['modality']:<3} {task.get('description', '')}")
        lines.append(f"  {'':<10}     classes: {', '.join(task['classes'])}")
    lines += ["", "Classes:", f"  {'#':>2}  {'name':<32} {'colour':<8} {'task':<9} {'decision':<16} terminology"]
    for c in metadata["classes"]:
        decision = c["decision"] or "-"
        if c["name"] in thresholds:
            decision = f"{decision} {thresholds[c['name']]:g}"
        lines.append(f"  {c['index']:>2}  {c['name']:<32} {_hex_colour(c['color']):<8} {c['task'] or '-':<9} "
                     f"{decision:<16} {_terminology_text(c.get('terminology') or {})}")
    lines += ["", "Intensity normalisation:"]
    for modality, rule in metadata["normalization"].items():
        lines.append(f"  {modality:<3} " + ", ".join(f"{key}={value}" for key, value in rule.items()))
    provenance = metadata.get("provenance") or {}
    if provenance:
        lines += ["", "Provenance:"]
        lines += [f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}"
                  for key, value in provenance.items()]
    return "\n".join(lines)


def _hex_colour(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(float(c) * 255):02x}" for c in rgb)


def _terminology_text(terminology: Mapping[str, Sequence[str]]) -> str:
    """"SCT 68523003 Cerebral White Matter (Right and left)" from the bundle's code triplets."""
    if "type" not in terminology:
        return "-"
    scheme, code, meaning = terminology["type"]
    text = f"{scheme} {code} {meaning}"
    if terminology.get("modifier"):
        text += f" ({terminology['modifier'][2]})"
    return text


# ---------------------------------------------------------------------------------------------
# segment


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
    parser.add_argument("--spacing", type=float, metavar="MM",
                        help="isotropic voxel size the network sees (default: the model's, else the input's median)")
    parser.add_argument("--format", choices=tuple(FORMATS), help="output format when OUTPUT is a folder (default nii.gz)")
    parser.add_argument("--component", type=int, metavar="N",
                        help="segment component N (from 0) of a multi-component image or time point N of a 4D image")
    parser.add_argument("--series-uid", metavar="UID",
                        help="the DICOM series to segment when an input folder holds several")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(run=_run_segment)


@dataclass
class SegmentJob:
    """One input and every file it will produce."""

    input: Path
    case: str
    output: Path
    probabilities: List[Tuple[int, Path]] = field(default_factory=list)
    series_uid: Optional[str] = None  # which DICOM series of a folder (--series-uid)
    component: Optional[int] = None  # which component or time point (--component)

    @property
    def outputs(self) -> List[Path]:
        return [path for _, path in self.probabilities] + [self.output]


def _run_segment(args) -> int:
    from ..engine.bundle import load_bundle
    from ..engine.segmenter import Segmenter

    if args.spacing is not None and not args.spacing > 0:
        raise InputError(f"--spacing must be a positive number of millimetres, got {args.spacing}.")
    bundle = load_bundle(args.model)
    selected = selected_classes(bundle, args.classes)
    thresholds = parse_thresholds(args.threshold, bundle)
    jobs = plan_jobs([Path(p) for p in args.inputs], Path(args.output), args.format,
                     Path(args.probabilities) if args.probabilities else None,
                     [(i, bundle.classes[i].name) for i in selected])
    for job in jobs:
        job.series_uid, job.component = args.series_uid, args.component
    check_outputs(jobs, args.overwrite)
    for folder in {path.parent for job in jobs for path in job.outputs}:
        folder.mkdir(parents=True, exist_ok=True)

    segmenter = Segmenter(bundle, device=args.device, target_spacing=args.spacing, modality=args.modality)
    print(f"{PROG}: model {bundle.path} on {segmenter.device_description}", file=sys.stderr)
    failures = run_jobs(jobs, segmenter, selected, thresholds, args.overwrite, stop_on_error=len(jobs) == 1)
    if failures:
        print(f"{PROG}: {len(failures)} of {len(jobs)} inputs failed:", file=sys.stderr)
        for job, message in failures:
            print(f"  {job.input}: {message}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def selected_classes(bundle, names: Optional[Sequence[str]]) -> List[int]:
    """Indices of the classes to label: all but background by default; unknown names are errors."""
    if not names:
        return [c.index for c in bundle.classes if c.index != 0]
    indices = [bundle.class_index(name) for name in names]
    if 0 in indices:
        raise InputError("Background cannot be selected with --classes; name the classes to label "
                         f"(e.g. --classes \"{bundle.classes[1].name}\").")
    return sorted(set(indices))


def parse_thresholds(texts: Sequence[str], bundle) -> Dict[int, float]:
    """``["pectoral muscle=0.4", ...]`` -> {class index: threshold}, validated against the bundle."""
    from ..engine.labelmap_rule import check_threshold

    thresholds: Dict[int, float] = {}
    for text in texts:
        name, equals, value = text.rpartition("=")
        if not equals or not name.strip():
            raise InputError(f"--threshold expects CLASS=VALUE, e.g. \"pectoral muscle=0.4\"; got {text!r}.")
        info = bundle.classes[bundle.class_index(name.strip())]
        if info.decision != "threshold":
            thresholded = ", ".join(repr(c.name) for c in bundle.classes if c.decision == "threshold") or "none"
            raise InputError(f"{info.name!r} is decided by the highest probability, not by a threshold; "
                             f"thresholds apply to: {thresholded}.")
        thresholds[info.index] = check_threshold(value.strip(), f"threshold of {info.name!r}")
    return thresholds


def case_name(path: Path) -> str:
    """The case id an input's outputs are named after: the file name without its image suffix,
    or the folder name of a DICOM series."""
    name = path.resolve().name if path.is_dir() else path.name
    for suffix in INPUT_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def labelmap_suffix(path: Path) -> Optional[str]:
    name = path.name.lower()
    return next((s for s in LABELMAP_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def plan_jobs(inputs: Sequence[Path], output: Path, fmt: Optional[str], probability_dir: Optional[Path],
              classes: Sequence[Tuple[int, str]]) -> List[SegmentJob]:
    """Decide every output path before anything runs (see the ``segment`` help for the rules)."""
    to_folder = len(inputs) > 1 or output.is_dir() or str(output).endswith(("/", "\\"))
    if to_folder:
        if output.exists() and not output.is_dir():
            raise OutputError(f"With several inputs OUTPUT must be a folder, but {output} is a file; "
                              "give a folder name.")
        outputs = [output / (case_name(p) + FORMATS[fmt or "nii.gz"]) for p in inputs]
    else:
        suffix = labelmap_suffix(output)
        if suffix is None:
            raise OutputError(f"Cannot tell the output format of {output}: end it with one of "
                              f"{', '.join(LABELMAP_SUFFIXES)}, or with / for a folder.")
        if fmt is not None and FORMATS[fmt] != suffix:
            raise OutputError(f"--format {fmt} contradicts the output file name {output.name}; "
                              "drop --format or change the suffix.")
        outputs = [output]
    seen: Dict[Path, Path] = {}
    for source, target in zip(inputs, outputs):
        if target in seen:
            raise OutputError(f"{seen[target]} and {source} would both be written to {target}; "
                              "rename one of them or segment them in separate calls.")
        seen[target] = source
    jobs = []
    for source, target in zip(inputs, outputs):
        job = SegmentJob(source, case_name(source), target)
        if probability_dir is not None:
            job.probabilities = [(index, probability_dir / f"{job.case}_{name.replace(' ', '_')}{PROBABILITY_SUFFIX}")
                                 for index, name in classes]
        jobs.append(job)
    return jobs


def check_outputs(jobs: Sequence[SegmentJob], overwrite: bool) -> None:
    """Refuse to start if any output exists (without ``overwrite``): all are listed at once."""
    if overwrite:
        return
    existing = [path for job in jobs for path in job.outputs if path.exists()]
    if existing:
        shown = ", ".join(str(p) for p in existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise OutputError(f"{len(existing)} output(s) exist already: {shown}. Use --overwrite to replace them, "
                          "or choose another output.")


def run_jobs(jobs: Sequence[SegmentJob], segmenter, selected: Sequence[int], thresholds: Mapping[int, float],
             overwrite: bool, stop_on_error: bool) -> List[Tuple[SegmentJob, str]]:
    """Segment every job with one progress bar; returns the failures (or raises, with ``stop_on_error``)."""
    from tqdm import tqdm

    failures: List[Tuple[SegmentJob, str]] = []
    with tqdm(total=len(jobs), file=sys.stderr, unit="image", dynamic_ncols=True,
              bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]") as bar:
        for number, job in enumerate(jobs):
            prefix = f"{job.case} ({number + 1}/{len(jobs)})"
            try:
                segment_one(job, segmenter, selected, thresholds, overwrite, _bar_progress(bar, number, prefix))
                bar.write(f"{PROG}: wrote {job.output}", file=sys.stderr)
            except Exception as error:  # a bad file must not stop the batch
                if stop_on_error or isinstance(error, Cancelled):
                    raise
                message = str(error) if isinstance(error, MultiTaskSegError) else f"{type(error).__name__}: {error}"
                bar.write(f"{PROG}: error: {job.input}: {' '.join(message.split())}", file=sys.stderr)
                failures.append((job, message))
            bar.n = number + 1
            bar.refresh()
    return failures


def _bar_progress(bar, number: int, prefix: str) -> Callable[[float, str], None]:
    def progress(fraction: float, stage: str) -> None:
        bar.n = number + fraction
        bar.set_description_str(f"{prefix}: {stage}", refresh=False)
        bar.refresh()
    return progress


def segment_one(job: SegmentJob, segmenter, selected: Sequence[int], thresholds: Mapping[int, float],
                overwrite: bool, progress: Optional[Callable[[float, str], None]] = None) -> None:
    """Read, segment and write one input; the labelmap is written last, so its presence means done."""
    from ..engine.classes import segmentation_segments
    from ..engine.image_io import read_volume, write_labelmap, write_segmentation_nrrd, write_volume

    volume = read_volume(job.input, series_uid=job.series_uid, component=job.component)
    maps = segmenter.predict(volume, list(selected), progress=progress)
    for index, path in job.probabilities:
        write_volume(volume.with_array(maps.probability(index)), path, overwrite=overwrite)
    labels = maps.labelmap(thresholds)
    if job.output.name.lower().endswith(".seg.nrrd"):
        segments = segmentation_segments(maps.classes, maps.selected)
        write_segmentation_nrrd(labels, volume, job.output, segments, overwrite=overwrite)
    else:
        write_labelmap(labels, volume, job.output, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# make-data


def _add_make_data(subparsers) -> None:
    parser = subparsers.add_parser(
        "make-data", help="write the training datasets of the default model",
        description="Write the brain (MNI152/ICBM templates with atlas labels), breast-phantom and "
                    "coronary-phantom datasets as nnU-Net v2 folders under OUT_DIR. Nothing is downloaded.")
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--seed", type=int, default=0, help="seed of the procedural phantoms (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing dataset folders")
    parser.add_argument("--tasks", nargs="+", default=["brain", "breast", "coronary"],
                        choices=("brain", "breast", "coronary"),
                        help="write only these tasks' datasets (the phantoms need no atlas packages)")
    parser.set_defaults(run=_run_make_data)


def _run_make_data(args) -> int:
    from ..data import make_data

    bar, progress = training_commands.progress_bar("make-data")
    with bar:
        datasets = make_data.build_training_data(args.out_dir, seed=args.seed, overwrite=args.overwrite,
                                                 progress=progress, tasks=args.tasks)
    for dataset in datasets:
        print(f"{dataset.root}: task {dataset.task} ({dataset.modality}), "
              f"{len(dataset.training)} training and {len(dataset.test)} test cases")
    return EXIT_OK


SUBCOMMANDS: Tuple[Callable, ...] = (_add_info, _add_segment, _add_make_data) + training_commands.SUBCOMMANDS

