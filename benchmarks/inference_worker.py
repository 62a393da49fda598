"""One end-to-end segmentation in a fresh process (so its peak resident memory is its own); prints
one JSON line. Run by bench_inference.py and bench_gpu.py, never by hand.

Two modes, both from the image file to the labelmap:

* ``segmenter``: ``read_volume`` then ``Segmenter.predict`` and ``labelmap``, untouched: what the
  Slicer logic and the CLI run, so its time is the figure users get;
* ``stages``: the same steps through the engine's public functions, called one by one as
  ``Segmenter.predict`` calls them (canonical grid, normalisation, dense pass, back to the input
  grid, labelmap rule), each timed, with the conv stack of a model prepared here timed per call
  and its FLOPs counted. Both modes' labelmaps are hashed: the caller checks they agree, so a
  change in ``Segmenter.predict`` that this mirror misses shows up.

    python benchmarks/inference_worker.py --mode stages --input brain.nii.gz --model m.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ConvStackTimer, peak_rss_bytes, synchronize  # noqa: E402

from MultiTaskSegLib.engine.bundle import load_bundle  # noqa: E402
from MultiTaskSegLib.engine.geometry import from_canonical, to_canonical, validate_volume  # noqa: E402
from MultiTaskSegLib.engine.image_reading import read_volume  # noqa: E402
from MultiTaskSegLib.engine.image_writing import write_labelmap  # noqa: E402
from MultiTaskSegLib.engine.labelmap_rule import ProbabilityMaps, background_outside  # noqa: E402
from MultiTaskSegLib.engine.normalization import normalize, resolve_modality  # noqa: E402
from MultiTaskSegLib.engine.prepared_model import inference_model  # noqa: E402
from MultiTaskSegLib.engine.segmenter import Segmenter, dilated_by_one_voxel  # noqa: E402
from MultiTaskSegLib.engine.slab_loop import dense_probabilities  # noqa: E402


def agreement(labels: np.ndarray, other: np.ndarray) -> dict:
    """How far two labelmaps of the same volume agree (reduced precision flips near-ties)."""
    differing = int(np.count_nonzero(labels != other)) if labels.shape == other.shape else int(labels.size)
    return {"differing_voxels": differing, "equal_fraction": 1 - differing / max(1, labels.size)}


def labels_summary(labels: np.ndarray) -> dict:
    return {"voxels": int(labels.size), "label_counts": np.bincount(labels.ravel()).tolist(),
            "labels_sha1": hashlib.sha1(np.ascontiguousarray(labels).tobytes()).hexdigest()}


def segment(segmenter: Segmenter, path: Path) -> Tuple[dict, np.ndarray]:
    """``Segmenter.predict`` from the file to the labelmap, untouched (what users run): (figures, labels)."""
    synchronize(segmenter.device)
    start = time.perf_counter()
    labels = segmenter.predict(read_volume(path)).labelmap()
    synchronize(segmenter.device)
    return {"mode": "segmenter", "precision": segmenter.precision, "seconds_end_to_end": time.perf_counter() - start,
            **labels_summary(labels)}, labels


def prepared_and_timed(segmenter: Segmenter):
    """A model prepared here as ``Segmenter`` prepares its own, with its conv stack timed."""
    model = inference_model(segmenter.bundle.model, segmenter.precision, segmenter.device, channels_last=True)
    return model, ConvStackTimer(model, segmenter.device)


def stages(segmenter: Segmenter, model, conv: ConvStackTimer, path: Path) -> Tuple[dict, np.ndarray]:
    """``Segmenter.predict`` step by step (see its source) on ``model``, each step timed: (figures, labels)."""
    bundle, device = segmenter.bundle, segmenter.device
    conv.seconds, conv.flops, conv.calls = 0.0, 0, 0
    times, clock = {}, [time.perf_counter()]

    def lap(name: str) -> None:
        synchronize(device)
        now = time.perf_counter()
        times[name] = now - clock[0]
        clock[0] = now

    synchronize(device)
    start = clock[0] = time.perf_counter()
    volume = read_volume(path)
    validate_volume(volume)
    lap("read")
    modality = resolve_modality(segmenter.modality, volume.array)
    canonical, grid = to_canonical(volume, segmenter.target_spacing)
    samples = canonical.array > 0
    if not grid.is_exact:
        samples = dilated_by_one_voxel(samples)
    lap("to_canonical")
    network_input = normalize(canonical.array, modality, bundle.normalization)
    del canonical
    lap("normalize")
    probabilities = dense_probabilities(model, network_input, samples, device, segmenter.options)
    del network_input, samples
    lap("network")
    on_input = from_canonical(probabilities, grid, interpolation="linear")
    del probabilities
    background_outside(on_input, np.asarray(volume.array) > 0)
    lap("from_canonical")
    maps = ProbabilityMaps(on_input, bundle.classes, segmenter.selected_classes(None), bundle.default_thresholds)
    labels = maps.labelmap()
    lap("labelmap")
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:  # not part of the in-process figure; the CLI does it
        write_labelmap(labels, volume, Path(tmp) / "labels.nii.gz")
        lap("write_nifti_gz")
    return {"mode": "stages", "precision": segmenter.precision, "seconds_end_to_end": seconds,
            "stage_seconds": times, "seconds_conv_stack": conv.seconds, "conv_stack_flops": conv.flops,
            "conv_stack_calls": conv.calls, **labels_summary(labels)}, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("segmenter", "stages"), required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--labels", help="also save the labelmap here (.npy), for the caller to compare")
    args = parser.parse_args()
    segmenter = Segmenter(load_bundle(args.model), device=args.device, precision=args.precision)
    if args.mode == "segmenter":
        result, labels = segment(segmenter, Path(args.input))
    else:
        result, labels = stages(segmenter, *prepared_and_timed(segmenter), Path(args.input))
    if args.labels:
        np.save(args.labels, labels)
    result.update({"threads": torch.get_num_threads(), "peak_rss_bytes": peak_rss_bytes()})
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        result["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
