"""Shared pieces of the benchmarks: the machine's state, its attainable FLOP rate, the model used,
and running one configuration in a child process so its peak resident memory is its own.

Torch allocates outside Python's allocator, so tracemalloc misses most of it; the child's
``ru_maxrss`` (the kernel's high-water mark of resident memory) counts everything.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SHIPPED_MODEL = ROOT / "MultiTaskSeg" / "Resources" / "Models" / "multitaskseg-3tasks.safetensors"


def busy_processes(sample_seconds: float = 1.0, min_share: float = 0.2) -> List[dict]:
    """Other processes using more than ``min_share`` of a core over a short sample (Linux /proc)."""
    def cpu_times():
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


def machine_state() -> dict:
    """What ran the benchmark, and whether anything else was competing for the CPU."""
    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from MultiTaskSegLib.engine.devices import physical_core_count

    others = busy_processes()
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "physical_cores": physical_core_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "other_busy_processes": others, "cpu_shared": bool(others),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def matmul_flops_per_second(dtype: torch.dtype, size: int = 4096, repeats: int = 3,
                            device: str = "cpu") -> float:
    """Attainable FLOP rate: the best of a few large square matrix products (2 n^3 FLOPs each)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up oneDNN/cuBLAS
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def model_bundle(layers: Optional[int] = None):
    """The shipped model when present (else random weights: speed does not depend on the values)."""
    from MultiTaskSegLib.engine.bundle import load_bundle, make_random_bundle, new_bundle
    from MultiTaskSegLib.engine.network import Architecture

    if layers is not None and layers != 25:
        return new_bundle(arch=Architecture(num_classes=9, n_layers=layers), seed=0), f"random weights, {layers} layers"
    if SHIPPED_MODEL.exists():
        return load_bundle(SHIPPED_MODEL), f"shipped ({SHIPPED_MODEL.name})"
    return make_random_bundle(seed=0), "random weights (shipped model not present)"


def peak_rss_bytes() -> int:
    """This process's peak resident memory (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def run_child(script: Path, arguments: List[str], timeout: float = 900) -> dict:
    """Run ``script --worker ...`` in a fresh interpreter; it prints one JSON object as its last line."""
    completed = subprocess.run([sys.executable, str(script)] + arguments, capture_output=True, text=True,
                               timeout=timeout, cwd=str(ROOT))
    if completed.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(arguments)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
