"""Checks on the model itself, before any attack (in the spirit of AutoAttack's checks.py).

Each returns {name, status (pass | warn | fail), message, link}. They catch set-ups where gradient
attacks fail for a bad reason and the accuracy under attack would look better than it is.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DOCS = "docs/checks.md"


def _result(name: str, status: str, message: str, anchor: str) -> dict[str, Any]:
    return {"name": name, "status": status, "message": message, "link": f"{DOCS}#{anchor}"}


def check_logits(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Probabilities (a softmax at the end) saturate and starve cross-entropy attacks of gradient."""
    with torch.no_grad():
        out = model(x)
    probabilities = bool(
        (out >= 0).all() and (out <= 1).all() and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3)
    )
    if probabilities:
        return _result(
            "logits",
            "warn",
            "outputs sum to 1 like probabilities: attacks need logits; remove the final softmax",
            "logits",
        )
    return _result("logits", "pass", "outputs are logits, not probabilities", "logits")


def check_deterministic(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """A model whose output changes between identical calls (dropout on, randomised defence) needs EOT attacks."""
    with torch.no_grad():
        first, second = model(x), model(x)
    if not torch.allclose(first, second, atol=1e-5, rtol=1e-4):
        gap = (first - second).abs().max().item()
        message = f"outputs differ between identical calls (max gap {gap:.3g}): dropout left on or a randomised model"
        return _result("deterministic", "fail", message, "deterministic")
    return _result("deterministic", "pass", "identical inputs give identical outputs", "deterministic")


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Zero input gradients make every gradient attack fail while the model is not robust at all."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, x)
    zero = (gradient.flatten(1).abs().amax(1) == 0).float().mean().item()
    if zero > 0.1:
        message = f"{zero:.0%} of examples have an all-zero input gradient: gradient attacks cannot work (masking)"
        return _result("gradients", "fail", message, "gradients")
    return _result("gradients", "pass", f"input gradients are non-zero for {1 - zero:.0%} of examples", "gradients")


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    """x (n, C, H, W) in [0, 1] and y (n,) on the model's device; the model is left in eval mode."""
    model.eval()
    return [check_logits(model, x), check_deterministic(model, x), check_gradients(model, x, y)]
