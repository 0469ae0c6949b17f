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

    Which original a row belongs to: ART runs the model on the whole batch in order (PGD), or on the subset
    of examples still correct at its last look (APGD restarts, APGD-T targets), in order. So the rows are
    first tried against those index maps (the whole batch, and the last few sets of still-correct examples),
    checked, not assumed: every row must lie in its original's ball. Rows that fit no map are matched by
    geometry: a point in the ball of x_j and classified as anything but y_j is an adversarial example of x_j.
    """

    PROBES = 32  # pixels compared first, where the originals differ most: another image's ball shows there
    TOLERANCE = 1e-6  # float32 rounding of ART's projection (x + clipped delta)
    MAPS = 4  # index maps remembered besides the whole batch

    def __init__(self, model: nn.Module, x: np.ndarray, y: np.ndarray, eps: float, norm: float):
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.model, self.eps, self.norm = model, float(eps), norm
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(device).flatten(1)  # (n, d) in [0, 1]
        self.y = torch.from_numpy(np.asarray(y)).to(device)  # (n,) true labels
        self.found: dict[int, torch.Tensor] = {}  # original index -> a misclassified point in its ball
        self.open = torch.ones(len(self.x), dtype=torch.bool, device=device)  # originals with nothing found yet
        self.maps = [torch.arange(len(self.x), device=device)]  # row -> original index, tried newest first
        self.probes = self.x.std(0).argsort(descending=True)[: self.PROBES] if len(self.x) > 1 else None

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
            predicted = output.detach().argmax(1)
            originals = self._mapped(points)
            if originals is None:
                rows, originals = self._by_geometry(points, predicted)
            else:
                correct = predicted == self.y[originals]
                self._remember(originals[correct])  # what ART will attack next, if it filters
                rows = torch.nonzero(~correct & self.open[originals]).flatten()
                originals = originals[rows]
            for row, original in zip(rows.tolist(), originals.tolist(), strict=True):
                if self.open[original]:
                    self.found[original] = points[row].clone()
                    self.open[original] = False

    def _mapped(self, points: torch.Tensor) -> torch.Tensor | None:
        for index in [*self.maps[1:][::-1], self.maps[0]]:
            if len(index) == len(points) and self._in_ball(points, index).all():
                return index
        return None

    def _remember(self, index: torch.Tensor) -> None:
        if len(index) in (0, len(self.x)) or any(torch.equal(index, known) for known in self.maps):
            return
        self.maps = [self.maps[0], *self.maps[1:][-(self.MAPS - 1) :], index]

    def _by_geometry(self, points: torch.Tensor, predicted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, original) pairs of points in an open original's ball and misclassified for it."""
        candidates = (predicted[:, None] != self.y[None, :]) & self.open[None, :]  # (m, n)
        if self.probes is not None:
            gap = (points[:, None, self.probes] - self.x[None, :, self.probes]).abs()  # (m, n, probes)
            bound = gap.amax(2) if self.norm == math.inf else gap.square().sum(2).sqrt()  # <= the full norm
            candidates &= bound <= self.eps + self.TOLERANCE
        rows, originals = torch.nonzero(candidates, as_tuple=True)
        keep = self._in_ball(points[rows], originals)
        return rows[keep], originals[keep]

    def _in_ball(self, points: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
        """(k,) bool: point i within eps of x[originals[i]] and inside the pixel range."""
        delta = points - self.x[originals]
        size = delta.abs().amax(1) if self.norm == math.inf else delta.norm(dim=1)
        return (size <= self.eps + self.TOLERANCE) & (points.amin(1) >= 0) & (points.amax(1) <= 1)

    def apply(self, x_adv: np.ndarray) -> np.ndarray:
        """x_adv with every recorded adversarial example in place of the attack's last iterate."""
        x_adv = x_adv.copy()
        for original, point in self.found.items():
            x_adv[original] = point.reshape(x_adv.shape[1:]).cpu().numpy()
        return x_adv
