"""ibpcnn: Gowal et al.'s (2018) small network for certified training: two stride-2 / plain 4x4 convolutions
and one hidden layer, no pooling. Few, large-stride layers keep interval bounds from loosening layer by layer,
which is what certified training (`--adv-method ibp`) needs; `crown` bounds it cheaply (small layers)."""

from __future__ import annotations

from torch import nn

from robustcnn.models.base import MODELS, flat_features, require_size


@MODELS.register("ibpcnn")
def ibpcnn(in_channels: int, height: int, width: int, num_classes: int) -> nn.Module:
    require_size("ibpcnn", height, width, 8)
    pad = 0 if min(height, width) >= 10 else 1  # the paper's unpadded 4x4 convolutions leave nothing of 8x8 digits
    features = nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=pad), nn.ReLU(),  # (N, 16, 13, 13) on 28x28
        nn.Conv2d(16, 32, 4, stride=1, padding=pad), nn.ReLU(),  # (N, 32, 10, 10)
        nn.Flatten(),
    )  # fmt: skip
    hidden = flat_features(features, in_channels, height, width)
    return nn.Sequential(features, nn.Linear(hidden, 100), nn.ReLU(), nn.Linear(100, num_classes))
