"""The conv stack compiled by OpenVINO, for CPUs: optional, the default on CPUs where the ``openvino``
package is installed (``choose_backend``); PyTorch elsewhere, and the reference the tests hold it to.

Why: the 25 conv + ELU layers are nearly all of a CPU segmentation's time, and PyTorch runs each
ELU as its own pass over the activations (36-39% of the conv stack's time here), since it cannot
fuse ELU into oneDNN's convolutions. OpenVINO compiles the same layers with the ELU as a post-op of
each convolution, on the same oneDNN kernels.

The graph is built here from the folded weights of ``prepared_model`` (opset calls, no export, no
converter): 25 x (convolution, bias, ELU). In bf16 (CPUs that multiply it natively) the first
layer keeps fp32 accuracy as ``FullPrecisionInput`` does in PyTorch, by a split the bf16 kernels
compute exactly: the input x = hi + lo with hi = bf16(x) and lo = bf16(x - hi), the weights
W = Whi + Wlo likewise, and the layer becomes a 3-channel convolution of (hi, lo, hi) with
(Whi, Whi, Wlo) accumulated in fp32 (error ~2^-16 of x * W instead of 2^-8); it costs 3/32 of one
other layer. Plane sizes vary with every volume and foreground box: the model has dynamic height,
width and batch, compiled once (measured as fast per call as shapes compiled one by one).
"""

from __future__ import annotations

import functools
import sys
from typing import Optional

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .network import TriplanarCNN
from .prepared_model import FullPrecisionInput, inference_model


# ``import openvino`` loads its usage telemetry (on by default, no consent asked), which sends from
# a forked child that, offline (hospital networks), outlives the process. Clinical images are
# processed here: nothing phones home. OpenVINO falls back to its no-op stub when this is None.
sys.modules.setdefault("openvino_telemetry", None)


@functools.lru_cache(maxsize=1)
def openvino_available() -> bool:
    """True when the ``openvino`` package imports (it is optional: a broken install means PyTorch)."""
    try:
        import openvino  # noqa: F401
    except Exception:  # ImportError, or a missing shared library (OSError, RuntimeError)
        return False
    return True


def _bf16_rounded(values: np.ndarray) -> np.ndarray:
    """float32 ``values`` rounded to the nearest bf16 (ties to even), as float32: torch's
    ``.bfloat16().float()`` in integer operations on the bits (finite values)."""
    bits = values.view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)).view(np.float32)


def _bf16_split(values: np.ndarray):
    """(hi, lo) in bf16-representable float32 with hi + lo = values to ~2^-16 relative."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    hi = _bf16_rounded(values)
    return hi, _bf16_rounded(values - hi)


def _conv_layers(conv_stack: nn.Sequential):
    """(weight, bias, ELU alpha) per layer of a folded conv stack, in fp32."""
    layers, modules = [], list(conv_stack)
    for i, module in enumerate(modules):
        conv = module.conv if isinstance(module, FullPrecisionInput) else module
        if isinstance(conv, nn.Conv2d):
            following = modules[i + 1] if i + 1 < len(modules) else None
            alpha = following.alpha if isinstance(following, nn.ELU) else None
            layers.append((conv.weight.detach().float().cpu(), conv.bias.detach().float().cpu(), alpha))
    return layers


def build_conv_stack_model(model: TriplanarCNN, precision: str):
    """The OpenVINO model of ``model``'s conv stack: (N, 1 or 3, H, W) f32 in, (N, H', W', F) out."""
    import openvino as ov
    import openvino.opset15 as ops
    from openvino.preprocess import PrePostProcessor

    split = precision == "bf16"
    planes = ops.parameter(ov.PartialShape([-1, 3 if split else 1, -1, -1]), ov.Type.f32, name="planes")
    out = planes
    for number, (weight, bias, alpha) in enumerate(_conv_layers(inference_model(model, "fp32", "cpu").conv_stack)):
        weight = weight.numpy()
        if number == 0 and split:
            hi, lo = _bf16_split(weight)
            weight = np.concatenate([hi, hi, lo], axis=1)  # against the input channels (hi, lo, hi)
        out = ops.convolution(out, ops.constant(weight), [1, 1], [0, 0], [0, 0], [1, 1])
        out = ops.add(out, ops.constant(bias.numpy().reshape(1, -1, 1, 1)))
        if alpha is not None:
            out = ops.elu(out, float(alpha))
    graph = PrePostProcessor(ov.Model([out], [planes], "triplanar_conv_stack"))
    # channels-last output in the compute dtype: what the slab loop copies into its features as is
    graph.output().tensor().set_element_type(ov.Type.bf16 if split else ov.Type.f32).set_layout(ov.Layout("NHWC"))
    graph.output().model().set_layout(ov.Layout("NCHW"))
    return graph.build()


class OpenVINOConvStack(nn.Module):
    """A drop-in for a prepared model's ``conv_stack`` that runs in OpenVINO on the CPU.

    forward: (N, 1, H, W) float32 planes -> (N, F, H - 2L, W - 2L) features in the compute dtype,
    channels-last (a permuted view of an NHWC tensor), as the PyTorch conv stack returns them.
    """

    def __init__(self, model: TriplanarCNN, precision: str = "bf16", threads: Optional[int] = None):
        import openvino as ov

        super().__init__()
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"OpenVINO runs the conv stack in bf16 or fp32, not {precision}")
        self.precision = precision
        self.n_layers, self.n_filters = model.arch.n_layers, model.arch.n_filters
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
        self.compiled = ov.Core().compile_model(build_conv_stack_model(model, precision), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._output_type = ov.Type.bf16 if precision == "bf16" else ov.Type.f32

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        import openvino as ov

        # numpy, not torch, for these few elementwise passes over one channel: between OpenVINO's
        # calls torch's thread pool would have to wake for each (measured: 11% of a loaded run)
        planes = planes.float().numpy()
        if self.precision == "bf16":
            hi, lo = _bf16_split(planes)
            planes = np.concatenate([hi, lo, hi], axis=1)
        planes = np.ascontiguousarray(planes)
        n, _, height, width = planes.shape
        shrink = 2 * self.n_layers
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        out = torch.empty((n, height - shrink, width - shrink, self.n_filters), dtype=dtype)
        # both tensors share memory with torch's: OpenVINO reads and writes them in place
        host_out = out.view(torch.int16).numpy() if self.precision == "bf16" else out.numpy()
        self.request.set_input_tensor(ov.Tensor(planes, shared_memory=True))
        self.request.set_output_tensor(ov.Tensor(host_out, list(out.shape), self._output_type))
        self.request.infer()
        return out.permute(0, 3, 1, 2)


def with_openvino_conv_stack(prepared: TriplanarCNN, threads: Optional[int] = None) -> TriplanarCNN:
    """A copy of a CPU model prepared by ``inference_model`` whose conv stack runs in OpenVINO,
    compiled in the model's precision (bf16 or fp32); head and everything else stay PyTorch's."""
    precision = prepared.inference_precision
    copy = TriplanarCNN.__new__(TriplanarCNN)
    nn.Module.__init__(copy)
    copy.arch = prepared.arch
    copy.head = prepared.head
    copy.inference_precision = precision
    copy.conv_stack = OpenVINOConvStack(prepared, precision, threads)
    copy.backend = "openvino"
    return copy


BACKENDS = ("auto", "torch", "openvino")
# Precisions in which OpenVINO beat PyTorch on this project's benchmark machine (2 cores, AVX-512
# with bf16, no AMX; benchmarks/results/openvino.json): the conv stack 1.6x faster in bf16 and 2.2x
# in fp32, the brain end to end 1.8x in bf16 (3-5x while other processes share the cores: PyTorch's
# many short parallel ops suffer most). "auto" takes it in these.
FASTER_IN = ("bf16", "fp32")


def choose_backend(requested: str, device: torch.device, precision: str) -> str:
    """"torch" or "openvino" for the conv stack: the one policy. "auto" takes OpenVINO on CPUs where
    it is installed and was measured faster in ``precision``; asking for it elsewhere is an error
    the user can fix."""
    if requested not in BACKENDS:
        raise InputError(f"Unknown backend {requested!r}: use one of {', '.join(BACKENDS)}.")
    if requested == "auto":
        faster = device.type == "cpu" and precision in FASTER_IN and openvino_available()
        return "openvino" if faster else "torch"
    if requested == "openvino":
        if device.type != "cpu" or precision not in ("bf16", "fp32"):
            raise InputError(f"The OpenVINO backend runs on the CPU in bf16 or fp32, not on {device} in "
                             f"{precision}; use the torch backend there.")
        if not openvino_available():
            raise InputError("The OpenVINO backend needs the openvino package: pip install openvino "
                             "(or use the torch backend).")
    return requested
