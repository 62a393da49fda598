"""Peak resident memory of segmenting a CTA-sized volume (512 x 512 x 300) on the CPU.

The volume is the cardiac CTA phantom (Hounsfield units, int16) zoomed to 300 x 512 x 512 voxels
at 0.45 mm isotropic spacing, written to an NRRD file; a child process reads it and runs
``Segmenter.predict`` and the labelmap, and reports its own peak resident memory (ru_maxrss,
which counts torch's allocations too). The goal: within 4 GB.

    .venv/bin/python benchmarks/bench_memory.py [--layers 25] [--shape 300 512 512]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_state, model_bundle, peak_rss_bytes, run_child, write_result  # noqa: E402

SHAPE = (300, 512, 512)
SPACING_MM = 0.45
LIMIT_BYTES = 4 * 10 ** 9


def cta_sized_volume(shape=SHAPE):
    """The cardiac phantom's anatomy zoomed to ``shape`` (linear interpolation), in int16 HU."""
    from scipy import ndimage

    from MultiTaskSegLib.engine.geometry import Volume
    from MultiTaskSegLib.data.phantoms import cardiac_cta_phantom

    phantom = cardiac_cta_phantom(0)[0]
    factors = [n / s for n, s in zip(shape, phantom.array.shape)]
    array = ndimage.zoom(phantom.array.astype(np.float32), factors, order=1).astype(np.int16)
    return Volume(array, (SPACING_MM,) * 3, (0.0, 0.0, 0.0), np.eye(3))


def worker(args) -> None:
    from MultiTaskSegLib.engine.bundle import load_bundle
    from MultiTaskSegLib.engine.segmenter import Segmenter
    from MultiTaskSegLib.engine.image_reading import read_volume

    start = time.perf_counter()
    stages = {}

    def progress(fraction, stage):
        stage = "network" if stage.startswith("Running") else stage
        stages.setdefault(stage, round(time.perf_counter() - start, 1))

    segmenter = Segmenter(load_bundle(args.model), device="cpu")
    volume = read_volume(args.input)
    stages["read"] = round(time.perf_counter() - start, 1)
    maps = segmenter.predict(volume, progress=progress)
    labels = maps.labelmap()
    stages["labelmap done"] = round(time.perf_counter() - start, 1)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_bytes": peak_rss_bytes(),
                      "stage_started_at_seconds": stages,
                      "precision": segmenter.precision, "threads": torch.get_num_threads(),
                      "input_dtype": str(volume.array.dtype), "labelled_voxels": int((labels > 0).sum())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input"), parser.add_argument("--model")
    parser.add_argument("--layers", type=int, default=25,
                        help="conv layers of the model (25 = the paper's); memory does not depend on it, time does")
    parser.add_argument("--shape", type=int, nargs=3, default=list(SHAPE), help="z y x (smaller: a quick check)")
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from MultiTaskSegLib.engine.image_writing import write_volume

    result = {"benchmark": "memory", "machine": machine_state(), "limit_bytes": LIMIT_BYTES}
    bundle, model_note = model_bundle(args.layers)
    print("building the CTA-sized volume ...", flush=True)
    volume = cta_sized_volume(tuple(args.shape))
    result.update({"model": model_note, "volume": {"shape": list(args.shape), "spacing_mm": SPACING_MM,
                                                   "dtype": str(volume.array.dtype),
                                                   "voxels_above_0": int((volume.array > 0).sum()),
                                                   "note": "cardiac CTA phantom zoomed to CTA size"}})
    with tempfile.TemporaryDirectory() as tmp:
        image_file, model_file = Path(tmp) / "cta.nrrd", Path(tmp) / "model.safetensors"
        write_volume(volume, image_file)
        del volume
        bundle.save(model_file)
        print("segmenting in a child process ...", flush=True)
        child = run_child(Path(__file__), ["--worker", "--input", str(image_file), "--model", str(model_file)],
                          timeout=1800)
    result["segment"] = child
    result["peak_rss_gib"] = child["peak_rss_bytes"] / 2 ** 30
    result["within_limit"] = child["peak_rss_bytes"] <= LIMIT_BYTES
    print(json.dumps({k: result[k] for k in ("segment", "peak_rss_gib", "within_limit")}, indent=2))
    print(f"written {write_result('memory', result)}")


if __name__ == "__main__":
    main()
