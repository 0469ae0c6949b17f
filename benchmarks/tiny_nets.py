"""Random seeded models for the scale section and `make gpu-check`, given to sweeps as a user's model file.

`python -m robustcnn.sweep benchmarks/tiny_nets.py:smallcnn@model-arg=seed=3@name=m3 --dataset npz:PATH`: the
same seed gives the same weights in every process (so resumed cells are found again), and the weights come
from a private generator, so building a model leaves the sweep's own random state as it was. Accuracy is
chance: these figures are about cost, not robustness. Plain PyTorch only: the sweep imports this file alone.
"""

from __future__ import annotations

import torch
from torch import nn


def smallcnn(seed: int = 0, classes: int = 10, channels: int = 3, side: int = 32) -> nn.Module:
    """robustcnn's smallcnn layout (two conv blocks, two linear layers) on (N, channels, side, side) in [0, 1]."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 16, side/2, side/2)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),  # (N, 32 * (side/4)^2)
            nn.Linear(32 * (side // 4) ** 2, 128), nn.ReLU(), nn.Linear(128, classes),  # (N, classes) logits
        )  # fmt: skip


def random_net(arch: str, seed: int = 0, classes: int = 10, side: int = 32) -> nn.Module:
    """A network with random weights drawn from `seed`: "torchvision:NAME" (e.g. resnet50, ImageNet's stem), or a
    robustcnn architecture (e.g. resnet18, the CIFAR ResNet-18 with a 3x3 stem and no max-pool, or wrn-28-10)
    for 3 x side x side images."""
    import torchvision

    from robustcnn.models import MODELS

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch.startswith("torchvision:"):
            return torchvision.models.get_model(arch.partition(":")[2], weights=None, num_classes=classes)
        return MODELS.get(arch)(3, side, side, classes)
