"""smallcnn: conv-pool-conv-pool-fc, the shape of Madry et al.'s (2018) MNIST model, slimmed for CPUs.

Madry's model has 32/64 5x5 filters and a 1024-unit layer; this one has 16/32 3x3 filters and 128 units, so
it trains in CPU minutes (what it reaches: README, "Train"). Pick resnet18 or wrn-28-10 when capacity matters
more than minutes.
"""

from __future__ import annotations

from torch import nn

from robustcnn.models.base import MODELS, flat_features, require_size


@MODELS.register("smallcnn")
def smallcnn(in_channels: int, height: int, width: int, num_classes: int) -> nn.Module:
    require_size("smallcnn", height, width, 4)  # two 2x2 poolings
    features = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 16, H/2, W/2)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, H/4, W/4)
        nn.Flatten(),
    )  # fmt: skip
    hidden = flat_features(features, in_channels, height, width)
    return nn.Sequential(features, nn.Linear(hidden, 128), nn.ReLU(), nn.Linear(128, num_classes))
