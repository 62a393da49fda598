"""The triplanar CNN of Moeskops et al. 2017, section 3.1.

For each voxel, three orthogonal 51x51 patches (axial, coronal, sagittal) go through ONE shared
stack of 25 unpadded 3x3 convolutions with 32 kernels each (51 - 2*25 = 1, so each patch becomes a
32-feature vector), no subsampling. The 3 x 32 = 96 features go through two fully connected
layers of 192 nodes and a softmax layer, all implemented as 1x1 convolutions so that whole slices
can be processed at once (see dense.py). Batch normalisation on every layer but the output,
exponential linear units everywhere, dropout on the fully connected layers.

The convolutions have no bias: the batch normalisation that follows each one has its own shift.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
    must then map onto the same B x H x W target voxels; dense.py arranges that).
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
