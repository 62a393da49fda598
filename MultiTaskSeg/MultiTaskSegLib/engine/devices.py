"""Where the network runs and in which precision: the one policy for inference and training.

Devices: "auto" takes the GPU when PyTorch sees one; asking for one that is not there is an error
the user can fix. Precision: reduced where the hardware multiplies it natively, fp32 otherwise
(``default_precision``). CPU threads: one per physical core (``configure_device``).
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import List, Tuple

import torch

from .environment import thread_count
from .errors import InputError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """Autocast to the precision's dtype ("fp32": no autocast); shared by inference and training."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def concrete_device(device: torch.device | str) -> torch.device:
    """``device`` with its index: tensors live on "cuda:0", and torch.device("cuda") != "cuda:0"."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def fast_cpu_precision() -> str:
    """bf16 where the CPU multiplies bf16 natively (AVX512-BF16 or AMX flags), else fp32 (bf16 would be emulated)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:  # not Linux: stay on the safe side
        return "fp32"
    return "bf16" if "avx512_bf16" in flags or "amx_bf16" in flags else "fp32"


def available_devices() -> List[Tuple[str, str]]:
    """(name, description) of each device this machine can run the network on."""
    devices = [("cpu", f"CPU ({torch.get_num_threads()} threads)")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            devices.append((f"cuda:{i}" if i else "cuda", f"GPU {i}: {torch.cuda.get_device_name(i)}"))
    return devices


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" picks the GPU when there is one; "cpu", "cuda" or "cuda:N" name one. A GPU the
    machine lacks, or any other device (e.g. "mps": the engine runs on CPUs and NVIDIA GPUs
    only), is an InputError saying what to use."""
    if device is None or str(device).strip().lower() in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d{1,4}))?", text)
    if match is None:
        raise InputError(f"Unknown or unsupported device {device!r}: use auto, cpu, cuda or cuda:N "
                         f"(MultiTaskSeg runs on CPUs and NVIDIA GPUs).")
    if not torch.cuda.is_available():
        raise InputError("A GPU (cuda) was asked for but PyTorch finds none; use --device cpu or auto.")
    count = torch.cuda.device_count()
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise InputError(f"GPU {text} was asked for but this machine has {count} GPU(s), cuda:0.."
                         f"cuda:{count - 1}; use one of those, or --device auto.")
    return torch.device(text)


def default_precision(device: torch.device, training: bool = False) -> str:
    """Reduced precision where the hardware runs it fast; fp32 otherwise. Inference and training
    share the rule; they differ only on GPUs, where training's gradients need bf16's range.

    CPUs: bf16 where the instruction set multiplies it natively (AVX512-BF16, AMX), else fp32 (bf16
    would be emulated, slower than fp32); inference labels then agree with fp32 on >= 99.8% of
    voxels, the others near-ties within 2/255 (Testing/test_speed_paths.py). GPUs: inference in fp16
    (more mantissa than bf16, and it runs on older cards too); training in bf16 where the GPU has it,
    so no loss scaling is needed, else fp16 with a gradient scaler.
    """
    if device.type == "cuda":
        if training and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16"
    return fast_cpu_precision()


def physical_core_count() -> int:
    """Physical cores this process may run on: more threads than cores (SMT siblings) slow convs down."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/proc/cpuinfo") as f:
            cores = set()
            physical = core = None
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                    cores.add((physical, core))
        if cores:
            return max(1, min(allowed, len(cores)))
    except OSError:
        pass
    return max(1, allowed)


def configure_device(device: torch.device) -> None:
    """Process-wide settings for speed: one thread per physical core on CPUs.

    GPUs: cuDNN's autotuning (``cudnn.benchmark``) is left as it is (off unless the caller turned it
    on). On an H100 it spent 9-12 s searching kernels on the first run of a brain whose conv stack
    then took 0.1 s, and every volume brings new plane shapes (its foreground boxes), so each would
    pay the search again (benchmarks/bench_gpu.py measures the first run with and without it).

    Leaves the thread count alone when the user set OMP_NUM_THREADS or MULTITASKSEG_THREADS says
    otherwise.
    """
    if device.type == "cuda":
        return
    threads = thread_count()  # validated: a typo is an InputError, not a traceback
    if threads:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(physical_core_count())
