"""Plain MobileNetV1 for CIFAR with a width multiplier: the dense baseline (docs/faithfulness.md).

Stem 3x3 conv (stride 1) + BatchNorm + ReLU, thirteen depthwise-separable layers, global average
pool, linear classifier. Every channel count is ``int(width * c)``. Module names (``conv1``,
``bn1``, ``layers.N.conv1/bn1/conv2/bn2``, ``linear``) are the original's, so its checkpoints
load (``apps/medium_scale/mobilenetv1_x25.yml``: 215 642 parameters).
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from models.contract import WiredNetwork

__all__ = ["LAYER_CFG", "DepthwiseSeparable", "MobileNetV1CIFAR"]

# (output channels at width 1, stride) of the thirteen depthwise-separable layers
LAYER_CFG: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv, BatchNorm, ReLU, then 1x1 conv, BatchNorm, ReLU."""

    def __init__(self, *, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes,
            in_planes,
            kernel_size=3,
            stride=stride,
            padding=1,
            groups=in_planes,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Tensor], prune_rate: Optional[float] = None
    ) -> Optional[MobileNetV1CIFAR]:
        """Shaped for an original checkpoint: the width from the stem's channels."""
        if "layers.0.conv2.weight" not in state or "bn1.weight" not in state:
            return None
        return cls(
            width_mult=state["conv1.weight"].shape[0] / 32,
            output_size=state["linear.weight"].shape[0],
            in_channels=state["conv1.weight"].shape[1],
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)), inplace=True)


class MobileNetV1CIFAR(WiredNetwork):
    """MobileNetV1 for 32 x 32 inputs; ``width_mult`` scales every layer's channels. It has no
    graph layer: the contract's generic count is its dense count, and it has nothing to shrink."""

    config_keys = frozenset({"width_mult"})

    def __init__(
        self, *, width_mult: float = 1.0, output_size: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult = width_mult
        self.in_channels = in_channels
        stem = int(32 * width_mult)
        self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        layers, planes = [], stem
        for out, stride in LAYER_CFG:
            out = int(width_mult * out)
            layers.append(DepthwiseSeparable(in_planes=planes, out_planes=out, stride=stride))
            planes = out
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(planes, output_size)

    @classmethod
    def from_config(cls, cfg) -> MobileNetV1CIFAR:
        """Build from the experiment config (the only place its keys are read)."""
        return cls(
            width_mult=cfg.width_mult, output_size=cfg.output_size, in_channels=cfg.in_channels
        )

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Tensor], prune_rate: Optional[float] = None
    ) -> Optional[MobileNetV1CIFAR]:
        """Shaped for an original checkpoint: the width from the stem's channels."""
        if "layers.0.conv2.weight" not in state or "bn1.weight" not in state:
            return None
        return cls(
            width_mult=state["conv1.weight"].shape[0] / 32,
            output_size=state["linear.weight"].shape[0],
            in_channels=state["conv1.weight"].shape[1],
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layers(out)
        return self.linear(out.mean(dim=(2, 3)))  # global average pool -> [B, C]
