"""Bounds on a model's outputs over a whole eps ball, layer by layer: what certification is made of.

Two methods:

- `ibp` (interval bound propagation, Gowal et al. 2018): every activation in a box [lower, upper].
  An affine layer maps a box exactly to the smallest box around its image; ReLU and max pooling are
  monotone. Cheap (about two forward passes) and tight for models trained with it, loose otherwise.
- `crown`: linear bounds in the input, L(x) <= activation <= U(x), carried forward from the input with
  CROWN's relaxations (Zhang et al. 2018; the forward mode of Xu et al. 2020's LiRPA): affine layers are
  exact, an unstable ReLU is bounded above by its chord and below by 0 or the identity, max pooling by
  the input with the largest lower bound. Before every ReLU and pooling the box is the tighter of the
  interval and the linear bounds evaluated over the ball, so `crown` is never looser than `ibp`; layers of up
  to BACKWARD_NEURONS neurons are bounded once more by back-substitution (CROWN's backward mode,
  robustcnn.certify.backward). The output is then bounded by back-substitution with the lower ReLU slopes
  optimised per example (alpha-CROWN, Xu et al. 2021), and the tightest of all is kept.
  Its cost grows with the input size times the layer sizes: it suits small networks on small images.

The last linear layer is merged with the certification question (logit of the true class minus each other
logit) before bounding, as both papers do: a margin whose lower bound is positive over the whole ball
certifies that no input in it changes the prediction.

Each layer type is one entry of `LAYERS` (robustcnn.certify.layers); a model with any other layer is refused before
any work.
"""

from __future__ import annotations

import torch
from torch import nn

from robustcnn.certify import backward
from robustcnn.certify.layers import LAYERS, Affine, Box, Linear, Region, layers, margin_spec
from robustcnn.errors import UsageError
from robustcnn.threat import Norm

METHODS = ("ibp", "crown")
BACKWARD_NEURONS = 1024  # crown bounds layers up to this size by back-substitution too (cost ~ size x input size)
ALPHA_STEPS = 20  # crown's Adam steps on its ReLU slopes for the final bound (what they lift: README, "crown")


def bounds(
    model: nn.Module, x: torch.Tensor, eps: float, norm: Norm, method: str, y: torch.Tensor | None = None,
    num_classes: int | None = None, dtype: torch.dtype = torch.float64, differentiable: bool = False,
    alpha_steps: int = ALPHA_STEPS,
) -> Box:  # fmt: skip
    """Bounds on the logits (y None) or on the margins logit[y] - logit[k], k != y (n, K - 1), over the ball
    of radius eps around each image of x (n, C, H, W) in [0, 1]. `differentiable`: gradients flow to the
    weights (certified training); float64 by default, so that rounding cannot make a bound unsound.
    `alpha_steps`: crown's optimisation of its ReLU slopes for the final lower bound (0: CROWN's own slopes)."""
    if method not in METHODS:
        raise UsageError(f"unknown bound method {method!r}; choose one of: {', '.join(METHODS)}")
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        steps = _steps(layers(model), y, num_classes, dtype)
        region = Region.around(x.to(dtype), eps, norm)
        if method == "ibp":
            return _intervals(steps, region, tuple(x.shape[1:]))[0]
        return _crown(steps, region, tuple(x.shape[1:]), alpha_steps)


def _intervals(steps: list, region: Region, shape: tuple[int, ...]) -> tuple[Box, list[Box], list[tuple[int, ...]]]:
    """IBP: the output box, the box of every step's input and every step's input shape (the output's last)."""
    box = Box(region.low.view(-1, *shape), region.high.view(-1, *shape))
    inputs, shapes = [], [shape]
    for step in steps:
        inputs.append(box)
        box = step.box(box)
        shapes.append(tuple(box.lower.shape[1:]))
    return box, inputs, shapes


def _crown(steps: list, region: Region, shape: tuple[int, ...], alpha_steps: int) -> Box:
    """Every ReLU and pooling input bounded as tightly as affordable: the interval box, intersected with the
    forward linear bounds, and for layers of up to BACKWARD_NEURONS neurons with back-substitution; then the
    output bounded by back-substitution with optimised slopes, intersected with the forward bounds."""
    box = Box(region.low.view(-1, *shape), region.high.view(-1, *shape))
    linear = Linear.identity(region, shape)
    inputs, shapes = [], [shape]
    for i, step in enumerate(steps):
        if not isinstance(step, Affine) and not (linear.exact and region.norm is Norm.LINF):
            box = box.intersect(linear.box(region))  # the tighter pre-activation bounds for the relaxation
            if not linear.exact and box.lower[0].numel() <= BACKWARD_NEURONS:  # exact: nothing left to tighten
                box = box.intersect(backward.box_of(steps[:i], inputs, shapes, region))
        linear = step.linear(linear, box)
        inputs.append(box)
        box = step.box(box)
        shapes.append(tuple(box.lower.shape[1:]))
    box = box.intersect(linear.box(region))
    size = box.lower[0].numel()
    rows = torch.eye(size, dtype=box.lower.dtype, device=box.lower.device).reshape(1, size, *shapes[-1])
    rows = rows.expand(len(box.lower), *rows.shape[1:])  # per example: the margins' last layer differs per label
    lower = backward.optimised_lower(steps, inputs, shapes, rows, region, alpha_steps).view_as(box.lower)
    upper = -backward.lower_bound(steps, inputs, shapes, -rows, region).view_as(box.upper)
    return box.intersect(Box(lower, upper))


def _steps(chain: list[nn.Module], y: torch.Tensor | None, num_classes: int | None, dtype: torch.dtype) -> list:
    """The bounding step of every layer; with labels, the last linear layer merged with the margins."""
    steps = [LAYERS[type(layer)](layer) for layer in chain]
    if y is None:
        return steps
    last = chain[-1] if isinstance(chain[-1], nn.Linear) else None
    spec = margin_spec(last, y, last.out_features if last is not None else num_classes, dtype)
    return [*steps[:-1], spec] if last is not None else [*steps, spec]


def certified(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: Norm, method: str, num_classes: int,
    alpha_steps: int = ALPHA_STEPS,
) -> torch.Tensor:  # fmt: skip
    """(n,) bool: the prediction is y at every input of the eps ball, proven by the bounds."""
    margins = bounds(model, x, eps, norm, method, y=y, num_classes=num_classes, alpha_steps=alpha_steps)
    return (margins.lower > 0).all(1)
