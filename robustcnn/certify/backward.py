"""CROWN's backward mode (Zhang et al. 2018): a bound on rows . f(x) carried from the output back to the input.

Each layer moves the coefficients one layer down: an affine layer exactly (W^T), a ReLU or max pooling through
a linear relaxation over the box the forward pass found for its input. At the input the bound is minimised
over the eps ball in closed form. Going back through the whole network at once is what makes it tighter than
boxes, which lose the correlation between neurons at every layer.

The lower slopes of unstable ReLUs may be any value in [0, 1] and the bound stays sound; `optimised_lower`
picks them per example and margin by gradient ascent on the bound (alpha-CROWN, Xu et al. 2021), which is
what lifts certified accuracy on models trained with interval bounds, where CROWN's fixed choice is often
looser than the intervals themselves.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustcnn.certify.layers import Affine, Box, Region, Relu, crown_slope

ELEMENTS_PER_CHUNK = 1 << 23  # rows x layer size x images held at once: ~64 MB of float64 per tensor
ALPHA_LR = 0.1  # Adam's step on the slopes, which live in [0, 1]


def lower_bound(steps: list, inputs: list[Box], shapes: list[tuple[int, ...]], rows: torch.Tensor, region: Region,
                slopes: dict[int, torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
    """(n, R): a lower bound of rows . f(x) over the region, f the chain of `steps`; rows (1 or n, R, *out).
    inputs[i] is the box of steps[i]'s input, shapes[i] its shape; slopes: per ReLU step index, (n, R, *shape)."""
    n = len(region.center)
    total = torch.zeros(n, rows.shape[1], dtype=rows.dtype, device=rows.device)
    for i in reversed(range(len(steps))):
        step = steps[i]
        if isinstance(step, Affine):
            total = total + step.offset(rows, n)
            rows = step.back(rows, shapes[i])
            continue
        if isinstance(step, Relu):
            rows, offset = step.back(rows, inputs[i], None if slopes is None else slopes.get(i))
        else:
            rows, offset = step.back(rows, inputs[i])
        total = total + offset
    coefficients = rows.expand(n, *rows.shape[1:]).flatten(2).transpose(1, 2)  # (n, d, R)
    return region.extreme(coefficients, total, side=-1)


def box_of(steps: list, inputs: list[Box], shapes: list[tuple[int, ...]], region: Region) -> Box:
    """The box of f's output, every neuron bounded by back-substitution from the input (rows in chunks)."""
    shape, n = shapes[len(steps)], len(region.center)
    size = math.prod(shape)
    chunk = max(1, ELEMENTS_PER_CHUNK // (n * max(math.prod(s) for s in shapes[: len(steps) + 1])))
    lows, highs = [], []
    for start in range(0, size, chunk):
        picks = torch.arange(start, min(start + chunk, size), device=region.center.device)
        rows = F.one_hot(picks, size).to(region.center.dtype).reshape(1, len(picks), *shape)
        lows.append(lower_bound(steps, inputs, shapes, rows, region))
        highs.append(-lower_bound(steps, inputs, shapes, -rows, region))
    return Box(torch.cat(lows, 1).reshape(n, *shape), torch.cat(highs, 1).reshape(n, *shape))


def optimised_lower(steps: list, inputs: list[Box], shapes: list[tuple[int, ...]], rows: torch.Tensor,
                    region: Region, iterations: int) -> torch.Tensor:  # fmt: skip
    """The best lower bound of rows . f(x) over CROWN's slopes and `iterations` Adam steps on them."""
    best = lower_bound(steps, inputs, shapes, rows, region)
    if iterations <= 0:
        return best
    n, count = len(region.center), rows.shape[1]
    slopes = {
        i: crown_slope(inputs[i]).unsqueeze(1).expand(n, count, *shapes[i]).clone()
        for i, step in enumerate(steps)
        if isinstance(step, Relu)
    }
    for slope in slopes.values():
        slope.requires_grad_(True)
    optimizer = torch.optim.Adam(slopes.values(), lr=ALPHA_LR)
    with torch.enable_grad():
        for _ in range(iterations):
            bound = lower_bound(steps, inputs, shapes, rows, region, slopes)
            best = torch.maximum(best, bound.detach())
            optimizer.zero_grad()
            (-bound.sum()).backward()
            optimizer.step()
            with torch.no_grad():
                for slope in slopes.values():
                    slope.clamp_(0.0, 1.0)  # every slope in [0, 1] keeps the bound sound
    with torch.no_grad():
        return torch.maximum(best, lower_bound(steps, inputs, shapes, rows, region, slopes))
