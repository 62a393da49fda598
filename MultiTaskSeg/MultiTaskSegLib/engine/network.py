"""The triplanar CNN of Moeskops et al. 2017, section 3.1.

For each voxel, three orthogonal 51x51 patches (axial, coronal, sagittal) go through ONE shared
stack of 25 unpadded 3x3 convolutions with 32 kernels each (51 - 2*25 = 1, so each patch becomes a
32-feature vector), no subsampling. The 3 x 32 = 96 features go through two fully connected
layers of 192 nodes and a softmax layer, all implemented as 1x1 convolutions so that whole slices
can be processed at once. Batch normalisation on every layer but the output,
exponential linear units everywhere, dropout on the fully connected layers.

The convolutions have no bias: the batch normalisation that follows each one has its own shift.

Below the network, its two formulations on volumes:

* the reference dense forward (``crops_logits``): the conv stack has 25 unpadded 3x3 layers, so run
  on a plane of (H + 50) x (W + 50) voxels it yields the features of all H x W centre voxels at
  once, exactly those each voxel's own 51x51 patch would give. For a block of target voxels it runs
  the axial, coronal and sagittal planes over the block plus 25 voxels of context, brings the three
  feature maps into the same (z, y, x) order and applies the head. Training and validation use it;
  ``slab_loop`` runs the same computation faster on a prepared copy of the network;
* the paper's per-voxel patch formulation (``patch_logits``, three 51x51 patches per voxel): the
  reference the dense paths are tested against, and the baseline of the benchmarks.

Outside the volume counts as intensity 0 (zero padding), in both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Tuple

import numpy as np
import torch
from torch import nn

PLANES = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class Architecture:
    """Hyper-parameters of the network; stored in every model bundle."""

    num_classes: int = 9
    n_layers: int = 25
    n_filters: int = 32
    n_hidden: int = 192
    dropout: float = 0.5

    @property
    def patch_size(self) -> int:
        """Side of the input patch that the conv stack reduces to exactly one voxel."""
        return 2 * self.n_layers + 1

    @property
    def halo(self) -> int:
        """Voxels of context needed on each side of a target voxel (25 in the paper)."""
        return self.n_layers

    def to_json(self) -> dict:
        return {"name": "triplanar-cnn", **asdict(self), "patch_size": self.patch_size}

    @classmethod
    def from_json(cls, data: dict) -> "Architecture":
        fields = ("num_classes", "n_layers", "n_filters", "n_hidden", "dropout")
        return cls(**{k: data[k] for k in fields if k in data})


class ConvStack(nn.Sequential):
    """The shared feature extractor: n_layers x (3x3 valid conv, batch norm, ELU)."""

    def __init__(self, arch: Architecture):
        layers = []
        channels = 1
        for _ in range(arch.n_layers):
            layers += [
                nn.Conv2d(channels, arch.n_filters, kernel_size=3, bias=False),
                nn.BatchNorm2d(arch.n_filters),
                nn.ELU(inplace=True),
            ]
            channels = arch.n_filters
        super().__init__(*layers)


class Head(nn.Sequential):
    """Two fully connected layers and the output layer, as 1x1 convolutions over feature maps."""

    def __init__(self, arch: Architecture):
        features = len(PLANES) * arch.n_filters
        super().__init__(
            nn.Conv2d(features, arch.n_hidden, kernel_size=1, bias=False),
            nn.BatchNorm2d(arch.n_hidden),
            nn.ELU(inplace=True),
            nn.Dropout(arch.dropout),
            nn.Conv2d(arch.n_hidden, arch.n_hidden, kernel_size=1, bias=False),
            nn.BatchNorm2d(arch.n_hidden),
            nn.ELU(inplace=True),
            nn.Dropout(arch.dropout),
            nn.Conv2d(arch.n_hidden, arch.num_classes, kernel_size=1),
        )


class TriplanarCNN(nn.Module):
    """One network for all tasks; outputs logits over the bundle's classes (softmax outside).

    ``forward`` takes three stacks of 2D planes, one per orientation, each (B, 1, H + 2*halo, W + 2*halo),
    and returns logits (B, num_classes, H, W): with 51x51 patches that is the paper's per-voxel
    classifier, with larger planes it is the same classifier applied densely (all three inputs
    must then map onto the same B x H x W target voxels; ``crops_logits`` arranges that).
    """

    def __init__(self, arch: Architecture = Architecture()):
        super().__init__()
        self.arch = arch
        self.conv_stack = ConvStack(arch)
        self.head = Head(arch)

    def features(self, planes: torch.Tensor) -> torch.Tensor:
        """Conv-stack features of a batch of 2D planes: (B, 1, H, W) -> (B, 32, H - 50, W - 50)."""
        return self.conv_stack(planes)

    def classify(self, axial: torch.Tensor, coronal: torch.Tensor, sagittal: torch.Tensor) -> torch.Tensor:
        """Logits from the three planes' features, each (B, 32, H, W) for the same target voxels."""
        return self.head(torch.cat([axial, coronal, sagittal], dim=1))

    def forward(self, axial: torch.Tensor, coronal: torch.Tensor, sagittal: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(axial), self.features(coronal), self.features(sagittal))


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (batch-norm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------------
# The reference dense forward and the per-voxel patch formulation
# --------------------------------------------------------------------------------------------------

def pad_volume(volume: torch.Tensor, halo: int) -> torch.Tensor:
    """Zero-pad a (Z, Y, X) tensor by ``halo`` on every side: outside the volume is intensity 0."""
    return torch.nn.functional.pad(volume[None, None], (halo,) * 6)[0, 0]


def _stack_features(model: TriplanarCNN, planes: torch.Tensor, batch: int, channels_last: bool) -> torch.Tensor:
    """Conv-stack features of (B, H, W) planes, in sub-batches so activations stay bounded."""
    outputs = []
    for start in range(0, planes.shape[0], batch):
        chunk = planes[start:start + batch, None]
        if channels_last:
            chunk = chunk.contiguous(memory_format=torch.channels_last)
        outputs.append(model.features(chunk))
    return torch.cat(outputs, dim=0)


def crops_logits(model: TriplanarCNN, crops: torch.Tensor, planes_per_batch: int = 64,
                 channels_last: bool = False) -> torch.Tensor:
    """Logits (n, dz, C, dy, dx) of the target voxels of each crop (n, dz+2h, dy+2h, dx+2h).

    Each crop holds its target block plus the model's halo h (25) of context on every side; the
    three orientations' planes of all crops go through the shared conv stack together.
    """
    h = model.arch.halo
    n, dz, dy, dx = crops.shape[0], crops.shape[1] - 2 * h, crops.shape[2] - 2 * h, crops.shape[3] - 2 * h
    axial = crops[:, h:h + dz].reshape(n * dz, dy + 2 * h, dx + 2 * h)
    coronal = crops[:, :, h:h + dy].permute(0, 2, 1, 3).reshape(n * dy, dz + 2 * h, dx + 2 * h)
    sagittal = crops[:, :, :, h:h + dx].permute(0, 3, 1, 2).reshape(n * dx, dz + 2 * h, dy + 2 * h)
    f = model.arch.n_filters
    f_axial = _stack_features(model, axial, planes_per_batch, channels_last).reshape(n, dz, f, dy, dx)
    # coronal features are (n, y, F, z, x) and sagittal (n, x, F, z, y): bring both to (n, z, F, y, x)
    f_coronal = _stack_features(model, coronal, planes_per_batch, channels_last).reshape(n, dy, f, dz, dx)
    f_coronal = f_coronal.permute(0, 3, 2, 1, 4)
    f_sagittal = _stack_features(model, sagittal, planes_per_batch, channels_last).reshape(n, dx, f, dz, dy)
    f_sagittal = f_sagittal.permute(0, 3, 2, 4, 1)
    logits = model.classify(f_axial.reshape(n * dz, f, dy, dx), f_coronal.reshape(n * dz, f, dy, dx),
                            f_sagittal.reshape(n * dz, f, dy, dx))
    return logits.reshape(n, dz, -1, dy, dx)


def block_logits(model: TriplanarCNN, padded: torch.Tensor, box: Tuple[int, int, int, int, int, int], planes_per_batch: int = 64,
                 channels_last: bool = False) -> torch.Tensor:
    """Logits (z1-z0, C, y1-y0, x1-x0) for the target voxels in ``box`` of a zero-padded volume.

    ``padded`` is the volume padded by the model's halo (see ``pad_volume``); ``box`` is in the
    coordinates of the unpadded volume.
    """
    h2 = 2 * model.arch.halo
    z0, z1, y0, y1, x0, x1 = box
    crop = padded[z0:z1 + h2, y0:y1 + h2, x0:x1 + h2]
    return crops_logits(model, crop[None], planes_per_batch, channels_last)[0]


def dense_logits(model: TriplanarCNN, volume: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Float32 logits (C, Z, Y, X) of every voxel in one block: for tests and small volumes."""
    device = torch.device(device)
    model.eval()
    padded = pad_volume(torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(device), model.arch.halo)
    z, y, x = volume.shape
    with torch.inference_mode():
        logits = block_logits(model, padded, (0, z, 0, y, 0, x))
    return logits.permute(1, 0, 2, 3).float().cpu().numpy()


def extract_patches(padded: torch.Tensor, centres: torch.Tensor, halo: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's three orthogonal (2*halo+1)^2 patches around each centre (n, 3) of (z, y, x).

    Orientation matches the dense path: axial rows y / cols x, coronal rows z / cols x,
    sagittal rows z / cols y. ``padded`` is the volume zero-padded by ``halo``.
    """
    size = 2 * halo + 1
    offsets = torch.arange(size, device=padded.device)
    z, y, x = (centres[:, i, None, None] for i in range(3))
    rows, cols = offsets[None, :, None], offsets[None, None, :]
    axial = padded[z + halo, y + rows, x + cols]
    coronal = padded[z + rows, y + halo, x + cols]
    sagittal = padded[z + rows, y + cols, x + halo]
    return axial[:, None], coronal[:, None], sagittal[:, None]


def patch_logits(model: TriplanarCNN, volume: np.ndarray, centres: np.ndarray, batch: int = 256,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """Per-voxel patch formulation: logits (n, C) of the voxels at ``centres`` (n, 3) of (z, y, x)."""
    device = torch.device(device)
    model.eval()
    padded = pad_volume(torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(device), model.arch.halo)
    centres_t = torch.as_tensor(np.asarray(centres), dtype=torch.long, device=device)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(centres_t), batch):
            patches = extract_patches(padded, centres_t[start:start + batch], model.arch.halo)
            outputs.append(model(*patches)[:, :, 0, 0].float().cpu())
    return torch.cat(outputs).numpy()


def conv_stack_flops(arch: Architecture, planes: int, height: int, width: int) -> int:
    """Exact multiply-add FLOPs (2 per MAC) of the conv stack on ``planes`` planes of height x width."""
    flops, channels = 0, 1
    for layer in range(1, arch.n_layers + 1):
        out_h, out_w = height - 2 * layer, width - 2 * layer
        flops += 2 * channels * arch.n_filters * 9 * planes * max(0, out_h) * max(0, out_w)
        channels = arch.n_filters
    return flops
