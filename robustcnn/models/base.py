"""The model registry and the wrapper that puts normalisation inside every model.

Every model takes (N, C, H, W) images in [0, 1] and returns logits. Normalising inside the model means
attacks and their eps work in pixel units, whatever the dataset statistics are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from robustcnn.errors import UsageError
from robustcnn.registry import Registry

# builder(in_channels, height, width, num_classes) -> nn.Module returning logits for normalised input
Builder = Callable[[int, int, int, int], nn.Module]
MODELS: Registry[Builder] = Registry("architecture")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; saved beside its weights."""

    arch: str  # registry name, e.g. "smallcnn"
    in_channels: int  # C of the input images
    height: int  # H in pixels
    width: int  # W in pixels
    num_classes: int  # number of logits
    mean: tuple[float, ...]  # per-channel normalisation, [0, 1] units
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

    @classmethod
    def for_dataset(cls, arch: str, info) -> ModelConfig:
        channels, height, width = info.shape
        return cls(arch, channels, height, width, info.num_classes, tuple(info.mean), tuple(info.std))


class Normalized(nn.Module):
    """(x in [0, 1] - mean) / std, then the network. Optionally runs the network under autocast (AMP)."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.amp_dtype: torch.dtype | None = None  # set by enable_amp; attacks inherit it for free

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.amp_dtype is None:
            return self.net(x)
        with torch.autocast(device_type=x.device.type, dtype=self.amp_dtype):
            return self.net(x).float()  # logits back in float32 so losses and attacks stay exact


def create_model(config: ModelConfig) -> Normalized:
    builder = MODELS.get(config.arch)
    if len(config.mean) != config.in_channels or len(config.std) != config.in_channels:
        raise UsageError(f"mean/std have {len(config.mean)} values but the images have {config.in_channels} channels")
    net = builder(config.in_channels, config.height, config.width, config.num_classes)
    return Normalized(net, config.mean, config.std)


def require_size(arch: str, height: int, width: int, minimum: int) -> None:
    if min(height, width) < minimum:
        raise UsageError(f"architecture {arch!r} needs images of at least {minimum}x{minimum}, got {width}x{height}")


def flat_features(features: nn.Module, channels: int, height: int, width: int) -> int:
    """Size of `features`' output for one image, found by running it (works for any input size)."""
    with torch.no_grad():
        return features(torch.zeros(1, channels, height, width)).numel()
