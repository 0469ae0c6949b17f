"""Checks on the model itself, before any attack (in the spirit of AutoAttack's checks.py).

Each returns a `Check` (robustcnn.results, the type the report's checks return too), explained under its name in
docs/checks.md. They catch set-ups where gradient attacks fail for a bad reason and the accuracy under attack
would look better than it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustcnn.errors import UsageError, last_line
from robustcnn.results import Check, Status


def check_logits(model: nn.Module, x: torch.Tensor) -> Check:
    """Probabilities (a softmax at the end) saturate and starve cross-entropy attacks of gradient."""
    with torch.no_grad():
        out = model(x)
    probabilities = bool(
        (out >= 0).all() and (out <= 1).all() and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3)
    )
    if probabilities:
        message = "outputs sum to 1 like probabilities: attacks need logits; remove the final softmax"
        return Check.of("logits", Status.WARN, message)
    return Check.of("logits", Status.PASS, "outputs are logits, not probabilities")


def check_deterministic(model: nn.Module, x: torch.Tensor) -> Check:
    """A model whose output changes between identical calls (dropout on, randomised defence) needs EOT attacks."""
    with torch.no_grad():
        first, second = model(x), model(x)
    if not torch.allclose(first, second, atol=1e-5, rtol=1e-4):
        gap = (first - second).abs().max().item()
        message = f"outputs differ between identical calls (max gap {gap:.3g}): dropout left on or a randomised model"
        return Check.of("deterministic", Status.FAIL, message)
    return Check.of("deterministic", Status.PASS, "identical inputs give identical outputs")


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Check:
    """Zero input gradients make every gradient attack fail while the model is not robust at all."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, x)
    zero = (gradient.flatten(1).abs().amax(1) == 0).float().mean().item()
    if zero > 0.1:
        message = f"{zero:.0%} of examples have an all-zero input gradient: gradient attacks cannot work (masking)"
        return Check.of("gradients", Status.FAIL, message)
    return Check.of("gradients", Status.PASS, f"input gradients are non-zero for {1 - zero:.0%} of examples")


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[Check]:
    """x (n, C, H, W) in [0, 1] and y (n,) on the model's device; the model is left in eval mode."""
    model.eval()
    return [check_logits(model, x), check_deterministic(model, x), check_gradients(model, x, y)]


def require_fit(model: nn.Module, x: torch.Tensor, info, name: str) -> None:
    """Before any attack: the model runs on the dataset's images and returns finite logits, one per class.

    x (n, C, H, W) in [0, 1] on the model's device. Raises UsageError naming what does not fit.
    """
    from robustcnn.models.preprocess import Preprocessed

    channels, height, width = info.shape
    try:
        with torch.no_grad():
            if isinstance(model, Preprocessed):  # tuple / dict outputs get a clear error before selection
                raw = model.net(model.prepare(x))
                model.output.check(raw, name)
                out = model.output(raw)
            else:
                out = model(x)
    except UsageError:
        raise
    except Exception as error:  # whatever the model's own code raises on input it was not made for
        raise UsageError(
            f"model {name!r} fails on {channels}x{height}x{width} images of dataset {info.name!r} "
            f"({type(error).__name__}: {last_line(error)}); does it take this image size and channels?"
        ) from None
    if out.ndim != 2 or out.shape[0] != len(x):
        raise UsageError(f"model {name!r} returns shape {tuple(out.shape)} for {len(x)} images; expected (n, classes)")
    if out.shape[1] != info.num_classes:
        raise UsageError(
            f"model {name!r} returns {out.shape[1]} outputs per image but dataset {info.name!r} has "
            f"{info.num_classes} classes; build it for {info.num_classes} classes (e.g. --model-arg num_classes=...)"
        )
    if not torch.isfinite(out).all():
        raise UsageError(f"model {name!r} returns NaN or infinite logits on test images of {info.name!r}")
