"""Multi-task training of the triplanar CNN (paper 3.2) on dense blocks, single- or multi-GPU.

Reads top to bottom: configuration; data (nnU-Net folders -> prepared cases); the model and
Adam; the loop (balanced dense blocks -> weighted cross-entropy -> step), with periodic
validation, checkpoints and a learning-curve log; at the end the bundle, with the precision-recall
optimal thresholds of the thresholded classes, and an evaluation report.

Several GPUs (or CPU processes): run the same command under ``torchrun --nproc_per_node N``;
each process draws its own blocks and DistributedDataParallel averages the gradients.
Checkpoints are safetensors plus JSON, like bundles: nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from ..engine import metrics
from ..engine.bundle import ModelBundle, load_bundle, new_bundle
from ..engine.classes import DEFAULT_CLASSES, DEFAULT_TASKS
from ..engine.devices import autocast, default_precision, resolve_device
from ..engine.errors import InputError
from ..engine.network import Architecture, crops_logits
from ..engine.progress import CancelCheck, ProgressCallback, check_cancel, report
from .calibration import calibrate_bundle, remove_calibrations
from .cases import group_by_task, prepare_dataset
from .datasets import TaskDataset, load_dataset
from .evaluation import evaluate_cases, write_report
from .sampling import BatchStream, validation_blocks, weighted_batches


CALIBRATION_CASES_PER_TASK = 4  # enough for class frequencies; the float pass is one slab set per case


@dataclass
class TrainConfig:
    datasets: List[str]
    output: str                      # the bundle to write (.safetensors)
    work_dir: str                    # checkpoints, log, cache, report
    tasks: Optional[List[str]] = None  # restrict to these tasks (experiments); default: the datasets' tasks
    steps: int = 2000                # optimiser steps; each draws blocks_per_task blocks of every task
    blocks_per_task: int = 2
    block: int = 24                  # target voxels per block side
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    validate_every: int = 100
    validation_block: int = 32       # side of the fixed held-out blocks validated periodically
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"          # "fp32", "bf16", "fp16"; auto: devices.default_precision
    workers: Optional[int] = None    # batch-sampling processes; None: 0 on CPU, up to 8 beside a GPU
    augmentation: bool = True
    time_limit_minutes: Optional[float] = None  # stop cleanly (checkpoint, bundle) after this long
    evaluate_at_end: bool = True
    n_layers: int = 25               # the paper's depth; tests and quick experiments may use fewer
    init_from: Optional[str] = None  # fine-tune: start from this bundle's weights (same classes and layers)
    # calibration.METHODS entry fitted on training cases at the end, before the thresholds are chosen;
    # "prior" by default: it corrects the balanced sampling from label counts alone, so it cannot
    # overfit cases the network has seen (the fitted methods want held-out cases: calibration.py).
    calibration: Optional[str] = "prior"


@dataclass
class TrainState:
    step: int = 0
    history: List[dict] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0


class BlockNet(nn.Module):
    """Wraps the network so that DistributedDataParallel sees one forward call per step."""

    def __init__(self, model: nn.Module, channels_last: bool):
        super().__init__()
        self.model = model
        self.channels_last = channels_last

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return crops_logits(self.model, crops, planes_per_batch=4096, channels_last=self.channels_last)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _setup_distributed(device: str) -> torch.device:
    """Join the process group when started by torchrun (WORLD_SIZE set); pick this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _distributed():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local_rank)
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    return resolve_device(device)


def _workers(config: TrainConfig, device: torch.device) -> int:
    """On a CPU the cores are busy computing the network, so batches are drawn in between; beside
    a GPU, sampling and augmentation would leave it idle most of the time, so workers draw ahead."""
    if config.workers is not None:
        return max(0, config.workers)
    if device.type == "cpu":
        return 0
    return max(1, min(8, len(os.sched_getaffinity(0)) - 2))


def training_batches(config: TrainConfig, cases_by_task, task_classes, modalities, halo: int,
                     rng: np.random.Generator, device: torch.device, first_step: int, rank: int) -> Iterator:
    """(crops, labels, mask, weights) for every step: drawn here from ``rng`` (reproducible across
    resumes) without workers, else by DataLoader workers seeded by seed, rank and the first step."""
    workers = _workers(config, device)
    if workers == 0:
        yield from weighted_batches(cases_by_task, task_classes, modalities, config.blocks_per_task, config.block,
                                    halo, rng, config.augmentation)
    else:
        stream = BatchStream(cases_by_task, task_classes, modalities, config.blocks_per_task, config.block, halo,
                             [config.seed, rank, first_step], config.augmentation)
        yield from torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4,
                                               pin_memory=device.type == "cuda")


def load_training_data(datasets: Sequence[TaskDataset], work_dir: str, class_names: Sequence[str],
                       normalization: dict, target_spacing: Optional[float]):
    """Prepared training and test cases of every dataset, grouped by task, and each task's modality."""
    cache = Path(work_dir) / "cache"
    train, test, modalities = [], [], {}
    for dataset in datasets:
        modalities[dataset.task] = dataset.modality
        train += prepare_dataset(dataset, class_names, normalization, "training", target_spacing, cache)
        test += prepare_dataset(dataset, class_names, normalization, "test", target_spacing, cache)
    return group_by_task(train), group_by_task(test), modalities


def select_datasets(config: TrainConfig) -> List[TaskDataset]:
    """The dataset folders of the tasks to train (all given, or those of ``config.tasks``)."""
    datasets = [load_dataset(folder) for folder in config.datasets]
    if config.tasks:
        unknown = set(config.tasks) - {d.task for d in datasets}
        if unknown:
            raise InputError(f"No dataset for task(s) {sorted(unknown)}: the datasets given hold "
                             f"{sorted({d.task for d in datasets})}.")
        datasets = [d for d in datasets if d.task in config.tasks]
    if not datasets:
        raise InputError("No training datasets given: pass nnU-Net dataset folders with imagesTr/ and labelsTr/ "
                         "(see 'multitaskseg make-data').")
    return datasets


def start_from(bundle: ModelBundle, path: str) -> None:
    """Fine-tuning: copy the weights of the bundle at ``path`` into ``bundle`` (same classes and
    architecture), so a run adapts a trained model to new data instead of starting from random."""
    source = load_bundle(path)
    if source.architecture != bundle.architecture or [c.name for c in source.classes] != \
            [c.name for c in bundle.classes]:
        raise InputError(f"{path} cannot be fine-tuned on these datasets: it has {source.architecture.n_layers} layers "
                         f"and classes {[c.name for c in source.classes]}, the run needs "
                         f"{bundle.architecture.n_layers} layers and {[c.name for c in bundle.classes]}.")
    remove_calibrations(source)
    bundle.model.load_state_dict(source.model.state_dict())
    bundle.provenance["training"]["initialised_from"] = {"model": str(path),
                                                         "created": source.provenance.get("created")}


def learning_rate(config: TrainConfig, step: int, elapsed_fraction: float = 0.0) -> float:
    """Linear warm-up over the first 5% of steps (at most 200), then cosine decay to 5% of the peak.

    With a time limit, the decay follows whichever is further along, steps or time, so a run cut
    short by its time limit still ends with a small learning rate (and a generous --steps does not
    stretch the warm-up beyond what Adam needs).
    """
    warmup = max(1, min(200, config.steps // 20))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = max((step - warmup) / max(1, config.steps - warmup), elapsed_fraction)
    return config.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_checkpoint(path: Path, bundle: ModelBundle, optimizer: torch.optim.Optimizer, state: TrainState,
                    rng: np.random.Generator, config: TrainConfig) -> None:
    """Model, Adam moments, step and random states, in safetensors + JSON (never pickle)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    adam_steps = {}
    for i, p in enumerate(bundle.model.parameters()):
        slot = optimizer.state.get(p)
        if slot:
            tensors[f"adam.{i}.exp_avg"] = slot["exp_avg"].detach().cpu().contiguous()
            tensors[f"adam.{i}.exp_avg_sq"] = slot["exp_avg_sq"].detach().cpu().contiguous()
            adam_steps[i] = float(slot["step"])
    tensors["torch_rng"] = torch.get_rng_state()
    meta = {"state": asdict(state), "adam_steps": adam_steps, "numpy_rng": rng.bit_generator.state,
            "config": asdict(config)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"multitaskseg_checkpoint": json.dumps(meta)})
    os.replace(tmp, path)


def load_checkpoint(path: Path, bundle: ModelBundle, optimizer: torch.optim.Optimizer,
                    rng: np.random.Generator) -> TrainState:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["multitaskseg_checkpoint"])
    tensors = load_file(str(path))
    bundle.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    device = next(bundle.model.parameters()).device
    for i, p in enumerate(bundle.model.parameters()):
        if f"adam.{i}.exp_avg" in tensors:
            optimizer.state[p] = {"step": torch.tensor(meta["adam_steps"][str(i)]),
                                  "exp_avg": tensors[f"adam.{i}.exp_avg"].to(device),
                                  "exp_avg_sq": tensors[f"adam.{i}.exp_avg_sq"].to(device)}
    torch.set_rng_state(tensors["torch_rng"])
    rng.bit_generator.state = meta["numpy_rng"]
    return TrainState(**meta["state"])


def validate(model: nn.Module, blocks: Dict[str, object], task_classes: Dict[str, Sequence[int]],
             device: torch.device, precision: str) -> Dict[str, float]:
    """Dice per class on fixed held-out blocks, labels by highest probability (cheap, periodic)."""
    model.eval()
    dice = {}
    with torch.inference_mode(), autocast(device, precision):
        for task, batch in blocks.items():
            logits = crops_logits(model, batch.crops.to(device), planes_per_batch=4096)
            predicted = logits.float().argmax(dim=2).cpu()
            samples = batch.mask.numpy()
            for c in task_classes[task]:
                dice[str(c)] = metrics.dice((predicted == c).numpy() & samples, (batch.labels == c).numpy() & samples)
    model.train()
    return dice


def plot_learning_curves(history: Sequence[dict], class_names: Sequence[str], path: Path, title: str = "") -> None:
    """Validation Dice per class against steps, one panel per task (like the paper's Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in history if "dice" in h]
    if not rows:
        return
    classes = sorted({int(c) for h in rows for c in h["dice"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for c in classes:
        steps = [h["step"] for h in rows if str(c) in h["dice"]]
        axes[0].plot(steps, [h["dice"][str(c)] for h in rows if str(c) in h["dice"]], label=class_names[c])
    axes[0].set(xlabel="step", ylabel="validation Dice", ylim=(0, 1), title="Dice per class (held-out blocks)")
    axes[0].legend(fontsize=7)
    loss_rows = [h for h in history if "loss" in h]
    axes[1].plot([h["step"] for h in loss_rows], [h["loss"] for h in loss_rows])
    axes[1].set(xlabel="step", ylabel="training loss", yscale="log", title="Training loss")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train(config: TrainConfig, progress: Optional[ProgressCallback] = None,
          cancel: Optional[CancelCheck] = None) -> Optional[ModelBundle]:
    """Train per the config; returns the bundle (rank 0) after writing it, its report and curves."""
    device = _setup_distributed(config.device)
    rank, world = _rank(), (dist.get_world_size() if _distributed() else 1)
    precision = config.precision if config.precision != "auto" else default_precision(device, training=True)
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed + rank)
    rng = np.random.default_rng(config.seed + 7919 * rank)

    datasets = select_datasets(config)
    task_names = {d.task for d in datasets}
    tasks = [t for t in DEFAULT_TASKS if t.name in task_names]
    classes = [c for c in DEFAULT_CLASSES if c.task is None or c.task in task_names]
    classes = [dataclasses.replace(c, index=i) for i, c in enumerate(classes)]
    bundle = new_bundle(classes, tasks, seed=config.seed, arch=Architecture(len(classes), n_layers=config.n_layers),
                        provenance={"training": {k: v for k, v in asdict(config).items() if k != "work_dir"}})
    if config.init_from:
        start_from(bundle, config.init_from)
    class_names = [c.name for c in bundle.classes]
    task_classes = {t.name: [bundle.class_index(n) for n in t.classes] for t in tasks}
    report(progress, 0.0, "Preparing data")
    train_cases, test_cases, modalities = load_training_data(datasets, config.work_dir, class_names,
                                                             bundle.normalization, bundle.target_spacing_mm)
    missing = task_names - set(train_cases)
    if missing:
        raise InputError(f"The datasets of task(s) {sorted(missing)} have no training cases in imagesTr/.")
    val_blocks = validation_blocks(test_cases or train_cases, task_classes, config.validation_block,
                                   bundle.architecture.halo)

    model = bundle.model.to(device).train()
    channels_last = precision != "fp32"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every step has the same shapes: pick the fastest kernels once
    net: nn.Module = BlockNet(model, channels_last)
    if _distributed():
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    checkpoint = work / "checkpoint.safetensors"
    state = TrainState()
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, bundle, optimizer, rng)
        if rank == 0:
            print(f"Resuming from {checkpoint} at step {state.step}", flush=True)
    log_path = work / "log.jsonl"
    started = time.time() - state.seconds
    session_start, deadline = time.time(), None
    limit = 60 * config.time_limit_minutes if config.time_limit_minutes else None

    batches = training_batches(config, {t: train_cases[t] for t in task_classes}, task_classes, modalities,
                               bundle.architecture.halo, rng, device, state.step, rank)
    while state.step < config.steps:
        check_cancel(cancel)
        elapsed = (time.time() - session_start) / (deadline - session_start) if deadline else 0.0
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, state.step, elapsed)
        t0 = time.time()
        crops, labels, mask, weights = next(batches)
        with autocast(device, precision):
            logits = net(crops.to(device, non_blocking=True))  # (n, z, C, y, x)
        per_voxel = nn.functional.cross_entropy(logits.float().permute(0, 2, 1, 3, 4),
                                                labels.to(device, non_blocking=True), reduction="none")
        loss = (per_voxel * weights.to(device, non_blocking=True)).sum()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        state.step += 1
        samples = int(mask.sum()) * world
        state.samples += samples
        state.seconds = time.time() - started
        entry = {"step": state.step, "loss": float(loss.detach()), "lr": optimizer.param_groups[0]["lr"],
                 "samples_per_second": samples / max(1e-9, time.time() - t0)}
        if limit is not None and deadline is None:
            # the clock starts after the first step: its one-off costs (cuDNN's kernel search, starting
            # the batch workers) take tens of seconds on a GPU and cut the first of several runs short
            session_start = time.time()
            deadline = session_start + limit
        last = state.step == config.steps or (deadline is not None and time.time() > deadline)
        if rank == 0 and (state.step % config.validate_every == 0 or last):
            entry["dice"] = validate(model, val_blocks, task_classes, device, precision)
        state.history.append(entry)
        if rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
            if state.step % config.checkpoint_every == 0 or last:
                save_checkpoint(checkpoint, bundle, optimizer, state, rng, config)
        report(progress, state.step / config.steps,
               f"loss {entry['loss']:.3f}, {entry['samples_per_second']:.0f} samples/s")
        if last:
            break
    batches.close()  # ends the DataLoader's workers now rather than at garbage collection

    if _distributed():
        dist.barrier()
    if rank != 0:
        return None
    model.eval()
    bundle.provenance["training"].update({"steps_done": state.step, "seconds": round(state.seconds, 1),
                                          "voxel_samples": state.samples, "processes": world,
                                          "device": str(device), "precision": precision})
    if device.type == "cuda":  # which GPU, for anyone comparing training times later
        bundle.provenance["training"]["device_name"] = torch.cuda.get_device_name(device)
    plot_learning_curves(state.history, class_names, work / "learning_curve.png", "MultiTaskSeg training")
    if config.calibration and any(c.decision == "threshold" for c in bundle.classes):
        report(progress, 1.0, "Calibrating the probabilities")
        calibrate_bundle(bundle, [c for cs in train_cases.values() for c in cs[:CALIBRATION_CASES_PER_TASK]],
                         device, precision, method=config.calibration, seed=config.seed)
    if config.evaluate_at_end and test_cases:
        report(progress, 1.0, "Evaluating on held-out cases")
        results = evaluate_cases(bundle, [c for cs in test_cases.values() for c in cs], device, precision,
                                 choose_thresholds=True)
        bundle.default_thresholds.update(results["thresholds"])
        bundle.provenance["evaluation"] = results["summary"]
        write_report(results, bundle, work / "report")
    bundle.save(config.output, overwrite=True)
    return bundle
