"""Time of re-thresholding (the slider drag) on a large uint8 probability map; prints JSON.

Default: 9 classes on 300 x 512 x 512 voxels (707 MB of uint8 probabilities), all classes
selected, so both thresholded classes take part. Measures the first labelmap (includes the
cached argmax step) and then labelmaps after threshold changes (only the threshold step).

    .venv/bin/python benchmarks/bench_thresholds.py [--shape 300 512 512] [--repeats 5] [--smoke] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_arguments, finish_machine_state, machine_state, write_result  # noqa: E402

from MultiTaskSegLib.engine.classes import DEFAULT_CLASSES
from MultiTaskSegLib.engine.labelmap_rule import ProbabilityMaps


def random_maps(shape, seed: int = 0) -> np.ndarray:
    """Random uint8 values (worst case for branch prediction), filled slab by slab to save memory."""
    rng = np.random.default_rng(seed)
    data = np.empty((len(DEFAULT_CLASSES),) + tuple(shape), dtype=np.uint8)
    for z in range(shape[0]):
        data[:, z] = rng.integers(0, 256, data[:, z].shape, dtype=np.uint8)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--repeats", type=int, default=5)
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.shape, args.repeats = (8, 32, 32), 1
    machine = machine_state(0 if args.smoke else 1.0)

    data = random_maps(args.shape)
    maps = ProbabilityMaps(data, DEFAULT_CLASSES)

    start = time.perf_counter()
    maps.labelmap()
    first = time.perf_counter() - start

    changes = []
    for t in np.linspace(0.2, 0.8, args.repeats):
        start = time.perf_counter()
        maps.labelmap({"pectoral muscle": float(t), "coronary arteries": float(1 - t)})
        changes.append(time.perf_counter() - start)

    finish_machine_state(machine, 0 if args.smoke else 1.0)
    result = {
        "benchmark": "thresholds", "smoke": args.smoke, "machine": machine,
        "shape_zyx": list(args.shape),
        "classes": len(DEFAULT_CLASSES),
        "thresholded_classes": len(maps.thresholded_classes()),
        "probability_map_mb": round(data.nbytes / 2**20, 1),
        "first_labelmap_s": round(first, 3),
        "threshold_change_s_median": round(float(np.median(changes)), 3),
        "threshold_change_s_max": round(max(changes), 3),
        "repeats": args.repeats,
        "numpy": np.__version__,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    write_result("thresholds", result, args.results)


if __name__ == "__main__":
    main()
