"""Calibrated probabilities: a temperature and per-class logit offsets fitted on held-out cases and
folded into the network's final layer.

Training balances the classes (paper 3.2: every task, and within a task every class, weighs the
same), so the softmax carries that balanced prior: a pectoral-muscle probability of 0.5 means "as
likely as background if both were equally common", and the precision-recall optimal threshold of a
rare class sits near 1 (0.973 and 0.996 on the shipped model before it was calibrated), leaving the
slider one or two useful steps. Calibration maps logits z to z / T + d and minimises the negative log-likelihood of the
held-out sample voxels (intensity > 0) in their natural class frequencies, every task weighing the
same. Methods:

* "prior": no fit, d_c = log(f_c / f_background) from the class frequencies f among the task's
  sample voxels (the training prior is uniform within a task, so it cancels);
* "offsets": d fitted (T = 1), "bias-only vector scaling";
* "temperature-offsets": T and d fitted.

Which classes get an offset: "thresholded" (the default) or "all" (background stays 0: softmax
ignores a common shift). With "thresholded" the brain labels stay as they were: step 2 of the
labelmap rule (engine/labelmap_rule.py) compares background and the argmax classes only, and neither
a temperature nor an offset of another class changes their order (on the stored uint8 levels two
nearly equal probabilities can tie or untie: a voxel in a thousand on a random model). The result is
folded into the last layer (W / T, b / T + d), so the engine, the labelmap rule and the uint8 levels
stay as they are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..engine.bundle import ModelBundle
from ..engine.classes import ClassInfo
from ..engine.crops import crop_with_zeros
from ..engine.devices import default_precision
from ..engine.errors import InputError
from ..engine.network import TriplanarCNN, crops_logits
from ..engine.prepared_model import inference_model
from ..engine.progress import CancelCheck, ProgressCallback, check_cancel, report
from ..engine.slab_sizing import foreground_box
from .cases import PreparedCase

METHODS = ("prior", "offsets", "temperature-offsets")
DEFAULT_METHOD = "temperature-offsets"
SLAB = 16  # target planes per float-logit pass: a brain slab of 16 planes costs ~1/5 of the whole pass


@dataclass
class LogitSample:
    """Float logits of sample voxels drawn uniformly from held-out cases, with their labels."""

    logits: torch.Tensor   # (N, C) float32
    labels: torch.Tensor   # (N,) int64 bundle class indices
    tasks: np.ndarray      # (N,) the task of each voxel's case
    weights: torch.Tensor  # (N,) float32: each task's voxels sum to 1 / number of tasks
    cases: List[str] = field(default_factory=list)


@dataclass
class Calibration:
    method: str
    classes: str                 # "thresholded" or "all": which classes got an offset
    temperature: float
    offsets: Dict[int, float]    # class index -> logit offset (added after dividing by the temperature)
    nll_before: float            # weighted mean negative log-likelihood of the sample voxels
    nll_after: float
    voxels: int
    cases: List[str] = field(default_factory=list)

    def to_json(self, classes: Sequence[ClassInfo]) -> dict:
        out = asdict(self)
        out["offsets"] = {classes[c].name: round(d, 6) for c, d in sorted(self.offsets.items())}
        return out


class _FloatHead(nn.Module):
    """A folded head run in fp32: logits from reduced-precision features shift probabilities by ~1%."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.float())


def float_logit_model(bundle: ModelBundle, device: torch.device, precision: str) -> TriplanarCNN:
    """The prepared conv stack in ``precision`` with an fp32 head, for ``network.crops_logits``."""
    model = TriplanarCNN.__new__(TriplanarCNN)
    nn.Module.__init__(model)
    model.arch = bundle.model.arch
    model.conv_stack = inference_model(bundle.model, precision, device, channels_last=device.type == "cpu").conv_stack
    model.head = _FloatHead(inference_model(bundle.model, "fp32", device, channels_last=False).head)
    return model


def case_logits(model: nn.Module, case: PreparedCase, voxels: int, rng: np.random.Generator,
                device: torch.device, channels_last: bool) -> tuple:
    """Float logits (n, C) and labels (n,) of at most ``voxels`` sample voxels of ``case``.

    Runs the dense forward over evenly spaced slabs of ``SLAB`` planes (enough of them to hold about
    twice ``voxels`` samples), then draws ``voxels`` of their samples uniformly.
    """
    h = model.arch.halo
    depth = case.image.shape[0]
    starts = [z0 for z0 in range(0, depth, SLAB) if case.mask[z0:z0 + SLAB].any()]
    per_slab = case.mask.sum() / max(1, len(starts))
    wanted = min(len(starts), max(1, math.ceil(2 * voxels / max(1.0, per_slab))))
    chosen = [starts[i] for i in np.unique(np.linspace(0, len(starts) - 1, wanted).round().astype(int))]
    logits, labels = [], []
    with torch.inference_mode():
        for z0 in chosen:
            z1 = min(depth, z0 + SLAB)
            y0, y1, x0, x1 = foreground_box(case.mask[z0:z1])
            crop = crop_with_zeros(case.image, (z0 - h, y0 - h, x0 - h), (z1 - z0 + 2 * h, y1 - y0 + 2 * h, x1 - x0 + 2 * h))
            out = crops_logits(model, torch.from_numpy(crop.astype(np.float32))[None].to(device), 64, channels_last)[0]
            inside = torch.from_numpy(case.mask[z0:z1, y0:y1, x0:x1])
            logits.append(out.permute(0, 2, 3, 1).float().cpu()[inside])
            labels.append(torch.from_numpy(case.labels[z0:z1, y0:y1, x0:x1].astype(np.int64))[inside])
    logits_t, labels_t = torch.cat(logits), torch.cat(labels)
    if logits_t.shape[0] > voxels:
        keep = torch.from_numpy(np.sort(rng.choice(logits_t.shape[0], voxels, replace=False)))
        logits_t, labels_t = logits_t[keep], labels_t[keep]
    return logits_t, labels_t


def sample_logits(bundle: ModelBundle, cases: Sequence[PreparedCase], device: torch.device | str = "cpu",
                  precision: Optional[str] = None, voxels_per_case: int = 200_000, seed: int = 0,
                  progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCheck] = None) -> LogitSample:
    """Float logits of up to ``voxels_per_case`` sample voxels per case, weighted so that each task counts the same."""
    if not cases:
        raise InputError("Calibration needs held-out cases with labels; none were given.")
    device = torch.device(device)
    precision = precision or default_precision(device)
    model = float_logit_model(bundle, device, precision)
    channels_last = device.type == "cpu"
    rng = np.random.default_rng(seed)
    logits, labels, tasks = [], [], []
    for i, case in enumerate(cases):
        check_cancel(cancel)
        report(progress, i / len(cases), f"Calibration logits: {case.case_id}")
        z, y = case_logits(model, case, voxels_per_case, rng, device, channels_last)
        logits.append(z)
        labels.append(y)
        tasks += [case.task] * y.shape[0]
    tasks_array = np.array(tasks)
    task_names, task_of, counts = np.unique(tasks_array, return_inverse=True, return_counts=True)
    weights = torch.from_numpy((1.0 / (counts[task_of] * len(task_names))).astype(np.float32))
    report(progress, 1.0, "Calibration logits")
    return LogitSample(torch.cat(logits), torch.cat(labels), tasks_array, weights, [c.case_id for c in cases])


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                 temperature: torch.Tensor | float = 1.0, offsets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sum over voxels of weight * -log softmax(z / T + d)[label]."""
    z = logits / temperature
    if offsets is not None:
        z = z + offsets
    return -(torch.log_softmax(z, dim=1).gather(1, labels[:, None])[:, 0] * weights).sum()


def _offset_classes(classes: Sequence[ClassInfo], which: str) -> List[int]:
    if which == "thresholded":
        return [c.index for c in classes if c.decision == "threshold"]
    if which == "all":
        return [c.index for c in classes if c.index != 0]
    raise InputError(f"Unknown choice of calibrated classes {which!r}: use 'thresholded' or 'all'.")


def _prior_offsets(sample: LogitSample, classes: Sequence[ClassInfo], chosen: Sequence[int]) -> Dict[int, float]:
    """d_c = log(f_c / f_background) among the sample voxels of the cases of class c's task."""
    labels, weights = sample.labels.numpy(), sample.weights.numpy()
    offsets = {}
    for c in chosen:
        in_task = sample.tasks == classes[c].task
        f_c = weights[in_task & (labels == c)].sum()
        f_0 = weights[in_task & (labels == 0)].sum()
        if f_c > 0 and f_0 > 0:
            offsets[c] = float(np.log(f_c / f_0))
    return offsets


def fit_calibration(sample: LogitSample, classes: Sequence[ClassInfo], method: str = DEFAULT_METHOD,
                    which: str = "thresholded") -> Calibration:
    """The calibration of ``method`` (see module docstring) for ``sample``."""
    if method not in METHODS:
        raise InputError(f"Unknown calibration method {method!r}: use one of {', '.join(METHODS)}.")
    chosen = _offset_classes(classes, which)
    logits, labels, weights = sample.logits.double(), sample.labels, sample.weights.double()
    nll_before = float(weighted_nll(logits, labels, weights))
    index = torch.tensor(chosen, dtype=torch.long)
    if method == "prior":
        offsets = _prior_offsets(sample, classes, chosen)
        temperature = 1.0
    else:
        delta = torch.zeros(len(chosen), dtype=torch.float64, requires_grad=True)
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=method == "temperature-offsets")
        params = [delta] + ([log_t] if log_t.requires_grad else [])
        optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            full = torch.zeros(logits.shape[1], dtype=torch.float64).index_add(0, index, delta)
            loss = weighted_nll(logits, labels, weights, log_t.exp(), full)
            loss.backward()
            return loss

        optimizer.step(closure)
        offsets = {c: float(d) for c, d in zip(chosen, delta.detach())}
        temperature = float(log_t.detach().exp())
    full = torch.zeros(logits.shape[1], dtype=torch.float64)
    for c, d in offsets.items():
        full[c] = d
    nll_after = float(weighted_nll(logits, labels, weights, temperature, full))
    return Calibration(method, which, temperature, offsets, nll_before, nll_after, int(labels.shape[0]), sample.cases)


def fold_into_bundle(bundle: ModelBundle, calibration: Calibration) -> None:
    """Final layer W, b -> W / T, b / T + d, in place; the calibration goes into the provenance."""
    layer = bundle.model.head[-1]
    with torch.no_grad():
        layer.weight.div_(calibration.temperature)
        layer.bias.div_(calibration.temperature)
        for c, d in calibration.offsets.items():
            layer.bias[c] += d
    history = bundle.provenance.setdefault("calibration", [])
    history.append(calibration.to_json(bundle.classes))


def remove_calibrations(bundle: ModelBundle) -> None:
    """Undo every calibration folded into ``bundle`` (in place, newest first), back to the network as
    training left it. Fine-tuning starts from there: training with balanced sampling would otherwise
    relearn the balanced prior on top of a correction, and the next calibration would count it twice."""
    layer = bundle.model.head[-1]
    with torch.no_grad():
        for entry in reversed(bundle.provenance.pop("calibration", [])):
            for name, d in entry["offsets"].items():
                layer.bias[bundle.class_index(name)] -= d
            layer.weight.mul_(entry["temperature"])
            layer.bias.mul_(entry["temperature"])


def calibrate_bundle(bundle: ModelBundle, cases: Sequence[PreparedCase], device: torch.device | str = "cpu",
                     precision: Optional[str] = None, method: str = DEFAULT_METHOD, which: str = "thresholded",
                     voxels_per_case: int = 200_000, seed: int = 0, progress: Optional[ProgressCallback] = None,
                     cancel: Optional[CancelCheck] = None) -> Calibration:
    """Fit a calibration on held-out ``cases`` and fold it into ``bundle`` (in place); returns it.

    Call it after training and before choosing the thresholds (they move with the probabilities).
    """
    sample = sample_logits(bundle, cases, device, precision, voxels_per_case, seed, progress, cancel)
    calibration = fit_calibration(sample, bundle.classes, method, which)
    fold_into_bundle(bundle, calibration)
    return calibration


def calibrate_and_choose_thresholds(bundle: ModelBundle, calibration_cases: Sequence[PreparedCase],
                                    threshold_cases: Sequence[PreparedCase], device: torch.device | str = "cpu",
                                    precision: Optional[str] = None, method: str = DEFAULT_METHOD,
                                    which: str = "thresholded", progress: Optional[ProgressCallback] = None,
                                    cancel: Optional[CancelCheck] = None) -> tuple:
    """Calibrate ``bundle`` in place, then set its default thresholds to the precision-recall optimal
    ones on ``threshold_cases`` (the end of training, or recalibrating a trained model).

    Returns (Calibration, evaluation results of ``evaluate_cases`` on ``threshold_cases``).
    """
    from .evaluation import evaluate_cases

    device = torch.device(device)
    precision = precision or default_precision(device)
    calibration = calibrate_bundle(bundle, calibration_cases, device, precision, method, which, progress=progress,
                                   cancel=cancel)
    results = evaluate_cases(bundle, threshold_cases, device, precision, choose_thresholds=True, cancel=cancel)
    bundle.default_thresholds.update(results["thresholds"])
    return calibration, results
