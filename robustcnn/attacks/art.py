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


class IterateRecorder:
    """Keeps every point an attack evaluates that lies in an original's eps ball and is misclassified there.

    AutoAttack counts an example as broken when *any* iterate inside the ball is misclassified; ART's PGD
    and APGD return only their last iterate (measured on a PGD-trained digits model, 100 APGD-CE steps: 1-2%
    of the examples had a misclassified iterate that the returned one was not). ART runs the model on every
    iterate anyway, for its gradient and loss, so a forward hook sees each one at no extra forward pass.
    Rows are matched to originals by geometry, not by position, since APGD attacks changing subsets: a point
    in the ball of x_i and classified as anything but y_i is an adversarial example of x_i.
    """

    PROBES = 32  # pixels compared first: a point outside the ball almost always shows it on a few pixels

    def __init__(self, model: nn.Module, x: np.ndarray, y: np.ndarray, eps: float, norm: float):
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.model, self.eps, self.norm = model, float(eps), norm
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(device).flatten(1)  # (n, d) in [0, 1]
        self.y = torch.from_numpy(np.asarray(y)).to(device)  # (n,) true labels
        self.found: dict[int, torch.Tensor] = {}  # original index -> a misclassified point in its ball
        generator = torch.Generator().manual_seed(0)  # fixed: the global RNG belongs to the attack
        self.probes = torch.randperm(self.x.shape[1], generator=generator)[: self.PROBES].to(device)

    def __enter__(self) -> IterateRecorder:
        self.handle = self.model.register_forward_hook(self._seen)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def _seen(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        points = inputs[0].detach().flatten(1)  # (m, d)
        if not isinstance(output, torch.Tensor) or points.shape[1] != self.x.shape[1]:
            return
        with torch.no_grad():
            wrong = output.detach().argmax(1)[:, None] != self.y[None, :]  # (m, n): misclassified for original j
            rows, originals = torch.nonzero(wrong & self._maybe_in_ball(points), as_tuple=True)
            for row, original in zip(rows.tolist(), originals.tolist(), strict=True):
                if original not in self.found and self._in_ball(points[row], original):
                    self.found[original] = points[row].clone()

    def _maybe_in_ball(self, points: torch.Tensor) -> torch.Tensor:
        """(m, n): could point i be in the ball of original j? From a few pixels (a lower bound on the norm)."""
        gap = (points[:, None, self.probes] - self.x[None, :, self.probes]).abs()  # (m, n, probes)
        bound = gap.amax(2) if self.norm == math.inf else gap.square().sum(2).sqrt()
        return bound <= self.eps + self.TOLERANCE

    TOLERANCE = 1e-6  # float32 rounding of ART's projection (x + clipped delta)

    def _in_ball(self, point: torch.Tensor, original: int) -> bool:
        delta = point - self.x[original]
        size = delta.abs().max() if self.norm == math.inf else delta.norm()
        return bool(size <= self.eps + self.TOLERANCE and point.min() >= 0 and point.max() <= 1)

    def apply(self, x_adv: np.ndarray) -> np.ndarray:
        """x_adv with every recorded adversarial example in place of the attack's last iterate."""
        x_adv = x_adv.copy()
        for original, point in self.found.items():
            x_adv[original] = point.reshape(x_adv.shape[1:]).cpu().numpy()
        return x_adv
