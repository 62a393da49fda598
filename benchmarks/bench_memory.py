"""Peak resident memory of segmenting a CTA-sized volume (512 x 512 x 300) on the CPU.

The volume is the cardiac CTA phantom (Hounsfield units, int16) zoomed to 300 x 512 x 512 voxels
at 0.45 mm isotropic spacing, written to an NRRD file; a child process reads it and runs
``Segmenter.predict`` and the labelmap, and reports its own peak resident memory (VmHWM, which
counts torch's and OpenVINO's allocations too) and the peak of each stage (resident memory sampled every
50 ms, stages from the progress callback). The target: within 2 GB.

Memory does not depend on the network's depth (features, head and slabs are sized by its width and
classes), so make bench measures it with 2 conv layers (the 25-layer network takes ~25 min at this
size on 2 cores); only the deeper network's 25-voxel slab context is missing.

    .venv/bin/python benchmarks/bench_memory.py [--layers 25] [--shape 300 512 512] [--backend torch]
                                                [--smoke] [--results DIR]
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
from common import (add_common_arguments, finish_machine_state, machine_state, model_bundle, peak_rss_bytes,  # noqa: E402
                    run_child, write_result)

SHAPE = (300, 512, 512)
SMOKE_SHAPE = (12, 48, 48)
SPACING_MM = 0.45
THICK_SLICE_MM = 0.625  # a common CTA slice distance: the canonical grid then has 39% more slices
TARGET_BYTES = 2 * 10 ** 9  # the speed issue's target for the CPU (it was 4 GB before)


def cta_sized_volume(shape=SHAPE, coarse: bool = False, slice_mm: float = SPACING_MM):
    """The cardiac phantom's anatomy zoomed to ``shape`` (linear interpolation), in int16 HU.

    ``coarse``: the phantom drawn at 1/4 of its resolution over the same field of view (a smoke run).
    ``slice_mm`` other than the in-plane 0.45 mm: the same voxels with thicker slices, as most CTAs
    are, so the canonical grid is interpolated (more slices) rather than the input's own.
    """
    from scipy import ndimage

    from MultiTaskSegLib.engine.geometry import Volume
    from MultiTaskSegLib.data.phantoms import CARDIAC_SHAPE, CARDIAC_SPACING_MM, cardiac_cta_phantom

    reduction = 4 if coarse else 1
    phantom = cardiac_cta_phantom(0, [n // reduction for n in CARDIAC_SHAPE], CARDIAC_SPACING_MM * reduction)[0]
    factors = [n / s for n, s in zip(shape, phantom.array.shape)]
    array = ndimage.zoom(phantom.array.astype(np.float32), factors, order=1).astype(np.int16)
    return Volume(array, (SPACING_MM, SPACING_MM, slice_mm), (0.0, 0.0, 0.0), np.eye(3))


class StagePeaks:
    """Peak resident memory per stage: a thread samples /proc/self/statm every 50 ms (ru_maxrss
    gives the process's peak only; tracemalloc misses torch's and OpenVINO's buffers)."""

    def __init__(self, interval: float = 0.05):
        import os
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.stage, self.peaks = "start", {}
        self.interval = interval
        threading.Thread(target=self._sample, daemon=True).start()

    def resident(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def enter(self, stage: str) -> None:
        self.note()
        self.stage = stage
        self.note()

    def note(self) -> None:
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), self.resident())

    def _sample(self) -> None:
        while True:
            self.note()
            time.sleep(self.interval)


def own_peak_rss_bytes() -> int:
    """This process's peak resident memory since it started its program (VmHWM on Linux).

    Not ru_maxrss there: Linux carries it over from the parent through fork and exec, so a child
    reported at least the RSS its parent had when it started (654 MB for a tiny volume here, the
    parent having built the phantom)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()


def worker(args) -> None:
    peaks = StagePeaks()
    peaks.enter("imports")
    from MultiTaskSegLib.engine.bundle import load_bundle
    from MultiTaskSegLib.engine.segmenter import Segmenter
    from MultiTaskSegLib.engine.image_reading import read_volume

    start = time.perf_counter()
    stages = {}

    def progress(fraction, stage):
        stage = "network" if stage.startswith("Running") else stage
        if stage not in stages:
            peaks.enter(stage)
        stages.setdefault(stage, round(time.perf_counter() - start, 1))

    peaks.enter("model load")
    segmenter = Segmenter(load_bundle(args.model), device="cpu", backend=args.backend)
    peaks.enter("read")
    volume = read_volume(args.input)
    stages["read"] = round(time.perf_counter() - start, 1)
    maps = segmenter.predict(volume, progress=progress)
    peaks.enter("labelmap")
    labels = maps.labelmap()
    stages["labelmap done"] = round(time.perf_counter() - start, 1)
    peaks.enter("end")
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_bytes": own_peak_rss_bytes(),
                      "stage_started_at_seconds": stages, "stage_peak_rss_bytes": peaks.peaks,
                      "backend": segmenter.backend, "precision": segmenter.precision,
                      "threads": torch.get_num_threads(), "input_dtype": str(volume.array.dtype),
                      "labelled_voxels": int((labels > 0).sum())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input"), parser.add_argument("--model")
    parser.add_argument("--layers", type=int, default=25,
                        help="conv layers of the model (25 = the paper's); memory does not depend on it, time does")
    parser.add_argument("--shape", type=int, nargs=3, default=list(SHAPE), help="z y x (smaller: a quick check)")
    parser.add_argument("--slice-mm", type=float, default=SPACING_MM,
                        help="slice distance (default: isotropic 0.45 mm; e.g. 0.625: an interpolated canonical grid)")
    parser.add_argument("--no-variants", action="store_true",
                        help="only the target's run (not also PyTorch's conv stack and 0.625 mm slices)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"],
                        help="the CPU conv stack (auto: OpenVINO where installed, as users get it)")
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.smoke:
        args.shape = list(SMOKE_SHAPE)

    from MultiTaskSegLib.engine.geometry import Volume
    from MultiTaskSegLib.engine.image_writing import write_volume

    result = {"benchmark": "memory", "smoke": args.smoke, "machine": machine_state(0 if args.smoke else 1.0),
              "target_bytes": TARGET_BYTES}
    bundle, model_note = model_bundle(args.layers, args.smoke)
    print("building the CTA-sized volume ...", flush=True)
    volume = cta_sized_volume(tuple(args.shape), coarse=args.smoke, slice_mm=args.slice_mm)
    result.update({"model": model_note, "volume": {"shape": list(args.shape), "spacing_mm": SPACING_MM,
                                                   "slice_mm": args.slice_mm,
                                                   "dtype": str(volume.array.dtype),
                                                   "voxels_above_0": int((volume.array > 0).sum()),
                                                   "note": "cardiac CTA phantom zoomed to CTA size"}})
    # Beside the target's run (the default backend, the isotropic grid): PyTorch's conv stack, and the
    # same voxels as 0.625 mm slices, whose canonical grid is interpolated (most CTAs are acquired so).
    variants = [] if args.smoke or args.no_variants else [
        {"backend": "torch", "slice_mm": args.slice_mm},
        {"backend": args.backend, "slice_mm": THICK_SLICE_MM}]
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "model.safetensors"
        bundle.save(model_file)
        files = {}
        for slice_mm in {args.slice_mm} | {v["slice_mm"] for v in variants}:
            files[slice_mm] = Path(tmp) / f"cta_{slice_mm}.nrrd"
            write_volume(Volume(volume.array, (SPACING_MM, SPACING_MM, slice_mm), volume.origin, volume.direction),
                         files[slice_mm])
        del volume

        def segment(backend: str, slice_mm: float) -> dict:
            return run_child(Path(__file__), ["--worker", "--input", str(files[slice_mm]), "--model",
                                              str(model_file), "--backend", backend], timeout=1800)

        print("segmenting in a child process ...", flush=True)
        result["segment"] = child = segment(args.backend, args.slice_mm)
        for variant in variants:
            print(f"segmenting in a child process: {variant} ...", flush=True)
            variant["segment"] = segment(variant["backend"], variant["slice_mm"])
    if variants:
        result["variants"] = variants
    result["peak_rss_gib"] = child["peak_rss_bytes"] / 2 ** 30
    result["within_target"] = child["peak_rss_bytes"] <= TARGET_BYTES
    finish_machine_state(result["machine"], 0 if args.smoke else 1.0)
    print(json.dumps({k: result[k] for k in ("segment", "peak_rss_gib", "within_target")}, indent=2))
    write_result("memory", result, args.results)


if __name__ == "__main__":
    main()
