"""Time of a threshold change on a 256^3 segmentation (slider drag), with Slicer's MRML classes.

Runs outside Slicer with the slicer-core wheel: a real vtkMRMLScene, volume and segmentation
node. The network is replaced by synthetic 9-class probability maps (a threshold change never
runs it). Prints one JSON object; no assertions.

    .venv/bin/python benchmarks/bench_threshold_update.py [--size 256] [--repeats 10] [--smoke] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import slicer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_arguments, finish_machine_state, machine_state, write_result  # noqa: E402

from MultiTaskSegLib.slicer.logic import SegmentationLogic
from MultiTaskSegLib.engine.classes import DEFAULT_CLASSES
from MultiTaskSegLib.engine.labelmap_rule import ProbabilityMaps


def synthetic_maps(shape, seed=0) -> ProbabilityMaps:
    """Smooth random probabilities for every default class (uint8, as the engine stores them)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((len(DEFAULT_CLASSES),) + tuple(s // 16 for s in shape))
    data = np.empty((len(DEFAULT_CLASSES),) + tuple(shape), dtype=np.uint8)
    for c in range(len(DEFAULT_CLASSES)):
        block = np.kron(coarse[c], np.ones((16, 16, 16)))
        data[c] = (block * 255).astype(np.uint8)
    return ProbabilityMaps(data, DEFAULT_CLASSES)


class PrecomputedSegmenter:
    def __init__(self, maps):
        self.maps = maps

    def predict(self, volume, classes=None, progress=None, cancel=None):
        return self.maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.size, args.repeats = 32, 1
    machine = machine_state(0 if args.smoke else 1.0)
    shape = (args.size,) * 3

    scene = slicer.vtkMRMLScene()
    volumeNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "bench")
    slicer.util.updateVolumeFromArray(volumeNode, np.random.default_rng(1).normal(size=shape).astype(np.float32))
    maps = synthetic_maps(shape)
    logic = SegmentationLogic(segmenter_factory=lambda bundle, device: PrecomputedSegmenter(maps))
    logic.load_bundle = lambda model=None: None  # no weights needed

    start = time.perf_counter()
    segmentationNode = logic.segment(volumeNode)
    first_segment_s = time.perf_counter() - start  # includes the cached argmax step (once)

    thresholded = maps.thresholded_classes()
    update_s, labelmap_s = [], []
    for repeat in range(args.repeats):
        thresholds = {c: 0.3 + 0.4 * ((repeat + i) % 5) / 4 for i, c in enumerate(thresholded)}
        start = time.perf_counter()
        maps.labelmap(thresholds)
        labelmap_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        logic.update_thresholds(segmentationNode, thresholds)
        update_s.append(time.perf_counter() - start)

    finish_machine_state(machine, 0 if args.smoke else 1.0)
    result = {
        "benchmark": "threshold_update", "smoke": args.smoke, "machine": machine,
        "shape_zyx": list(shape),
        "classes": len(DEFAULT_CLASSES),
        "segments": segmentationNode.GetSegmentation().GetNumberOfSegments(),
        "repeats": args.repeats,
        "first_segment_s": round(first_segment_s, 4),
        "update_median_s": round(statistics.median(update_s), 4),
        "update_max_s": round(max(update_s), 4),
        "of_which_labelmap_rule_median_s": round(statistics.median(labelmap_s), 4),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    write_result("threshold_update", result, args.results)


if __name__ == "__main__":
    main()
