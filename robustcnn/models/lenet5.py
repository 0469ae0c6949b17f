"""lenet5: LeCun et al. (1998) with ReLU and max-pooling; the first conv pads so 28x28 and 8x8 inputs fit."""

from __future__ import annotations

from torch import nn

from robustcnn.models.base import MODELS, flat_features, require_size


@MODELS.register("lenet5")
def lenet5(in_channels: int, height: int, width: int, num_classes: int) -> nn.Module:
    require_size("lenet5", height, width, 8)
    second_pad = 0 if min(height, width) >= 20 else 2  # classic LeNet shrinks here; tiny inputs cannot
    features = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (N, 6, H/2, W/2)
        nn.Conv2d(6, 16, 5, padding=second_pad), nn.ReLU(), nn.MaxPool2d(2),  # (N, 16, 5, 5) on 28x28
        nn.Flatten(),
    )  # fmt: skip
    hidden = flat_features(features, in_channels, height, width)
    return nn.Sequential(
        features, nn.Linear(hidden, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
    )
