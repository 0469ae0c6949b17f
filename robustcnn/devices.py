"""Device choice: cuda > mps > cpu unless the user names one."""

from __future__ import annotations

import torch

from robustcnn.errors import UsageError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(spec: str = "auto") -> torch.device:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r}; choose one of: {DEVICE_CHOICES}") from None
    if device.type not in {"cpu", "cuda", "mps"}:
        raise UsageError(f"unsupported device {spec!r}; choose one of: {DEVICE_CHOICES}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {spec!r} was asked for but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device {spec!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {spec!r} was asked for but MPS is not available here; use --device cpu")
    return device


def fast_layout(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Channels-last conv weights: the layout oneDNN (CPU) and cuDNN (GPU) run fastest; results are the same math.

    Training steps and attack steps of the conv models run faster so (README, "Train": the measured factor).
    MPS is left as it is (its channels-last support varies).
    """
    if device.type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)
    return model
