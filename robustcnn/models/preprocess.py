"""The preprocessing contract for models we did not train: attacks always see pixels in [0, 1].

A model trained elsewhere may expect pixels in 0..255, a normalisation by some mean and std, and may
return a tuple or a dict. `Preprocessed` wraps it so that it takes (N, C, H, W) images in [0, 1] and
returns one logits tensor, like every robustcnn model: eps then stays in [0, 1] pixel units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from robustcnn.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, [0, 1] units
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE_CHOICES = "none, dataset, imagenet or MEAN,STD (one number each, or one per channel: M1,M2,M3,S1,S2,S3)"


class InputRange(str, Enum):
    UNIT = "0-1"  # the convention of RobustBench and torchattacks models
    BYTE = "0-255"

    @property
    def scale(self) -> float:
        return 255.0 if self is InputRange.BYTE else 1.0


def parse_input_range(value: object) -> InputRange:
    text = str(value.value if isinstance(value, InputRange) else value).strip().replace(" ", "")
    aliases = {"0-1": InputRange.UNIT, "0..1": InputRange.UNIT, "0-255": InputRange.BYTE, "0..255": InputRange.BYTE}
    if text not in aliases:
        raise ValueError("choose one of: 0-1, 0-255")
    return aliases[text]


def parse_normalize(value: object) -> str:
    """The canonical spelling of a --normalize value; numbers are checked here, channels when the data is known."""
    text = str(value).strip().lower().replace(" ", "")
    if text in ("none", "dataset", "imagenet"):
        return text
    parts = text.split(",")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"choose one of: {NORMALIZE_CHOICES}") from None
    if len(numbers) % 2 or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"choose one of: {NORMALIZE_CHOICES}")
    if any(s <= 0 for s in numbers[len(numbers) // 2 :]):
        raise ValueError("every std must be > 0")
    return ",".join(f"{v:g}" for v in numbers)


@dataclass(frozen=True)
class Preprocessing:
    """What the model does to [0, 1] pixels before its first layer: (x * range - mean) / std."""

    normalize: str  # as given: none | dataset | imagenet | MEAN,STD
    input_range: InputRange
    mean: tuple[float, ...]  # per channel, in the model's input units (0..255 when input_range is 0-255)
    std: tuple[float, ...]

    @property
    def is_identity(self) -> bool:
        return self.input_range is InputRange.UNIT and all(m == 0 for m in self.mean) and all(s == 1 for s in self.std)

    def describe(self) -> str:
        """Short text for results.csv: 'none', 'imagenet', 'dataset range=0-255', ..."""
        text = self.normalize if self.normalize in ("none", "dataset", "imagenet") else f"mean,std={self.normalize}"
        return text if self.input_range is InputRange.UNIT else f"{text} range={self.input_range.value}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "normalize": self.normalize,
            "input_range": self.input_range.value,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def resolve_preprocessing(
    normalize: str,
    input_range: InputRange,
    channels: int,
    dataset_mean: tuple[float, ...],
    dataset_std: tuple[float, ...],
) -> Preprocessing:
    """Mean and std in the model's units for `channels` input channels; presets scale with the input range."""
    scale = input_range.scale
    if normalize == "none":
        mean, std = (0.0,) * channels, (1.0,) * channels
    elif normalize in ("dataset", "imagenet"):
        mean, std = (dataset_mean, dataset_std) if normalize == "dataset" else (IMAGENET_MEAN, IMAGENET_STD)
        if len(mean) != channels:
            raise UsageError(f"--normalize {normalize} has {len(mean)} channel(s) but the images have {channels}")
        mean, std = tuple(m * scale for m in mean), tuple(s * scale for s in std)
    else:
        numbers = [float(v) for v in normalize.split(",")]
        half = len(numbers) // 2
        if half not in (1, channels):
            raise UsageError(
                f"--normalize {normalize} gives {half} mean(s) and std(s); the images have {channels} channel(s): "
                "give one MEAN,STD or one per channel"
            )
        mean, std = tuple(numbers[:half]) * (channels // half), tuple(numbers[half:]) * (channels // half)
    return Preprocessing(normalize, input_range, mean, std)


@dataclass(frozen=True)
class OutputSelect:
    """Which part of a tuple or dict output holds the logits (--output-index / --output-key)."""

    index: int | None = None
    key: str | None = None

    def __call__(self, out: Any) -> torch.Tensor:
        if self.index is not None:
            return out[self.index]
        if self.key is not None:
            return out[self.key] if isinstance(out, Mapping) else getattr(out, self.key)
        return out

    def check(self, out: Any, name: str) -> None:
        """A one-line error when the model's raw output and the selection do not fit together."""
        if isinstance(out, torch.Tensor):
            if self.index is not None or self.key is not None:
                flag = "--output-index" if self.index is not None else "--output-key"
                raise UsageError(f"model {name!r} returns one tensor; {flag} applies only to tuple or dict outputs")
            return
        if isinstance(out, Mapping) or (self.key is not None and hasattr(out, self.key)):
            keys = list(out.keys()) if isinstance(out, Mapping) else []
            if self.key is None or (isinstance(out, Mapping) and self.key not in out):
                got = f"--output-key {self.key!r} is not one of them" if self.key else "pass --output-key KEY"
                raise UsageError(f"model {name!r} returns a dict with keys {', '.join(map(str, keys))}; {got}")
        elif isinstance(out, (tuple, list)):
            if self.index is None or not -len(out) <= self.index < len(out):
                got = (
                    f"--output-index {self.index} is out of range" if self.index is not None else "pass --output-index"
                )
                raise UsageError(
                    f"model {name!r} returns a {type(out).__name__} of {len(out)} outputs; {got} (0..{len(out) - 1})"
                )
        else:
            raise UsageError(f"model {name!r} returns a {type(out).__name__}, not a tensor of logits")
        if not isinstance(self(out), torch.Tensor):
            raise UsageError(f"model {name!r}: the selected output is a {type(self(out)).__name__}, not a tensor")

    def describe(self) -> dict[str, Any]:
        return {"output_index": self.index, "output_key": self.key}


class Preprocessed(nn.Module):
    """(x in [0, 1] * range - mean) / std, then the network, then the logits out of its output.

    Written as `(x - mean') / std'` with mean' = mean / range and std' = std / range: the same two
    operations as `Normalized`, so a model normalised here and one normalising inside give the same bits.
    """

    def __init__(self, net: nn.Module, preprocessing: Preprocessing, output: OutputSelect | None = None):
        super().__init__()
        self.net = net
        self.preprocessing = preprocessing
        self.output = output or OutputSelect()
        scale = preprocessing.input_range.scale
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, -1, 1, 1) / scale
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, -1, 1, 1) / scale
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.identity = preprocessing.is_identity  # no work at all: the bare model's speed

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """x in [0, 1] -> what the network takes."""
        return x if self.identity else (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.net(self.prepare(x)))
