"""The one place that wraps a model for ART: pixel range, labels, device and batch size are set here."""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


def art_classifier(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    num_classes: int,
    device: torch.device,
    loss: nn.Module | None = None,
):
    """An ART `PyTorchClassifier` over `model` (the same module: training updates are seen at once).

    clip_values=(0, 1) because every model takes pixels in [0, 1] and normalises inside.
    """
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=model,
        loss=loss if loss is not None else nn.CrossEntropyLoss(),
        input_shape=tuple(input_shape),
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        preprocessing=None,  # ART's default (0, 1) standardisation is the identity, paid for at every step
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
    # ART only knows "cpu" and "gpu" (the current CUDA device); this lets it run on cuda:N and mps too.
    classifier._device = device
    model.to(device)
    return classifier


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).numpy()


def from_numpy(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Weights need no gradient while an attack runs: ART's loss_gradient calls backward(), which would
    otherwise also compute every weight's gradient - about 40% of an attack step on a small CNN."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)


ART_PGD_MODULE = "art.attacks.evasion.projected_gradient_descent.projected_gradient_descent_pytorch"


@contextlib.contextmanager
def lazy_success_rate() -> Iterator[None]:
    """Skips the success rate ART's PGD computes for a log line nobody sees; the attack itself is unchanged.

    `ProjectedGradientDescentPyTorch.generate` ends with `logger.info("Success rate ...", compute_success(...))`:
    the argument is evaluated even when INFO is off, costing two extra forward passes over every input
    (measured on 2 CPU cores: half of a one-step FGSM-RS attack call, 6% of a PGD-10 call). While
    the block runs, and only if ART's logger would drop the line, `compute_success` there returns nan.
    It feeds nothing but that log line (restarts use `compute_success_array`, which is left alone).
    """
    module = importlib.import_module(ART_PGD_MODULE)
    if module.logger.isEnabledFor(logging.INFO):
        yield
        return
    original = module.compute_success
    module.compute_success = lambda *args, **kwargs: math.nan
    try:
        yield
    finally:
        module.compute_success = original
