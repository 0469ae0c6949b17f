"""wrn-28-10: the pre-activation WideResNet of Zagoruyko & Komodakis (2016), the RobustBench workhorse."""

from __future__ import annotations

import torch
from torch import nn

from robustcnn.models.base import MODELS, require_size


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + residual


class WideResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, depth: int, widen: int):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        per_stage = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for stage, planes in enumerate(widths[1:]):
            for i in range(per_stage):
                blocks.append(WideBlock(in_planes, planes, stride=2 if stage > 0 and i == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)  # (N, 64*widen, H/4, W/4)
        self.head = nn.Sequential(
            nn.BatchNorm2d(in_planes),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(in_planes, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


@MODELS.register("wrn-28-10")
def wrn_28_10(in_channels: int, height: int, width: int, num_classes: int) -> nn.Module:
    require_size("wrn-28-10", height, width, 4)
    return WideResNet(in_channels, num_classes, depth=28, widen=10)
