"""Segmenting many images: every output planned before anything runs, then one image at a time.

Shared by ``multitaskseg segment`` and the Slicer logic's ``segment_folder``, so both name their
outputs, refuse existing files and name and colour the segments the same way. The plan is checked
as a whole before the network runs (``output_paths``): no output may be an input, leave its
folder or clash with another output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .classes import segmentation_segments
from .errors import Cancelled, InputError, MultiTaskSegError, OutputError
from .file_types import (FORMATS, LABELMAP_SUFFIXES, PROBABILITY_SUFFIX, SEGMENTATION_SUFFIX, case_name,
                         is_image_file, labelmap_suffix)
from .image_reading import read_volume
from .image_writing import check_format_holds, write_labelmap, write_segmentation_nrrd, write_volume
from .output_paths import check_output_paths, file_name_part
from .progress import CancelCheck, ProgressCallback, check_cancel, report, sub_progress


@dataclass
class SegmentJob:
    """One input and every file it will produce."""

    input: Path
    case: str
    output: Path
    probabilities: List[Tuple[int, Path]] = field(default_factory=list)
    series_uid: Optional[str] = None  # which DICOM series of a folder
    component: Optional[int] = None  # which component or time point

    @property
    def outputs(self) -> List[Path]:
        return [path for _, path in self.probabilities] + [self.output]


def image_files_in(folder: Path) -> List[Path]:
    """The image files directly in ``folder``, sorted by name; InputError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Input folder not found: '{folder}'. Check the path.")
    files = sorted(path for path in folder.iterdir() if path.is_file() and is_image_file(path))
    if not files:
        raise InputError(f"No image files found in '{folder}': put NIfTI, NRRD or MHA files there.")
    return files


def plan_jobs(inputs: Sequence[Path], output: Path, fmt: Optional[str] = None,
              probability_dir: Optional[Path] = None, classes: Sequence[Tuple[int, str]] = ()) -> List[SegmentJob]:
    """Decide every output path before anything runs.

    One input and an ``output`` that is not a folder: ``output`` is the file, its suffix the format.
    Several inputs, or an existing folder, or a name ending in "/": ``output`` is a folder and each
    output is named after its input, with the suffix of ``fmt`` (default .nii.gz). With
    ``probability_dir``, each of ``classes`` (index, name) also gets a probability map there, named
    after the case and the class (made safe as a file name). OutputError when the plan would
    destroy an input or clash (see ``output_paths.check_output_paths``).
    """
    inputs, output = [Path(p) for p in inputs], Path(output)
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
            job.probabilities = [(index, Path(probability_dir) / f"{job.case}_{file_name_part(name)}{PROBABILITY_SUFFIX}")
                                 for index, name in classes]
        jobs.append(job)
    check_output_paths([(job.output, None) for job in jobs] +
                       [(path, Path(probability_dir)) for job in jobs for _, path in job.probabilities], inputs)
    return jobs


def check_outputs(jobs: Sequence[SegmentJob], overwrite: bool) -> None:
    """Refuse to start if any output exists (without ``overwrite``): all are listed at once."""
    if overwrite:
        return
    existing = [path for job in jobs for path in job.outputs if os.path.lexists(path)]  # dangling links too
    if existing:
        shown = ", ".join(str(p) for p in existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise OutputError(f"{len(existing)} output(s) exist already: {shown}. Use --overwrite (Python: "
                          "overwrite=True) to replace them, or choose another output.")


def make_output_folders(jobs: Sequence[SegmentJob]) -> None:
    for folder in sorted({path.parent for job in jobs for path in job.outputs}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"Cannot create the output folder {folder}: {error.strerror}. Choose another "
                              f"output.") from None


def segment_one(job: SegmentJob, segmenter, selected: Sequence[int], thresholds: Mapping[int, float],
                overwrite: bool, progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelCheck] = None) -> None:
    """Read, segment and write one input; the labelmap is written last, so its presence means done."""
    volume = read_volume(job.input, series_uid=job.series_uid, component=job.component)
    for path in job.outputs:  # a geometry an output format would change: refused before the network
        check_format_holds(volume, path)
    maps = segmenter.predict(volume, list(selected), progress=progress, cancel=cancel)
    check_cancel(cancel)
    for index, path in job.probabilities:
        write_volume(volume.with_array(maps.probability(index)), path, overwrite=overwrite)
    labels = maps.labelmap(thresholds)
    if job.output.name.lower().endswith(SEGMENTATION_SUFFIX):
        segments = segmentation_segments(maps.classes, maps.selected)
        write_segmentation_nrrd(labels, volume, job.output, segments, overwrite=overwrite)
    else:
        write_labelmap(labels, volume, job.output, overwrite=overwrite)


def run_jobs(jobs: Sequence[SegmentJob], segmenter, selected: Sequence[int], thresholds: Mapping[int, float],
             overwrite: bool, stop_on_error: bool, progress: Optional[ProgressCallback] = None,
             cancel: Optional[CancelCheck] = None,
             on_done: Callable[[SegmentJob, Optional[str]], None] = lambda job, error: None,
             ) -> List[Tuple[SegmentJob, str]]:
    """Segment every job in turn; returns the failures (job, message).

    ``progress`` sees the whole batch as 0..1, its stage prefixed with the case; ``on_done(job,
    error)`` hears of each job as it ends (error None on success). With ``stop_on_error`` the first
    error is raised instead; a cancel always is.
    """
    failures: List[Tuple[SegmentJob, str]] = []
    for number, job in enumerate(jobs):
        check_cancel(cancel)
        case_progress = _prefixed(sub_progress(progress, number / len(jobs), (number + 1) / len(jobs)),
                                  f"{job.case} ({number + 1}/{len(jobs)})")
        try:
            segment_one(job, segmenter, selected, thresholds, overwrite, case_progress, cancel)
        except Exception as error:  # a bad file must not stop the batch
            if stop_on_error or isinstance(error, Cancelled):
                raise
            message = str(error) if isinstance(error, MultiTaskSegError) else f"{type(error).__name__}: {error}"
            message = " ".join(message.split())
            failures.append((job, message))
            on_done(job, message)
            continue
        on_done(job, None)
    report(progress, 1.0, "Done")
    return failures


def _prefixed(progress: Optional[ProgressCallback], prefix: str) -> Optional[ProgressCallback]:
    if progress is None:
        return None
    return lambda fraction, stage: progress(fraction, f"{prefix}: {stage}")
