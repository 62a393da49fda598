"""Training blocks per second with and without on-the-fly synthesis, on one CPU process.

What a DataLoader worker does for each block (training/sampling.py), for every task:

- plain: the block cropped as it is (no augmentation, no synthesis);
- augmented: random pose, elastic shape, thick slices, intensity (no synthesis);
- synthesised (brain only): as augmented, from synthetic volumes (head, contrast, bias, noise,
  normalisation) remade every ``blocks_per_volume`` blocks.

It also times one synthetic volume by kind. Blocks are the training default (24^3 target voxels
plus the 25-voxel context of the paper's network). The brain and phantoms come from a make-data
folder (``--data``; default: written to a temporary folder first, with pydeface's head when it is
cached or can be registered). Prints one JSON object; no assertions.

    .venv/bin/python benchmarks/bench_synthesis.py [--data DIR] [--blocks 40] [--smoke] [--results DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_arguments, finish_machine_state, machine_state, write_result  # noqa: E402

from MultiTaskSegLib.engine.classes import DEFAULT_CLASSES  # noqa: E402
from MultiTaskSegLib.engine.geometry import Volume  # noqa: E402
from MultiTaskSegLib.engine.normalization import DEFAULT_NORMALIZATION  # noqa: E402
from MultiTaskSegLib.training import generation_labels as gen  # noqa: E402
from MultiTaskSegLib.training.cases import PreparedCase, group_by_task, prepare_dataset  # noqa: E402
from MultiTaskSegLib.training.sampling import sample_batch  # noqa: E402
from MultiTaskSegLib.training.synthetic_cases import (SynthesisSettings, SynthesisSource, SyntheticPool,  # noqa: E402
                                                      synthesize)

HALO = 25


def smoke_cases():
    """A 2 mm sphere brain and a sphere phantom: seconds, no packages needed."""
    z, y, x = np.meshgrid(*[np.arange(48) - 24.0] * 3, indexing="ij")
    radius = np.sqrt(z ** 2 + y ** 2 + x ** 2)
    generation = np.zeros(radius.shape, np.uint8)
    generation[radius < 16] = gen.code("cerebral cortex")
    generation[radius < 13] = gen.code("cerebral white matter")
    generation[radius < 4] = gen.code("lateral ventricles")
    generation[(radius < 18) & (z < -10) & (np.abs(x) < 4) & (np.abs(y) < 4)] = gen.code("brain stem")
    image = Volume((100.0 * generation.astype(bool) + generation).astype(np.float32), (2.0,) * 3)
    source = SynthesisSource(image.array, generation, gen.training_lookup(), "MR", DEFAULT_NORMALIZATION,
                             SynthesisSettings())
    brain = PreparedCase("sphere", "brain", image.array / 110.0, gen.training_labels(generation), image.array > 0,
                         2.0, source)
    labels = (radius < 10).astype(np.uint8) * 7
    phantom = PreparedCase("ball", "breast", (radius < 20).astype(np.float32), labels, radius < 20, 1.0)
    return {"brain": [brain], "breast": [phantom]}


def data_cases(folder: Path):
    from MultiTaskSegLib.training.datasets import load_dataset

    names = [c.name for c in DEFAULT_CLASSES]
    cases = []
    for path in sorted(folder.glob("Dataset*")):
        cases += prepare_dataset(load_dataset(path), names, DEFAULT_NORMALIZATION, "training", None, folder / "cache")
    return group_by_task(cases)


def blocks_per_second(cases, task, classes, block, blocks, augmentation, seed=0) -> float:
    rng, pool = np.random.default_rng(seed), SyntheticPool()
    modality = {"brain": "MR", "breast": "MR", "coronary": "CT"}
    sample_batch({task: cases}, {task: classes}, modality, 1, block, HALO, rng, augmentation, pool)  # warm-up
    start = time.perf_counter()
    for _ in range(blocks):
        sample_batch({task: cases}, {task: classes}, modality, 1, block, HALO, rng, augmentation, pool)
    return blocks / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a make-data output folder (default: write one to a temporary folder)")
    parser.add_argument("--blocks", type=int, default=48, help="blocks timed per configuration")
    parser.add_argument("--block", type=int, default=24)
    add_common_arguments(parser)
    args = parser.parse_args()
    result = {"benchmark": "synthesis", "machine": machine_state(0 if args.smoke else 1.0), "block": args.block,
              "halo": HALO}
    if args.smoke:
        cases_by_task, blocks, block = smoke_cases(), 2, 6
    else:
        blocks, block = args.blocks, args.block
        folder = Path(args.data) if args.data else None
        if folder is None:
            from MultiTaskSegLib.data.make_data import build_training_data

            folder = Path(tempfile.mkdtemp(prefix="bench-synthesis-"))
            build_training_data(folder, n_breast_train=2, n_breast_test=0, n_coronary_train=2, n_coronary_test=0)
        cases_by_task = data_cases(folder)
    rows = []
    for task, cases in cases_by_task.items():
        classes = [i for i, c in enumerate(DEFAULT_CLASSES) if c.task == task]
        bare = [dataclasses.replace(c, synthesis=None) for c in cases]
        row = {"task": task, "cases": len(cases),
               "plain_blocks_per_s": round(blocks_per_second(bare, task, classes, block, blocks, False), 2),
               "augmented_blocks_per_s": round(blocks_per_second(bare, task, classes, block, blocks, True), 2)}
        if any(c.synthesis is not None for c in cases):
            row["synthesised_blocks_per_s"] = round(blocks_per_second(cases, task, classes, block, blocks, True), 2)
            row["blocks_per_volume"] = cases[0].synthesis.settings.blocks_per_volume
            row["seconds_per_volume"] = {}
            for case in cases:
                rng, seconds = np.random.default_rng(1), []
                for _ in range(1 if args.smoke else 4):
                    start = time.perf_counter()
                    synthesize(case, rng)
                    seconds.append(time.perf_counter() - start)
                row["seconds_per_volume"][case.case_id] = round(float(np.mean(seconds)), 2)
        rows.append(row)
        print(row, flush=True)
    result["rows"] = rows
    finish_machine_state(result["machine"], 0 if args.smoke else 1.0)
    write_result("synthesis", result, args.results)


if __name__ == "__main__":
    main()
