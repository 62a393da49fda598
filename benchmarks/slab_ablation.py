"""Network-only measurements for bench_inference.py, through the engine's public functions:

* ``slab_ablation``: one slab of the brain, one change at a time, from the network as trained
  (``network.block_logits``, the reference dense forward, under ``devices.autocast``) to the
  prepared model in ``slab_loop.slab_probabilities`` (the path ``Segmenter`` runs);
* ``conv_stack_checks``: one engine-sized batch of planes through the prepared conv stack, as the
  engine runs it (layer outputs from the heap, ``heap.heap_reused_by_conv_layers``), without its
  ELUs, and with every layer output in a fresh mmap (the setting
  ``heap.return_freed_memory_to_the_system`` leaves outside the conv stack);
* ``compile_check``: torch.compile of the conv stack, its compile time against the time it saves.

Every row carries its conv FLOPs and its time against the FLOP bound of its precision.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from common import ConvStackTimer, best_seconds, conv_flop_bound

from MultiTaskSegLib.engine.devices import DTYPES, autocast
from MultiTaskSegLib.engine.heap import heap_reused_by_conv_layers, return_freed_memory_to_the_system
from MultiTaskSegLib.engine.network import block_logits, conv_stack_flops, pad_volume
from MultiTaskSegLib.engine.prepared_model import inference_model
from MultiTaskSegLib.engine.slab_loop import SlabBox, slab_probabilities
from MultiTaskSegLib.engine.slab_sizing import DenseOptions, foreground_box, planes_per_batch_for

CPU = torch.device("cpu")
REFERENCE_PLANES_PER_BATCH = 64  # the reference path's default (slab_loop)


def _reference(model, padded: torch.Tensor, box, precision: str, channels_last: bool):
    """The network as trained on one slab: the reference dense forward, softmax to uint8."""
    def run():
        with autocast(CPU, precision):
            logits = block_logits(model, padded, box, REFERENCE_PLANES_PER_BATCH, channels_last)
        return torch.softmax(logits.float(), dim=1).mul_(255).round_().to(torch.uint8)
    return run


def _prepared(model, image: np.ndarray, box: SlabBox, precision: str):
    options = DenseOptions(precision, channels_last=True)
    return lambda: slab_probabilities(model, image, box, options, CPU)


def slab_ablation(trained, image: np.ndarray, mask: np.ndarray, z0: int, z1: int, rates: dict, rounds: int,
                  precision: str = "bf16") -> list:
    """Network time on planes z0:z1 of ``image`` (with their context), one change at a time."""
    y0, y1, x0, x1 = foreground_box(mask[z0:z1])
    whole = SlabBox(z0, z1, y0, y1, x0, x1)
    grouped = SlabBox(z0, z1, y0, y1, x0, x1, mask[z0:z1, y0:y1, x0:x1])
    padded = pad_volume(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), trained.arch.halo)
    reference = copy.deepcopy(trained).eval()  # its features get timed: leave the caller's model alone
    fast_fp32 = inference_model(trained, "fp32", CPU, channels_last=True)
    fast = inference_model(trained, precision, CPU, channels_last=True)
    as_trained = "network as trained, fp32 (conv, BN, ELU per layer)"
    autocast_row = f"{precision} autocast + channels-last"
    folded = f"{precision} weights, BN folded into the convs, channels-last"
    # (row, model, call, precision of its FLOP bound, the row it is compared with)
    box = (z0, z1, y0, y1, x0, x1)
    steps = [
        (as_trained, reference, _reference(reference, padded, box, "fp32", False), "fp32", None),
        ("fp32 + channels-last", reference, _reference(reference, padded, box, "fp32", True), "fp32", as_trained),
        (autocast_row, reference, _reference(reference, padded, box, precision, True), precision,
         "fp32 + channels-last"),
        ("fp32, BN folded into the convs, channels-last", fast_fp32, _prepared(fast_fp32, image, whole, "fp32"),
         "fp32", "fp32 + channels-last"),
        (folded, fast, _prepared(fast, image, whole, precision), precision, autocast_row),
        ("+ foreground boxes per plane group, head on the samples only (Segmenter's path)", fast,
         _prepared(fast, image, grouped, precision), precision, folded),
    ]
    timers = {}
    for _, model, *_ in steps:
        if id(model) not in timers:  # one timer per model object: a second would wrap the first
            timers[id(model)] = ConvStackTimer(model, CPU)
    best = {name: float("inf") for name, *_ in steps}
    flops = {}
    with torch.inference_mode():
        for round_ in range(rounds):  # rounds, not repeats: a neighbour's burst hits every row alike
            for name, model, call, _, _ in steps:
                timer = timers[id(model)]
                timer.flops = 0
                start = time.perf_counter()
                call()
                best[name] = min(best[name], time.perf_counter() - start)
                flops[name] = timer.flops
                print(f"  ablation round {round_ + 1}: {name}: {best[name]:.2f} s (best so far)", flush=True)
    for timer in timers.values():
        timer.remove()
    targets = int(mask[z0:z1].sum())
    rows = []
    for name, _, _, bound_precision, against in steps:
        seconds = best[name]
        rows.append({"configuration": name, "seconds": seconds,
                     "speedup_over_first": best[as_trained] / seconds, "compared_with": against,
                     "gain_over_compared": best[against] / seconds if against else None,
                     "target_voxels_per_second": targets / seconds,
                     "flop_bound": conv_flop_bound(flops[name], seconds, rates, bound_precision)})
    return rows


def conv_stack_checks(trained, rates: dict, precision: str, size: int, rounds: int = 2, repeats: int = 3) -> dict:
    """The prepared conv stack on one engine-sized batch of ``size``^2 planes: as the engine runs it,
    without its ELUs, and with layer outputs in fresh mmaps; best of ``rounds`` x ``repeats``."""
    net = inference_model(trained, precision, CPU, channels_last=True)
    without_elu = torch.nn.Sequential(*[torch.nn.Identity() if isinstance(layer, torch.nn.ELU) else layer
                                        for layer in net.conv_stack])
    itemsize = torch.finfo(DTYPES[precision]).bits // 8
    planes = planes_per_batch_for(DenseOptions(precision), trained.arch, size, size, itemsize, CPU)
    x = torch.randn(planes, 1, size, size).contiguous(memory_format=torch.channels_last)
    flops = conv_stack_flops(trained.arch, planes, size, size)

    def in_heap(stack):
        def run():
            with heap_reused_by_conv_layers(CPU):
                stack(x)
        return run

    def in_fresh_mmaps():
        return_freed_memory_to_the_system()  # allocations >= 1 MiB by mmap, as outside the conv stack
        net.conv_stack(x)

    variants = {"engine": in_heap(net.conv_stack), "without_elu": in_heap(without_elu),
                "fresh_mmaps": in_fresh_mmaps}
    best = {name: float("inf") for name in variants}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, run in variants.items():
                best[name] = min(best[name], best_seconds(run, repeats, CPU))
    return {"planes": planes, "plane_size": size, "precision": precision, "conv_flops": flops,
            "seconds": best, "flops_per_second": {name: flops / s for name, s in best.items()},
            "engine_flop_bound": conv_flop_bound(flops, best["engine"], rates, precision),
            "convolutions_alone_flop_bound": conv_flop_bound(flops, best["without_elu"], rates, precision),
            "elu_share_of_stack_time": 1 - best["without_elu"] / best["engine"],
            "heap_over_fresh_mmaps": best["fresh_mmaps"] / best["engine"]}


def compile_check(trained, precision: str, planes: int = 8, size: int = 232, repeats: int = 3) -> dict:
    """Does torch.compile (inductor) speed the prepared conv stack up, and does its compile time pay off?"""
    net = inference_model(trained, precision, CPU, channels_last=True)
    x = torch.randn(planes, 1, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        eager = best_seconds(lambda: net.conv_stack(x), repeats, CPU)
        try:
            compiled = torch.compile(net.conv_stack)
            start = time.perf_counter()
            compiled(x)
            compile_seconds = time.perf_counter() - start
            fast = best_seconds(lambda: compiled(x), repeats, CPU, warmups=0)
        except Exception as error:  # no compiler, unsupported platform: report, do not fail
            return {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    return {"planes": planes, "plane_size": size, "precision": precision, "eager_seconds": eager,
            "compiled_seconds": fast, "compile_seconds": compile_seconds, "speedup": eager / fast,
            "note": "plane-group shapes vary per slab, so each new shape would compile again"}
