"""Shared pieces of the benchmarks: arguments and results, the machine, its attainable FLOP rates,
the per-voxel patch formulation, timing the conv stack, and child processes.

Every benchmark takes ``--smoke`` (tiny inputs, one repeat: checks that it runs, in seconds) and
``--results DIR`` (where it writes ``<name>.json``; default benchmarks/results). Peak memory is
measured in child processes: torch allocates outside Python's allocator, so tracemalloc misses
most of it, while the child's ``ru_maxrss`` (the kernel's high-water mark) counts everything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SHIPPED_MODEL = ROOT / "MultiTaskSeg" / "Resources" / "Models" / "multitaskseg-3tasks.safetensors"
SMOKE_LAYERS = 3  # the smoke runs' random network: a 7x7 patch, so every path runs in milliseconds


# ---------------------------------------------------------------------------------------------- arguments, results

def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="tiny inputs and one repeat: check that it runs")
    parser.add_argument("--results", default=str(RESULTS), help="folder for <name>.json (default: benchmarks/results)")


def write_result(name: str, result: dict, results: str) -> Path:
    folder = Path(results)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}", flush=True)
    return path


def model_bundle(layers: Optional[int] = None, smoke: bool = False):
    """(bundle, note): the shipped model when present, else random weights (speed does not depend on
    the values); ``layers`` other than 25, or a smoke run, get a random shallow network."""
    from MultiTaskSegLib.engine.bundle import load_bundle, make_random_bundle

    if smoke:
        layers = SMOKE_LAYERS
    if layers is not None and layers != 25:
        return make_random_bundle(seed=0, n_layers=layers), f"random weights, {layers} conv layers"
    if SHIPPED_MODEL.exists():
        return load_bundle(SHIPPED_MODEL), f"shipped ({SHIPPED_MODEL.name})"
    return make_random_bundle(seed=0), "random weights (shipped model not present)"


# ---------------------------------------------------------------------------------------------- the machine

def cpu_description() -> dict:
    """The CPU model and the matrix instruction sets that decide bf16's speed (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
    return {"cpu": model, "matrix_flags": [flag for flag in wanted if flag in flags]}


def load_average() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def busy_processes(sample_seconds: float = 1.0, min_share: float = 0.2) -> List[dict]:
    """Other processes using more than ``min_share`` of a core over a short sample (Linux /proc)."""
    def cpu_times() -> Dict[str, int]:
        times = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    times[entry.name] = int(fields[11]) + int(fields[12])
                except (OSError, IndexError, ValueError):
                    pass
        return times

    try:
        before = cpu_times()
        time.sleep(sample_seconds)
        after = cpu_times()
    except OSError:
        return []
    ticks = os.sysconf("SC_CLK_TCK") * sample_seconds
    busy = []
    for pid, used in after.items():
        share = (used - before.get(pid, used)) / ticks
        if share >= min_share:
            try:
                command = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            except OSError:
                command = "?"
            busy.append({"pid": int(pid), "cpu_share": round(share, 2), "command": command.strip()})
    return busy


def machine_state(sample_seconds: float = 1.0) -> dict:
    """What ran the benchmark and whether anything else competed for its cores (at the start)."""
    from MultiTaskSegLib.engine.devices import physical_core_count

    return {
        **cpu_description(), "logical_cpus": os.cpu_count(), "physical_cores": physical_core_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_start": load_average(),
        "other_busy_processes_start": busy_processes(sample_seconds) if sample_seconds else [],
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def finish_machine_state(machine: dict, sample_seconds: float = 1.0) -> None:
    """The load at the end; the cores count as shared when anything else ran at either end."""
    machine["load_average_end"] = load_average()
    machine["other_busy_processes_end"] = busy_processes(sample_seconds) if sample_seconds else []
    loads = [x for key in ("load_average_start", "load_average_end") for x in machine[key][:1]]
    machine["cpu_shared"] = bool(machine["other_busy_processes_start"] or machine["other_busy_processes_end"]
                                 or (loads and max(loads) > machine["physical_cores"] + 0.7))


# ---------------------------------------------------------------------------------------------- FLOP bounds

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], repeats: int, device: torch.device, warmups: int = 1) -> float:
    """The fastest of ``repeats`` calls after ``warmups`` (oneDNN/cuBLAS pick kernels on the first)."""
    for _ in range(warmups):
        fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rate(dtype: torch.dtype, device: torch.device, size: int, repeats: int) -> float:
    """FLOP/s of a square matrix product (2 n^3 FLOPs): the attainable matrix rate."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    with torch.inference_mode():
        return 2 * size ** 3 / best_seconds(lambda: a @ b, repeats, device)


def conv_layer_rate(dtype: torch.dtype, device: torch.device, planes: int, size: int, repeats: int) -> float:
    """FLOP/s of one of the network's layers alone (32 -> 32 channels, 3x3 valid, channels-last)."""
    conv = torch.nn.Conv2d(32, 32, 3).to(device=device, dtype=dtype).to(memory_format=torch.channels_last).eval()
    x = torch.randn(planes, 32, size, size, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * 32 * 32 * 9 * planes * (size - 2) ** 2
    with torch.inference_mode():
        return flops / best_seconds(lambda: conv(x), repeats, device)


def attainable_rates(device: torch.device, smoke: bool = False, dtypes=("bf16", "fp32"), previous: Optional[dict] = None
                     ) -> dict:
    """FLOP/s of large matrix products per precision (the bound) and of one conv layer (for context).

    Measured at the start and end of a run: with ``previous``, each figure is the best of both, so
    a neighbour's burst during one measurement cannot lower the bound.
    """
    from MultiTaskSegLib.engine.devices import DTYPES

    size = 256 if smoke else (8192 if device.type == "cuda" else 4096)
    repeats = 1 if smoke else 5
    rates = {"matmul_size": size}
    for name in dtypes:
        rates[f"{name}_matmul"] = matmul_rate(DTYPES[name], device, size, repeats)
        rates[f"{name}_conv_layer"] = conv_layer_rate(DTYPES[name], device, 2 if smoke else 8,
                                                      24 if smoke else 232, repeats)
    if previous:
        rates = {key: max(value, previous.get(key, 0)) if key != "matmul_size" else value
                 for key, value in rates.items()}
    return rates


def conv_flop_bound(flops: float, seconds: float, rates: dict, precision: str) -> dict:
    """A path's time against its FLOP bound: its conv FLOPs at the attainable matrix rate of its precision."""
    rate = rates.get(f"{precision}_matmul") or rates["fp32_matmul"]
    bound = flops / rate
    return {"conv_flops": int(flops), "seconds": seconds, "bound_seconds": bound,
            "times_flop_bound": seconds / bound if bound else None, "bound_precision": precision}


class ConvStackTimer:
    """Wall time and exact FLOPs of every conv-stack call of one model object the benchmark owns
    (its ``features`` is wrapped on the instance; ``remove`` restores the class's method)."""

    def __init__(self, model, device: torch.device):
        from MultiTaskSegLib.engine.network import conv_stack_flops

        self.model, self.seconds, self.flops, self.calls = model, 0.0, 0, 0
        features = model.features

        def timed(planes):
            synchronize(device)
            start = time.perf_counter()
            out = features(planes)
            synchronize(device)
            self.seconds += time.perf_counter() - start
            self.flops += conv_stack_flops(model.arch, planes.shape[0], planes.shape[2], planes.shape[3])
            self.calls += 1
            return out

        model.features = timed

    def remove(self) -> None:
        del self.model.features


# ---------------------------------------------------------------------------------------------- patch formulation

def patch_formulation(model, image: np.ndarray, mask: np.ndarray, n: int, device: torch.device,
                      precision: Optional[str] = None, batch: int = 64, rounds: int = 2, seed: int = 0) -> dict:
    """The paper's per-voxel formulation on ``n`` random voxels of ``mask``: seconds per voxel, extrapolated.

    ``precision`` None: the network as trained, fp32 (the paper's); else the inference settings (a
    model prepared by ``inference_model``: BN folded, weights in ``precision``, channels-last).
    """
    from MultiTaskSegLib.engine.network import conv_stack_flops, extract_patches, pad_volume
    from MultiTaskSegLib.engine.prepared_model import inference_model

    rng = np.random.default_rng(seed)
    voxels = np.argwhere(mask)
    centres = torch.as_tensor(voxels[rng.choice(len(voxels), size=n, replace=False)], device=device)
    net = (model.eval().to(device) if precision is None
           else inference_model(model, precision, device, channels_last=True))
    padded = pad_volume(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device), model.arch.halo)
    batch = min(n, batch)

    def classify(chosen):
        with torch.inference_mode():
            for start in range(0, len(chosen), batch):
                patches = extract_patches(padded, chosen[start:start + batch], model.arch.halo)
                if precision is not None:  # fp32 in: the prepared model's first layer takes it
                    patches = [p.contiguous(memory_format=torch.channels_last) for p in patches]
                net(*patches)

    classify(centres[:batch])  # warm-up with the timed batch shape (kernels are built per shape)
    per_round = [best_seconds(lambda: classify(centres), 1, device, warmups=0) for _ in range(rounds)]
    per_voxel = min(per_round) / n  # the best round: a neighbour's burst in a short window skews the ratio
    brain = int(mask.sum())
    patch = model.arch.patch_size
    return {"timed_voxels": n, "batch": batch, "rounds_seconds": [round(r, 3) for r in per_round],
            "seconds_per_voxel": per_voxel, "extrapolated_seconds": per_voxel * brain,
            "volume_voxels_per_second": mask.size / (per_voxel * brain),
            "conv_flops_per_voxel": 3 * conv_stack_flops(model.arch, 1, patch, patch),
            "precision": precision or "fp32",
            "settings": "network as trained, fp32" if precision is None else f"BN folded, {precision}, channels-last"}


# ---------------------------------------------------------------------------------------------- processes

def peak_rss_bytes() -> int:
    """This process's peak resident memory (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def run_child(script: Path, arguments: List[str], timeout: float = 1800) -> dict:
    """Run ``script arguments...`` in a fresh interpreter; it prints one JSON object as its last line."""
    completed = subprocess.run([sys.executable, str(script)] + arguments, capture_output=True, text=True,
                               timeout=timeout, cwd=str(ROOT))
    if completed.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(arguments)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_command(command: List[str], timeout: float = 1800) -> dict:
    """Wall seconds and peak RSS of a whole command (a fresh process, as a user runs it).

    ``os.wait4`` gives this child's own resource usage (RUSAGE_CHILDREN would be the largest of all
    children so far).
    """
    import tempfile

    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                process.kill()
                process.wait()
                raise RuntimeError(f"{' '.join(command)} ran over {timeout:.0f} s")
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n"
                               f"{log.read().decode(errors='replace')[-3000:]}")
    peak = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    return {"seconds": seconds, "peak_rss_bytes": int(peak)}


def refresh_flop_bounds(result, rates: dict) -> None:
    """Recompute every ``conv_flop_bound`` entry in ``result`` against ``rates`` (e.g. the best of
    the start and end measurements), in place."""
    if isinstance(result, dict):
        if {"conv_flops", "seconds", "bound_precision"} <= set(result):
            result.update(conv_flop_bound(result["conv_flops"], result["seconds"], rates, result["bound_precision"]))
        for value in result.values():
            refresh_flop_bounds(value, rates)
    elif isinstance(result, list):
        for value in result:
            refresh_flop_bounds(value, rates)
